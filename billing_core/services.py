"""Use cases: one function each, time passed in, every refusal a BillingError."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from billing_core import batch, issuing, ledger, queries
from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.errors import (
    BillingError,
    Conflict,
    CouponRefused,
    InvalidInput,
    NotAllowed,
    NotFound,
)
from billing_core.export import invoice_document
from billing_core.loader import LoadSummary, load_document
from billing_core.model import (
    Actor,
    Balance,
    CreditView,
    DailyCharges,
    GroupView,
    InvoiceSummary,
    InvoiceView,
    Owed,
    PaymentView,
)
from billing_core.money import Money
from billing_core.periods import Period, require_aware


@dataclass
class RunReport:
    issued: list[str] = field(default_factory=list)
    closed_without_invoice: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (group, reason)

    def describe(self) -> str:
        text = (
            f"{len(self.issued)} invoices issued, "
            f"{self.closed_without_invoice} periods closed with nothing to charge"
        )
        if self.failed:
            text += f", {len(self.failed)} groups failed"
        return text


@dataclass(frozen=True)
class Change:
    """An admin change, as written to the audit log."""

    actor: str
    action: str
    subject: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    at: datetime
    message: str


# What each kind a load counts writes (statistics are refreshed after a big load).
_LOADED_TABLES: dict[str, tuple[str, ...]] = {
    "price lists": ("price_lists", "metric_prices"),
    "plans": ("plans",),
    "coupons": ("coupons",),
    "organizations": ("organizations",),
    "members": ("members",),
    "billing groups": ("billing_groups", "contacts", "usage_gates"),
    "units": ("units",),
    "projects": ("projects", "project_assignments"),
    "credits": ("credits",),
}
_INVOICE_TABLES = (
    "invoices",
    "invoice_lines",
    "invoice_line_projects",
    "invoice_discounts",
    "credit_applications",
)
_PAYMENT_TABLES = ("payments", "payment_allocations")


class BillingService:
    """The billing core's front: the CLI, the Slack bot and the scheduler all call this."""

    def __init__(self, db: Database, *, invoice_prefix: str = "INV") -> None:
        self.db = db
        self.invoice_prefix = invoice_prefix
        self._reads = threading.local()  # the session of ``reading()``, per thread

    # -- operators ------------------------------------------------------------------------

    def load(self, document: object, *, at: datetime) -> LoadSummary:
        with self.db.transaction() as session:
            summary = load_document(session, document, at=require_aware(at))
        written: dict[str, int] = {}
        for kind, count in (*summary.created.items(), *summary.updated.items()):
            for table in _LOADED_TABLES.get(kind, ()):
                written[table] = written.get(table, 0) + count
        self.db.refresh_statistics(written)
        return summary

    def import_usage(self, lines: Iterable[str]) -> ledger.ImportReport:
        with self.db.transaction() as session:
            report = ledger.import_usage(session, ledger.json_lines(lines))
        self._imported(report)
        return report

    def import_usage_items(self, items: list[object]) -> ledger.ImportReport:
        with self.db.transaction() as session:
            report = ledger.import_usage(session, enumerate(items))
        self._imported(report)
        return report

    def _imported(self, report: ledger.ImportReport) -> None:
        # Counted before vacuumed: a vacuum updates the row and page counts that
        # refresh_statistics judges staleness by, but gathers no column statistics.
        self.db.refresh_statistics({"usage_events": report.accepted})
        if report.accepted:  # an import that added no rows added no pages to mark
            self.db.refresh_visibility_after("usage_events")

    def import_payments(self, lines: Iterable[str], *, at: datetime) -> ledger.ImportReport:
        return self._payments(ledger.json_lines(lines), at=at)

    def import_payment_items(self, items: list[object], *, at: datetime) -> ledger.ImportReport:
        return self._payments(enumerate(items), at=at)

    def _payments(
        self, items: Iterable[tuple[int, object]], *, at: datetime
    ) -> ledger.ImportReport:
        report = ledger.ImportReport()
        seen: set[str] = set()
        for number, value in items:
            try:
                if isinstance(value, InvalidInput):
                    raise value
                payment = ledger.parse_payment(value)
                if payment.reference in seen:
                    report.duplicates += 1
                    continue
                seen.add(payment.reference)
                try:
                    with self.db.transaction() as session:
                        receipt = ledger.record_payment(session, payment, at=at)
                except IntegrityError:
                    # Another import recorded the same reference at the same moment.
                    if not self._payment_exists(payment.reference):
                        raise
                    receipt = None
            except InvalidInput as exc:
                report.rejected.append((number, str(exc)))
                continue
            if receipt is None:
                report.duplicates += 1
            else:
                report.accepted += 1
                report.receipts.append(receipt)
        self.db.refresh_statistics(dict.fromkeys(_PAYMENT_TABLES, report.accepted))
        return report

    def _payment_exists(self, reference: str) -> bool:
        with self.db.transaction() as session:
            found = session.scalar(select(t.Payment.id).where(t.Payment.reference == reference))
        return found is not None

    def run_billing(self, *, at: datetime) -> RunReport:
        """Issue every invoice whose period ended at or before ``at``; safe to repeat.

        Periods close in a fixed order (period end, then group), so numbers are deterministic
        and a run that died continues exactly where a clean run would have gone. They close in
        batches, one transaction each (``billing_core.batch``); overlapping runs wait for each
        other group by group; the scheduler runs one at a time anyway.
        """
        require_aware(at)
        report = RunReport()
        with self.db.transaction() as session:
            due = issuing.due_periods(session, at)
        if due:  # not on every scheduler tick: only when there is something to close
            self.db.refresh_visibility("usage_events")  # see batch._SETTLE
        for group_id, closed in batch.close_due(self.db, due, at=at, prefix=self.invoice_prefix):
            if isinstance(closed, BillingError):
                report.failed.append((str(group_id), str(closed)))
                continue
            if closed is None:
                continue
            if closed.invoice_number:
                report.issued.append(closed.invoice_number)
            else:
                report.closed_without_invoice += 1
        # An invoice's lines, shares, discounts and credits are judged by the invoices.
        written = dict.fromkeys(_INVOICE_TABLES, len(report.issued))
        written["period_closes"] = len(report.issued) + report.closed_without_invoice
        self.db.refresh_statistics(written)
        return report

    def check(self) -> list[str]:
        """Every violated invariant in the database (empty when all hold)."""
        from billing_core.checks import violations  # noqa: PLC0415 - only the audit needs it

        with self.db.transaction() as session:
            return list(violations(session))

    def export_invoices(
        self, *, org_key: str, group_key: str | None = None, since: date | None = None
    ) -> list[dict[str, Any]]:
        """Invoice documents (SPEC 4.4), dated ``since`` or later when given."""
        with self.db.transaction() as session:
            org = session.scalars(select(t.Organization).filter_by(key=org_key)).one_or_none()
            if org is None:
                raise NotFound(f"There is no organization {org_key!r}.")
            groups = queries.groups_of(session, org.id, group_key)
            by_id = {g.id: g for g in groups}
            where: ColumnElement[bool] = t.Invoice.billing_group_id.in_(by_id)
            if since is not None:
                where = where & (t.Invoice.invoice_date >= since)
            rows = queries.load_invoices(session, where)
            tz = queries.org_zone(session, org.id)
            rows.sort(key=lambda r: r.number)
            return [
                invoice_document(
                    r, organization=org.key, group=by_id[r.billing_group_id].key, tz=tz
                )
                for r in rows
            ]

    def invoice_by_number(self, number: str) -> InvoiceView:
        """Any organization's invoice by its number (operators and the API; no Slack actor)."""
        with self.db.transaction() as session:
            row = session.scalars(
                select(t.Invoice)
                .where(t.Invoice.number == number.strip().upper())
                .options(selectinload(t.Invoice.lines).selectinload(t.InvoiceLine.projects))
            ).one_or_none()
            if row is None:
                raise NotFound(f"There is no invoice {number!r}.")
            return queries.invoice_view(
                session, row, queries.org_zone(session, row.organization_id)
            )

    # -- reads --------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Let the read methods called inside (``actor``, ``balance`` ... ``groups``) share one
        session: a Slack command looks its asker up and answers on one connection (on
        PostgreSQL without BEGIN/COMMIT, see ``Database.reading``). Only reads may be called
        inside; the write methods open their own transactions."""
        if getattr(self._reads, "session", None) is not None:
            yield
            return
        with self.db.reading() as session:
            self._reads.session = session
            try:
                yield
            finally:
                self._reads.session = None

    @contextmanager
    def _read(self) -> Iterator[Session]:
        session: Session | None = getattr(self._reads, "session", None)
        if session is not None:
            yield session
            return
        with self.db.reading() as session:
            yield session

    # -- people ---------------------------------------------------------------------------

    def actor(self, *, team_id: str, user_id: str, is_guest: bool = False) -> Actor:
        """Who ``user_id`` is in the organization linked to the workspace ``team_id``."""
        with self._read() as session:
            org = queries.actor_facts(session, team_id, user_id)
        if org is None:
            raise NotAllowed(
                "This Slack workspace is not linked to a billing organization.",
                hint="An operator links it with `slack_team_id` in `billing-bot load`.",
            )
        ident = (org.organization_id, org.organization_key, user_id)
        admins = org.admins
        if org.role is not None:
            if org.role == "admin":
                return Actor(*ident, "admin", admins, org.locale)
            return Actor(*ident, "member", admins, org.locale)
        if org.open_read_access and not is_guest:
            return Actor(*ident, "reader", admins, org.locale)
        refusal = (
            f"Guests cannot see {org.organization_name}'s billing."
            if is_guest
            else f"Only members of {org.organization_name} can see its billing."
        )
        contact = ", ".join(f"<@{a}>" for a in admins) or "an operator"
        raise NotAllowed(refusal, hint=f"Ask {contact} for access.")

    def require_admin(self, actor: Actor) -> None:
        """Refuse anyone but an organization admin (before asking them to confirm anything)."""
        if not actor.is_admin:
            contact = ", ".join(f"<@{a}>" for a in actor.admins) or "an operator"
            raise NotAllowed("Only organization admins can change billing.", hint=f"Ask {contact}.")

    def balance(self, actor: Actor, *, group_key: str | None = None, at: datetime) -> list[Balance]:
        with self._read() as session:
            result = []
            groups, _held = queries.groups_for_rating(session, actor.organization_id, group_key)
            contexts = [issuing.group_context(session, group) for group in groups]
            for draft in issuing.drafts(session, contexts, at):
                ctx, period = draft.ctx, draft.period
                result.append(
                    Balance(
                        group=queries.group_ref(ctx.group),
                        period=Period(
                            period.start.astimezone(ctx.tz), period.end.astimezone(ctx.tz)
                        ),
                        lines=tuple(draft.lines),
                        totals=draft.totals,
                        coupon_codes=tuple(code for _, code in draft.redemptions),
                        tax_rate=ctx.group.tax_rate,
                    )
                )
            return result

    def daily_charges(
        self, actor: Actor, *, group_key: str | None = None, at: datetime
    ) -> list[DailyCharges]:
        """Per group: what each day of the open period added, by category."""
        with self._read() as session:
            result = []
            for group in queries.groups_of(session, actor.organization_id, group_key):
                ctx = issuing.group_context(session, group)
                period, days, by_category = issuing.daily_charges(session, ctx, at)
                result.append(
                    DailyCharges(
                        group=queries.group_ref(group),
                        period=Period(
                            period.start.astimezone(ctx.tz), period.end.astimezone(ctx.tz)
                        ),
                        days=tuple(days),
                        by_category={c: tuple(v) for c, v in sorted(by_category.items())},
                    )
                )
            return result

    def owed(self, actor: Actor, *, group_key: str | None = None, at: datetime) -> list[Owed]:
        with self._read() as session:
            org, groups = queries.org_and_groups(session, actor.organization_id, group_key)
            if org is None or not groups:
                return []
            by_id = {g.id: g for g in groups}
            rows = queries.invoice_rows(session, list(by_id), open_only=True)
        rows.sort(key=lambda r: (r.invoice_date, r.number))
        summaries = queries.invoice_summaries(rows, org, by_id)
        per_group: dict[int, list[tuple[queries.InvoiceRow, InvoiceSummary]]] = {
            g: [] for g in by_id
        }
        for row, view in zip(rows, summaries, strict=True):
            per_group[row.billing_group_id].append((row, view))
        result = []
        for group in groups:
            mine = per_group[group.id]
            outstanding = sum((v.outstanding for _, v in mine), Money.zero(group.ref.currency))
            result.append(
                Owed(
                    group=group.ref,
                    outstanding=outstanding,
                    open_invoices=tuple(v for _, v in mine),
                    overdue=tuple(
                        r.number for r, _ in mine if queries.is_overdue_row(r, at, org.tz)
                    ),
                )
            )
        return result

    def invoices(
        self, actor: Actor, *, group_key: str | None = None, limit: int = 10
    ) -> list[InvoiceSummary]:
        """The ``limit`` newest invoices' headings (``invoice`` has one whole)."""
        with self._read() as session:
            org, groups = queries.org_and_groups(session, actor.organization_id, group_key)
            if org is None or not groups:
                return []
            by_id = {g.id: g for g in groups}
            rows = queries.invoice_rows(session, list(by_id), limit=limit)
        return queries.invoice_summaries(rows, org, by_id)

    def invoice(self, actor: Actor, *, number: str) -> InvoiceView:
        with self._read() as session:
            row, org, group = queries.invoice_by_number(session, actor.organization_id, number)
            return queries.invoice_views(session, [row], org, {group.id: group})[0]

    def payments(
        self, actor: Actor, *, group_key: str | None = None, limit: int = 10
    ) -> list[PaymentView]:
        with self._read() as session:
            groups = queries.groups_of(session, actor.organization_id, group_key)
            return queries.payments_of(session, groups, limit)

    def credits(
        self, actor: Actor, *, group_key: str | None = None, at: datetime
    ) -> list[CreditView]:
        with self._read() as session:
            groups = queries.groups_of(session, actor.organization_id, group_key)
            return queries.credits_of(session, groups, at)

    def groups(self, actor: Actor) -> list[GroupView]:
        with self._read() as session:
            return queries.group_views(
                session, queries.groups_of(session, actor.organization_id, None)
            )

    def redeem_coupon(
        self, actor: Actor, *, code: str, group_key: str | None = None, at: datetime
    ) -> Change:
        """Redeem ``code`` for a group: it discounts invoices of periods ending after ``at``."""
        self.require_admin(actor)
        with self.db.transaction() as session:
            group = self._one_group(session, actor, group_key, verb="redeem CODE")
            group = ledger.lock_group(session, group.id)
            coupon = session.scalars(
                select(t.CouponRow)
                .where(func.upper(t.CouponRow.code) == code.strip().upper())
                .with_for_update()
            ).one_or_none()
            if coupon is None:
                raise NotFound(
                    f"There is no coupon `{code}`.", hint="Check the spelling and try again."
                )
            if session.scalar(
                select(t.Redemption.id).filter_by(coupon_id=coupon.id, billing_group_id=group.id)
            ):
                raise CouponRefused(f"Group `{group.key}` has already redeemed {coupon.code}.")
            issuing.coupon_from_row(coupon).check_redeemable(
                currency=group.currency, at=at, redemptions_so_far=coupon.times_redeemed
            )
            coupon.times_redeemed += 1
            session.add(
                t.Redemption(
                    coupon_id=coupon.id,
                    billing_group_id=group.id,
                    redeemed_at=at,
                    redeemed_by=actor.user_id,
                    uses=0,
                )
            )
            change = Change(
                actor=actor.user_id,
                action="coupon.redeem",
                subject=f"{actor.organization_key}/{group.key}",
                before=None,
                after={"coupon": coupon.code},
                at=at,
                message=f"Coupon {coupon.code} redeemed for {group.name} (`{group.key}`).",
            )
            self._audit(session, actor, change)
            return change

    def assign_project(
        self,
        actor: Actor,
        *,
        project_key: str,
        group_key: str,
        at: datetime,
        expected_group: str | None = None,
    ) -> Change:
        """Move a project to another group of the organization from ``at`` on.

        ``expected_group`` is the group the project was in when the admin was asked to
        confirm; if it moved since, the confirmation is stale and nothing changes.
        """
        self.require_admin(actor)
        with self.db.transaction() as session:
            project = self.find_project(session, actor, project_key)
            target = queries.groups_of(session, actor.organization_id, group_key)[0]
            for group_id in sorted({project.billing_group_id, target.id}):
                ledger.lock_group(session, group_id)
            session.refresh(project)
            current = session.get_one(t.BillingGroup, project.billing_group_id)
            if expected_group is not None and current.key != expected_group:
                raise Conflict(
                    f"Project `{project.key}` moved to `{current.key}` since you were asked; "
                    "nothing was changed.",
                    hint="Run `assign` again if you still want to move it.",
                )
            if current.id == target.id:
                raise BillingError(f"Project `{project.key}` is already in `{target.key}`.")
            ledger.reassign_project(
                session, project=project, group=target, at=at, actor=actor.user_id
            )
            change = Change(
                actor=actor.user_id,
                action="project.assign",
                subject=f"{actor.organization_key}/{project.key}",
                before={"billing_group": current.key},
                after={"billing_group": target.key},
                at=at,
                message=f"Project `{project.key}` moved from `{current.key}` to `{target.key}`.",
            )
            self._audit(session, actor, change)
            return change

    def find_project(self, session: Session, actor: Actor, project_key: str) -> t.Project:
        project = session.scalars(
            select(t.Project).filter_by(organization_id=actor.organization_id, key=project_key)
        ).one_or_none()
        if project is None:
            known = session.scalars(
                select(t.Project.key)
                .filter_by(organization_id=actor.organization_id)
                .order_by(t.Project.key)
            ).all()
            raise NotFound(
                f"There is no project `{project_key}`.",
                hint=f"Projects: {', '.join(known) or 'none yet'}.",
            )
        return project

    def project_group(self, actor: Actor, project_key: str) -> str:
        with self.db.transaction() as session:
            project = self.find_project(session, actor, project_key)
            return session.get_one(t.BillingGroup, project.billing_group_id).key

    def _one_group(
        self, session: Session, actor: Actor, group_key: str | None, *, verb: str
    ) -> t.BillingGroup:
        groups = queries.groups_of(session, actor.organization_id, group_key)
        if len(groups) != 1:
            names = ", ".join(g.key for g in groups)
            raise InvalidInput(
                "Your organization has several billing groups; say which one.",
                hint=f"`{verb} GROUP` with one of: {names}.",
            )
        return groups[0]

    def _audit(self, session: Session, actor: Actor, change: Change) -> None:
        ledger.audit(
            session,
            at=change.at,
            organization_id=actor.organization_id,
            actor=change.actor,
            action=change.action,
            subject=change.subject,
            before=change.before,
            after=change.after,
        )
