"""Read models: database rows turned into the plain views of billing_core.model."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, literal_column, null, or_, select, union_all
from sqlalchemy.orm import Session, joinedload, selectinload

from billing_core.db import tables as t
from billing_core.errors import NotFound
from billing_core.model import (
    ContactView,
    CreditView,
    GroupRef,
    GroupView,
    InvoiceSummary,
    InvoiceView,
    PaymentView,
    Totals,
)
from billing_core.money import Money
from billing_core.periods import Period, local_date, zone
from billing_core.rating import Line, ProjectShare


def group_ref(group: t.BillingGroup) -> GroupRef:
    return GroupRef(group.key, group.name, group.currency)


def groups_of(
    session: Session, organization_id: int, group_key: str | None
) -> list[t.BillingGroup]:
    """The organization's groups, or the one named (refused with the names that exist)."""
    rows = list(
        session.scalars(
            select(t.BillingGroup)
            .where(t.BillingGroup.organization_id == organization_id)
            .order_by(t.BillingGroup.key)
        )
    )
    if group_key is None:
        return rows
    chosen = [g for g in rows if g.key.casefold() == group_key.casefold()]
    if not chosen:
        names = ", ".join(g.key for g in rows) or "none yet"
        raise NotFound(f"There is no billing group `{group_key}`.", hint=f"Groups: {names}.")
    return chosen


def invoice_view(session: Session, invoice: t.Invoice, tz: ZoneInfo) -> InvoiceView:
    group = session.get_one(t.BillingGroup, invoice.billing_group_id)
    org = session.get_one(t.Organization, invoice.organization_id)
    cur = invoice.currency

    def money(value: object) -> Money:
        return Money(value, cur)  # type: ignore[arg-type]

    lines = tuple(
        Line(
            kind="subscription" if row.kind == "subscription" else "usage",
            metric=row.metric,
            category=row.category,
            quantity=row.quantity,
            billable_quantity=row.billable_quantity,
            amount=money(row.amount),
            projects=tuple(
                ProjectShare(p.project_key, p.quantity, money(p.amount)) for p in row.projects
            ),
            late_period=(
                Period(row.late_period_start, row.late_period_end)
                if row.late_period_start is not None and row.late_period_end is not None
                else None
            ),
        )
        for row in invoice.lines
    )
    discounts = session.scalars(
        select(t.InvoiceDiscount).where(t.InvoiceDiscount.invoice_id == invoice.id)
    ).all()
    applied = session.scalars(
        select(t.CreditApplication).where(t.CreditApplication.invoice_id == invoice.id)
    ).all()
    totals = Totals(
        subtotal=money(invoice.subtotal),
        discounts=tuple((d.redemption_id, money(d.amount)) for d in discounts),
        discount=money(invoice.discount),
        tax=money(invoice.tax),
        total=money(invoice.total),
        credits=tuple((c.credit_id, money(c.amount)) for c in applied),
        credits_applied=money(invoice.credits_applied),
        amount_due=money(invoice.amount_due),
    )
    return InvoiceView(
        organization_name=org.name,
        organization_locale=org.locale,
        billing_address=group.billing_address,
        shipping_address=group.shipping_address,
        vat_id=group.vat_id,
        payment_method=group.payment_method,
        discount_codes=tuple(d.code for d in discounts),
        number=invoice.number,
        organization=org.key,
        group=group_ref(group),
        period=Period(invoice.period_start.astimezone(tz), invoice.period_end.astimezone(tz)),
        invoice_date=invoice.invoice_date,
        due_date=invoice.due_date,
        status="paid" if invoice.status == "paid" else "open",
        lines=lines,
        totals=totals,
        amount_paid=money(invoice.amount_paid),
        tax_rate=invoice.tax_rate,
    )


