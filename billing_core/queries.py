"""Read models: database rows turned into the plain views of billing_core.model."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from billing_core.db import tables as t
from billing_core.errors import NotFound
from billing_core.model import (
    ContactView,
    CreditView,
    GroupRef,
    GroupView,
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