def load_invoices(session: Session, where: object, *, limit: int | None = None) -> list[t.Invoice]:
    stmt = (
        select(t.Invoice)
        .where(where)  # type: ignore[arg-type]
        .options(selectinload(t.Invoice.lines).selectinload(t.InvoiceLine.projects))
        .order_by(t.Invoice.invoice_date.desc(), t.Invoice.number.desc())
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def find_invoice(session: Session, organization_id: int, number: str) -> t.Invoice:
    row = session.scalars(
        select(t.Invoice)
        .where(t.Invoice.organization_id == organization_id, t.Invoice.number == number.upper())
        .options(selectinload(t.Invoice.lines).selectinload(t.InvoiceLine.projects))
    ).one_or_none()
    if row is None:
        raise NotFound(
            f"There is no invoice `{number}` in your organization.",
            hint="`invoices` lists the recent ones.",
        )
    return row


def payments_of(session: Session, groups: list[t.BillingGroup], limit: int) -> list[PaymentView]:
    by_id = {g.id: g for g in groups}
    rows = session.scalars(
        select(t.Payment)
        .where(t.Payment.billing_group_id.in_(by_id))
        .order_by(t.Payment.received_at.desc(), t.Payment.id.desc())
        .limit(limit)
    ).all()
    allocations: dict[int, list[tuple[str, Money]]] = defaultdict(list)
    if rows:
        for payment_id, number, amount, currency in session.execute(
            select(
                t.PaymentAllocation.payment_id,
                t.Invoice.number,
                t.PaymentAllocation.amount,
                t.Invoice.currency,
            )
            .join(t.Invoice, t.Invoice.id == t.PaymentAllocation.invoice_id)
            .where(t.PaymentAllocation.payment_id.in_([p.id for p in rows]))
            .order_by(t.PaymentAllocation.id)
        ):
            allocations[payment_id].append((number, Money(amount, currency)))
    views = []
    for p in rows:
        allocated = sum((m for _, m in allocations[p.id]), Money.zero(p.currency))
        views.append(
            PaymentView(
                reference=p.reference,
                receipt_number=p.receipt_number,
                group=group_ref(by_id[p.billing_group_id]),
                amount=Money(p.amount, p.currency),
                method=p.method,
                received_at=p.received_at,
                allocations=tuple(allocations[p.id]),
                to_credit=Money(p.amount, p.currency) - allocated,
            )
        )
    return views


def credits_of(session: Session, groups: list[t.BillingGroup], at: datetime) -> list[CreditView]:
    by_id = {g.id: g for g in groups}
    rows = session.scalars(
        select(t.Credit)
        .where(t.Credit.billing_group_id.in_(by_id))
        .order_by(t.Credit.billing_group_id, t.Credit.id)
    ).all()
    return [
        CreditView(
            group=group_ref(by_id[c.billing_group_id]),
            granted=Money(c.amount, c.currency),
            remaining=Money(c.remaining, c.currency),
            expires_at=c.expires_at,
            reason=c.reason,
        )
        # Spent credits are filtered here, not in SQL: SQLite compares stored decimal text.
        for c in rows
        if c.remaining > 0 and (c.expires_at is None or c.expires_at > at)
    ]


def group_views(session: Session, groups: list[t.BillingGroup]) -> list[GroupView]:
    views = []
    for g in groups:
        projects = session.scalars(
            select(t.Project.key).where(t.Project.billing_group_id == g.id).order_by(t.Project.key)
        ).all()
        contacts = session.scalars(
            select(t.Contact).where(t.Contact.billing_group_id == g.id).order_by(t.Contact.id)
        ).all()
        plan = session.get(t.Plan, g.plan_id) if g.plan_id else None
        views.append(
            GroupView(
                group=group_ref(g),
                payment_method=g.payment_method,
                payment_terms_days=g.payment_terms_days,
                projects=tuple(projects),
                contacts=tuple(
                    ContactView(c.slack_user_id, c.slack_channel_id, c.email) for c in contacts
                ),
                plan=plan.name if plan else None,
            )
        )
    return views


def org_zone(session: Session, organization_id: int) -> ZoneInfo:
    return zone(session.get_one(t.Organization, organization_id).timezone)


def is_overdue(invoice: t.Invoice, at: datetime, tz: ZoneInfo) -> bool:
    return invoice.status == "open" and local_date(at, tz) > invoice.due_date


# --- Hot reads of the Slack commands: a few Core queries per answer, no ORM objects ---------
#
# The statements are built once, with bound parameters: building a select (and above all the
# column collection of a union) costs more Python time than running it on a warm connection.


@dataclass(frozen=True, slots=True)
class ActorFacts:
    """The organization linked to a workspace, and what it says about one of its users."""

    organization_id: int
    organization_key: str
    organization_name: str
    locale: str | None
    open_read_access: bool
    role: str | None  # the user's membership, None when not a member
    admins: tuple[str, ...]


_ACTOR = (
    select(
        t.Organization.id,
        t.Organization.key,
        t.Organization.name,
        t.Organization.locale,
        t.Organization.open_read_access,
        t.Member.slack_user_id,
        t.Member.role,
    )
    .outerjoin(
        t.Member,
        and_(
            t.Member.organization_id == t.Organization.id,
            or_(t.Member.role == "admin", t.Member.slack_user_id == bindparam("user")),
        ),
    )
    .where(t.Organization.slack_team_id == bindparam("team"))
    .order_by(t.Member.slack_user_id)
)


def actor_facts(session: Session, team_id: str, user_id: str) -> ActorFacts | None:
    """One query: the workspace's organization, its admins, and the user's own membership."""
    rows = session.execute(_ACTOR, {"team": team_id, "user": user_id}).all()
    if not rows:
        return None
    org_id, org_key, org_name, locale, open_read, _, _ = rows[0]
    role = next((r for _, _, _, _, _, u, r in rows if u == user_id), None)
    admins = tuple(u for _, _, _, _, _, u, r in rows if u is not None and r == "admin")
    return ActorFacts(org_id, org_key, org_name, locale, bool(open_read), role, admins)


@dataclass(frozen=True, slots=True)
class GroupFacts:
    """What an invoice view shows of its group."""

    id: int
    ref: GroupRef
    billing_address: str | None
    shipping_address: str | None
    vat_id: str | None
    payment_method: str


@dataclass(frozen=True, slots=True)
class OrgFacts:
    key: str
    name: str
    locale: str | None
    tz: ZoneInfo


_GROUP_COLUMNS = (
    t.BillingGroup.id,
    t.BillingGroup.key,
    t.BillingGroup.name,
    t.BillingGroup.currency,
    t.BillingGroup.billing_address,
    t.BillingGroup.shipping_address,
    t.BillingGroup.vat_id,
    t.BillingGroup.payment_method,
)
_ORG_COLUMNS = (
    t.Organization.key,
    t.Organization.name,
    t.Organization.locale,
    t.Organization.timezone,
)
_ORG_AND_GROUPS = (
    select(*_ORG_COLUMNS, *_GROUP_COLUMNS)
    .select_from(t.Organization)
    .outerjoin(t.BillingGroup, t.BillingGroup.organization_id == t.Organization.id)
    .where(t.Organization.id == bindparam("org"))
    .order_by(t.BillingGroup.key)
)


def _group_facts(row: Sequence[Any]) -> GroupFacts:
    gid, key, name, currency, billing, shipping, vat_id, method = row
    return GroupFacts(gid, GroupRef(key, name, currency), billing, shipping, vat_id, method)


def org_and_groups(
    session: Session, organization_id: int, group_key: str | None
) -> tuple[OrgFacts | None, list[GroupFacts]]:
    """The organization and its groups (or the one named), in one query, ordered by key.

    Refuses an unknown ``group_key`` exactly as :func:`groups_of` does.
    """
    rows = session.execute(_ORG_AND_GROUPS, {"org": organization_id}).all()
    if not rows:
        return None, []
    key, name, locale, tz_name = rows[0][:4]
    org = OrgFacts(key, name, locale, zone(tz_name))
    groups = [_group_facts(r[4:]) for r in rows if r[4] is not None]
    if group_key is None:
        return org, groups
    chosen = [g for g in groups if g.ref.key.casefold() == group_key.casefold()]
    if not chosen:
        names = ", ".join(g.ref.key for g in groups) or "none yet"
        raise NotFound(f"There is no billing group `{group_key}`.", hint=f"Groups: {names}.")
    return org, chosen


_INVOICE_COLUMNS = (
    t.Invoice.id,
    t.Invoice.number,
    t.Invoice.billing_group_id,
    t.Invoice.currency,
    t.Invoice.period_start,
    t.Invoice.period_end,
    t.Invoice.invoice_date,
    t.Invoice.due_date,
    t.Invoice.status,
    t.Invoice.subtotal,
    t.Invoice.discount,
    t.Invoice.tax_rate,
    t.Invoice.tax,
    t.Invoice.total,
    t.Invoice.credits_applied,
    t.Invoice.amount_due,
    t.Invoice.amount_paid,
)


class InvoiceRow(NamedTuple):
    """The columns of ``_INVOICE_COLUMNS``, in that order."""

    id: int
    number: str
    billing_group_id: int
    currency: str
    period_start: datetime
    period_end: datetime
    invoice_date: date
    due_date: date
    status: str
    subtotal: Decimal
    discount: Decimal
    tax_rate: Decimal | None
    tax: Decimal
    total: Decimal
    credits_applied: Decimal
    amount_due: Decimal
    amount_paid: Decimal


# Newest first (invoice date, then number), as load_invoices.
_INVOICES_OF_GROUPS = (
    select(*_INVOICE_COLUMNS)
    .where(t.Invoice.billing_group_id.in_(bindparam("groups", expanding=True)))
    .order_by(t.Invoice.invoice_date.desc(), t.Invoice.number.desc())
)
_OPEN_INVOICES_OF_GROUPS = _INVOICES_OF_GROUPS.where(t.Invoice.status == "open")
_RECENT_INVOICES_OF_GROUPS = _INVOICES_OF_GROUPS.limit(bindparam("limit"))


def invoice_rows(
    session: Session, group_ids: Sequence[int], *, open_only: bool = False, limit: int | None = None
) -> list[InvoiceRow]:
    """The invoices of these groups (only the open ones, or the ``limit`` newest), newest first
    (invoice date, then number), as :func:`load_invoices`."""
    params: dict[str, Any] = {"groups": list(group_ids)}
    if open_only:
        stmt = _OPEN_INVOICES_OF_GROUPS
        if limit is not None:
            stmt = stmt.limit(limit)
    elif limit is not None:
        stmt, params["limit"] = _RECENT_INVOICES_OF_GROUPS, limit
    else:
        stmt = _INVOICES_OF_GROUPS
    return [InvoiceRow._make(r) for r in session.execute(stmt, params)]


_LINES = (
    select(
        t.InvoiceLine.invoice_id,
        t.InvoiceLine.id,
        t.InvoiceLine.kind,
        t.InvoiceLine.metric,
        t.InvoiceLine.category,
        t.InvoiceLine.quantity,
        t.InvoiceLine.billable_quantity,
        t.InvoiceLine.amount,
        t.InvoiceLine.late_period_start,
        t.InvoiceLine.late_period_end,
        t.InvoiceLineProject.project_key,
        t.InvoiceLineProject.quantity,
        t.InvoiceLineProject.amount,
    )
    .outerjoin(t.InvoiceLineProject, t.InvoiceLineProject.line_id == t.InvoiceLine.id)
    .where(t.InvoiceLine.invoice_id.in_(bindparam("ids", expanding=True)))
    .order_by(
        t.InvoiceLine.invoice_id,
        t.InvoiceLine.position,
        t.InvoiceLine.id,
        t.InvoiceLineProject.id,
    )
)
_ADJUSTMENTS_UNION = union_all(
    select(
        literal_column("'d'").label("kind"),
        t.InvoiceDiscount.invoice_id,
        t.InvoiceDiscount.id,
        t.InvoiceDiscount.redemption_id.label("ref"),
        t.InvoiceDiscount.amount,
        t.InvoiceDiscount.code,
    ).where(t.InvoiceDiscount.invoice_id.in_(bindparam("ids", expanding=True))),
    select(
        literal_column("'c'").label("kind"),
        t.CreditApplication.invoice_id,
        t.CreditApplication.id,
        t.CreditApplication.credit_id.label("ref"),
        t.CreditApplication.amount,
        null().label("code"),
    ).where(t.CreditApplication.invoice_id.in_(bindparam("ids", expanding=True))),
).subquery()
# Discounts in the order they were applied (their ids), then credits likewise.
_ADJUSTMENTS = select(_ADJUSTMENTS_UNION).order_by(
    _ADJUSTMENTS_UNION.c.kind.desc(), _ADJUSTMENTS_UNION.c.invoice_id, _ADJUSTMENTS_UNION.c.id
)


def invoice_views(
    session: Session,
    rows: Sequence[InvoiceRow],
    org: OrgFacts,
    groups: dict[int, GroupFacts],
) -> list[InvoiceView]:
    """The views of ``rows`` (from :func:`invoice_rows`), in their order, in two more queries
    whatever their number: the lines with their project shares, then discounts and credits."""
    if not rows:
        return []
    ids = [r.id for r in rows]
    currency = {r.id: r.currency for r in rows}
    lines: dict[int, list[Line]] = defaultdict(list)
    current: tuple[int, int] | None = None
    head: tuple[Any, ...] = ()
    shares: list[ProjectShare] = []

    def flush() -> None:
        if current is None:
            return
        invoice_id = current[0]
        kind, metric, category, qty, billable, amount, late_start, late_end = head
        lines[invoice_id].append(
            Line(
                kind="subscription" if kind == "subscription" else "usage",
                metric=metric,
                category=category,
                quantity=qty,
                billable_quantity=billable,
                amount=Money(amount, currency[invoice_id]),
                projects=tuple(shares),
                late_period=(
                    Period(late_start, late_end)
                    if late_start is not None and late_end is not None
                    else None
                ),
            )
        )

    for row in session.execute(_LINES, {"ids": ids}):
        slot = (row[0], row[1])
        if slot != current:
            flush()
            current, head, shares = slot, tuple(row[2:10]), []
        if row[10] is not None:
            shares.append(ProjectShare(row[10], row[11], Money(row[12], currency[row[0]])))
    flush()

    discounts: dict[int, list[tuple[int, Decimal, str]]] = defaultdict(list)
    credits: dict[int, list[tuple[int, Decimal]]] = defaultdict(list)
    for kind, invoice_id, _, ref, amount, code in session.execute(_ADJUSTMENTS, {"ids": ids}):
        if kind == "d":
            discounts[invoice_id].append((ref, amount, code))
        else:
            credits[invoice_id].append((ref, amount))

    views = []
    for r in rows:
        cur = r.currency
        group = groups[r.billing_group_id]
        applied = discounts.get(r.id, [])
        views.append(
            InvoiceView(
                organization_name=org.name,
                organization_locale=org.locale,
                billing_address=group.billing_address,
                shipping_address=group.shipping_address,
                vat_id=group.vat_id,
                payment_method=group.payment_method,
                discount_codes=tuple(code for _, _, code in applied),
                number=r.number,
                organization=org.key,
                group=group.ref,
                period=Period(r.period_start.astimezone(org.tz), r.period_end.astimezone(org.tz)),
                invoice_date=r.invoice_date,
                due_date=r.due_date,
                status="paid" if r.status == "paid" else "open",
                lines=tuple(lines.get(r.id, ())),
                totals=Totals(
                    subtotal=Money(r.subtotal, cur),
                    discounts=tuple((ref, Money(a, cur)) for ref, a, _ in applied),
                    discount=Money(r.discount, cur),
                    tax=Money(r.tax, cur),
                    total=Money(r.total, cur),
                    credits=tuple((ref, Money(a, cur)) for ref, a in credits.get(r.id, ())),
                    credits_applied=Money(r.credits_applied, cur),
                    amount_due=Money(r.amount_due, cur),
                ),
                amount_paid=Money(r.amount_paid, cur),
                tax_rate=r.tax_rate,
            )
        )
    return views


def invoice_summaries(
    rows: Sequence[InvoiceRow], org: OrgFacts, groups: dict[int, GroupFacts]
) -> list[InvoiceSummary]:
    """The headings of ``rows`` (from :func:`invoice_rows`), in their order, without a query:
    a list of invoices shows no lines, discounts or credits, so none are read."""
    summaries = []
    for r in rows:
        cur = r.currency
        summaries.append(
            InvoiceSummary(
                number=r.number,
                group=groups[r.billing_group_id].ref,
                period=Period(r.period_start.astimezone(org.tz), r.period_end.astimezone(org.tz)),
                invoice_date=r.invoice_date,
                due_date=r.due_date,
                status="paid" if r.status == "paid" else "open",
                total=Money(r.total, cur),
                amount_due=Money(r.amount_due, cur),
                amount_paid=Money(r.amount_paid, cur),
            )
        )
    return summaries


_INVOICE_BY_NUMBER = (
    select(*_INVOICE_COLUMNS, *_ORG_COLUMNS, *_GROUP_COLUMNS)
    .join(t.Organization, t.Organization.id == t.Invoice.organization_id)
    .join(t.BillingGroup, t.BillingGroup.id == t.Invoice.billing_group_id)
    .where(t.Invoice.organization_id == bindparam("org"), t.Invoice.number == bindparam("number"))
)


def invoice_by_number(
    session: Session, organization_id: int, number: str
) -> tuple[InvoiceRow, OrgFacts, GroupFacts]:
    """One invoice of the organization with its group and organization, in one query."""
    row = session.execute(
        _INVOICE_BY_NUMBER, {"org": organization_id, "number": number.upper()}
    ).one_or_none()
    if row is None:
        raise NotFound(
            f"There is no invoice `{number}` in your organization.",
            hint="`invoices` lists the recent ones.",
        )
    n = len(_INVOICE_COLUMNS)
    values: tuple[Any, ...] = tuple(row)
    key, name, locale, tz_name = values[n : n + 4]
    return (
        InvoiceRow._make(values[:n]),
        OrgFacts(key, name, locale, zone(tz_name)),
        _group_facts(values[n + 4 :]),
    )


def is_overdue_row(row: InvoiceRow, at: datetime, tz: ZoneInfo) -> bool:
    return bool(row.status == "open" and local_date(at, tz) > row.due_date)


# What groups_for_rating reads; built once, the ids bound at execution.
_GROUPS_WITH_ORG = (
    select(t.BillingGroup, t.Organization)
    .join(t.Organization, t.Organization.id == t.BillingGroup.organization_id)
    .where(t.BillingGroup.organization_id == bindparam("org"))
    .order_by(t.BillingGroup.key)
)
_PRICE_LISTS = (
    select(t.PriceList)
    .where(t.PriceList.id.in_(bindparam("ids", expanding=True)))
    .options(joinedload(t.PriceList.metrics))
)
_PLANS = select(t.Plan).where(t.Plan.id.in_(bindparam("ids", expanding=True)))


def groups_for_rating(
    session: Session, organization_id: int, group_key: str | None
) -> tuple[list[t.BillingGroup], list[object]]:
    """:func:`groups_of`, with what ``issuing.group_context`` reads of each group already in
    the session (organization, price lists and their metrics, plans): three queries at most,
    instead of a few per group the first time each is met.

    Also returns the rows loaded for that: the session's identity map holds objects weakly, so
    the caller keeps this list alive for as long as it rates the groups.
    """
    rows = session.execute(_GROUPS_WITH_ORG, {"org": organization_id}).all()
    groups = [g for g, _ in rows]
    held: list[object] = [org for _, org in rows[:1]]
    if group_key is not None:
        groups = [g for g in groups if g.key.casefold() == group_key.casefold()]
        if not groups:
            names = ", ".join(g.key for g, _ in rows) or "none yet"
            raise NotFound(f"There is no billing group `{group_key}`.", hint=f"Groups: {names}.")
    if not groups:
        return groups, held
    price_lists = sorted({g.price_list_id for g in groups})
    held += session.scalars(_PRICE_LISTS, {"ids": price_lists}).unique().all()
    plan_ids = sorted({g.plan_id for g in groups if g.plan_id is not None})
    if plan_ids:
        held += session.scalars(_PLANS, {"ids": plan_ids}).all()
    return groups, held
