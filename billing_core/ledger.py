"""Writes that move money or usage: counters, imports, payments, redemptions, assignments.

Every function here runs inside the caller's transaction and takes the rows it changes in a
fixed order (billing group first, then the counter) so concurrent writers cannot deadlock.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from billing_core.db import tables as t
from billing_core.errors import InvalidInput
from billing_core.loader import PAYMENT_METHODS, QUANTITY_DECIMALS
from billing_core.money import FloatLiteral, minor_unit_exponent, parse_decimal
from billing_core.periods import local_date, zone
from billing_core.validate import Obj

IMPORT_BATCH = 1000


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT that understands ON CONFLICT on both backends."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def next_in_sequence(session: Session, name: str, year: int) -> int:
    """The next number of a gapless yearly sequence.

    The increment locks the counter row until the caller's transaction ends, so a document that
    rolls back gives its number back, and overlapping runs take numbers strictly one by one.
    """
    ins: Insert = dialect_insert(session, t.Counter).values(name=name, year=year, value=0)
    session.execute(ins.on_conflict_do_nothing(index_elements=["name", "year"]))  # type: ignore[attr-defined]
    value = session.execute(
        update(t.Counter)
        .where(t.Counter.name == name, t.Counter.year == year)
        .values(value=t.Counter.value + 1)
        .returning(t.Counter.value)
    ).scalar_one()
    return int(value)


def lock_group(session: Session, group_id: int) -> t.BillingGroup:
    """The group row, locked against other billing writes until the transaction ends.

    FOR NO KEY UPDATE: it serializes billing writes of the group without blocking the
    foreign-key checks of rows that merely point at it (usage events being imported).
    """
    return session.scalars(
        select(t.BillingGroup).where(t.BillingGroup.id == group_id).with_for_update(key_share=True)
    ).one()


def audit(
    session: Session,
    *,
    at: datetime,
    organization_id: int | None,
    actor: str,
    action: str,
    subject: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> t.AuditEntry:
    entry = t.AuditEntry(
        at=at,
        organization_id=organization_id,
        actor=actor,
        action=action,
        subject=subject,
        before=before,
        after=after,
    )
    session.add(entry)
    return entry


def reassign_project(
    session: Session, *, project: t.Project, group: t.BillingGroup, at: datetime, actor: str
) -> None:
    """Move a project to ``group`` from ``at`` on; its unbilled usage from then on follows."""
    if group.organization_id != project.organization_id:
        raise InvalidInput("a project can only move to a group of its own organization")
    project.billing_group_id = group.id
    session.add(
        t.ProjectAssignment(
            project_id=project.id, billing_group_id=group.id, valid_from=at, assigned_by=actor
        )
    )
    # Events already imported with timestamps at or after the move (clock skew, future-dated
    # meters) belong to the new group, unless a closed period has settled them already.
    session.execute(
        update(t.UsageEvent)
        .where(
            t.UsageEvent.project_id == project.id,
            t.UsageEvent.ts >= at,
            t.UsageEvent.close_id.is_(None),
        )
        .values(billing_group_id=group.id)
    )


# --- JSON Lines imports ------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did, line by line where it refused something."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line or index, reason)
    receipts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected

    def describe(self, noun: str) -> str:
        return (
            f"{self.accepted} {noun} accepted, {self.duplicates} duplicates skipped, "
            f"{len(self.rejected)} rejected"
        )


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, object | InvalidInput]]:
    """(line number, parsed value or the reason it is not JSON); blank lines are skipped."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw, parse_float=FloatLiteral)
        except json.JSONDecodeError as exc:
            yield number, InvalidInput(f"not valid JSON ({exc.msg} at column {exc.colno})")
        except ValueError as exc:  # e.g. a number too long to convert
            yield number, InvalidInput(f"not valid JSON ({exc})")


@dataclass(frozen=True)
class _Event:
    event_id: str
    org_key: str
    project_key: str
    metric: str
    quantity: Decimal
    ts: datetime


def _parse_event(value: object) -> _Event:
    o = Obj(
        value,
        "",
        allowed={"id", "project", "metric", "quantity", "timestamp"},
        required={"id", "project", "metric", "quantity", "timestamp"},
    )
    ref = o.text("project", max_len=130)
    org_key, sep, project_key = ref.partition("/")
    if not sep or not org_key or not project_key:
        raise InvalidInput(f"{ref!r} is not ORGANIZATION/PROJECT", path="project")
    return _Event(
        event_id=o.text("id", max_len=128),
        org_key=org_key,
        project_key=project_key,
        metric=o.text("metric", max_len=100),
        quantity=o.decimal("quantity", max_decimals=QUANTITY_DECIMALS),
        ts=o.timestamp("timestamp"),
    )


class _ProjectIndex:
    """Projects, their assignment history and their groups' priced metrics.

    Loaded a whole organization at a time (two queries), so an import touching thousands of
    projects costs a handful of queries, not two per project.
    """

    def __init__(self, session: Session) -> None:
        self.s = session
        self.orgs: dict[str, dict[str, tuple[int, list[datetime], list[int]]]] = {}
        self.metrics: dict[int, set[str]] = {}

    def _load(self, org_key: str) -> dict[str, tuple[int, list[datetime], list[int]]]:
        rows = self.s.execute(
            select(t.Project.id, t.Project.key)
            .join(t.Organization, t.Organization.id == t.Project.organization_id)
            .where(t.Organization.key == org_key)
        ).all()
        history: dict[int, tuple[list[datetime], list[int]]] = {pid: ([], []) for pid, _ in rows}
        if rows:
            for project_id, valid_from, group_id in self.s.execute(
                select(
                    t.ProjectAssignment.project_id,
                    t.ProjectAssignment.valid_from,
                    t.ProjectAssignment.billing_group_id,
                )
                .join(t.Project, t.Project.id == t.ProjectAssignment.project_id)
                .join(t.Organization, t.Organization.id == t.Project.organization_id)
                .where(t.Organization.key == org_key)
                .order_by(t.ProjectAssignment.valid_from, t.ProjectAssignment.id)
            ):
                history[project_id][0].append(valid_from)
                history[project_id][1].append(group_id)
        return {key: (pid, *history[pid]) for pid, key in rows}

    def project(self, org_key: str, project_key: str) -> tuple[int, list[datetime], list[int]]:
        if org_key not in self.orgs:
            self.orgs[org_key] = self._load(org_key)
        found = self.orgs[org_key].get(project_key)
        if found is None:
            raise InvalidInput(
                f"no project {project_key!r} in organization {org_key!r}", path="project"
            )
        return found

    def group_at(self, event: _Event) -> tuple[int, int]:
        project_id, starts, groups = self.project(event.org_key, event.project_key)
        index = bisect.bisect_right(starts, event.ts) - 1
        group_id = groups[max(index, 0)]
        if group_id not in self.metrics:
            self.metrics[group_id] = set(
                self.s.scalars(
                    select(t.MetricPriceRow.metric)
                    .join(
                        t.BillingGroup,
                        t.BillingGroup.price_list_id == t.MetricPriceRow.price_list_id,
                    )
                    .where(t.BillingGroup.id == group_id)
                )
            )
        if event.metric not in self.metrics[group_id]:
            known = ", ".join(sorted(self.metrics[group_id]))
            raise InvalidInput(
                f"metric {event.metric!r} is not priced for this project's "
                f"billing group (priced: {known})",
                path="metric",
            )
        return project_id, group_id


def import_usage(session: Session, items: Iterable[tuple[int, object]]) -> ImportReport:
    """Insert usage events; an id seen before is a duplicate, never counted twice."""
    report = ImportReport()
    index = _ProjectIndex(session)
    batch: list[dict[str, Any]] = []
    seen_here: set[str] = set()
    for number, value in items:
        try:
            if isinstance(value, InvalidInput):
                raise value
            event = _parse_event(value)
            project_id, group_id = index.group_at(event)
        except InvalidInput as exc:
            report.rejected.append((number, str(exc)))
            continue
        if event.event_id in seen_here:
            report.duplicates += 1
            continue
        seen_here.add(event.event_id)
        batch.append(
            {
                "event_id": event.event_id,
                "project_id": project_id,
                "billing_group_id": group_id,
                "metric": event.metric,
                "quantity": event.quantity,
                "ts": event.ts,
            }
        )
        if len(batch) >= IMPORT_BATCH:
            _insert_events(session, batch, report)
            batch = []
    if batch:
        _insert_events(session, batch, report)
    return report


def _insert_events(session: Session, batch: list[dict[str, Any]], report: ImportReport) -> None:
    # One cached single-row statement run as executemany: SQLAlchemy batches it into
    # multi-row INSERTs itself, where .values(batch) would compile a new statement each time.
    stmt = (
        dialect_insert(session, t.UsageEvent)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(t.UsageEvent.id)
    )
    inserted = len(session.connection().execute(stmt, batch).all())
    report.accepted += inserted
    report.duplicates += len(batch) - inserted


# --- payments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentIn:
    reference: str
    org_key: str
    group_key: str
    amount: Decimal
    currency: str
    method: str
    received_at: datetime


def parse_payment(value: object) -> PaymentIn:
    o = Obj(
        value,
        "",
        allowed={"reference", "billing_group", "amount", "currency", "method", "received_at"},
        required={"reference", "billing_group", "amount", "currency", "method", "received_at"},
    )
    ref = o.text("billing_group", max_len=130)
    org_key, sep, group_key = ref.partition("/")
    if not sep or not org_key or not group_key:
        raise InvalidInput(f"{ref!r} is not ORGANIZATION/GROUP", path="billing_group")
    amount = o.decimal("amount", max_decimals=4)
    if amount <= 0:
        raise InvalidInput("must be more than zero", path="amount")
    return PaymentIn(
        reference=o.text("reference", max_len=128),
        org_key=org_key,
        group_key=group_key,
        amount=amount,
        currency=o.text("currency", max_len=3),
        method=o.choice("method", PAYMENT_METHODS),
        received_at=o.timestamp("received_at"),
    )


def record_payment(session: Session, payment: PaymentIn, *, at: datetime) -> str | None:
    """Record and allocate one payment; None when its reference was seen before."""
    row = session.execute(
        select(t.BillingGroup.id, t.Organization.timezone)
        .join(t.Organization, t.Organization.id == t.BillingGroup.organization_id)
        .where(t.Organization.key == payment.org_key, t.BillingGroup.key == payment.group_key)
    ).one_or_none()
    if row is None:
        raise InvalidInput(
            f"no billing group {payment.group_key!r} in organization {payment.org_key!r}",
            path="billing_group",
        )
    group = lock_group(session, row[0])
    if payment.currency != group.currency:
        raise InvalidInput(
            f"{payment.currency!r} is not the group's currency {group.currency}", path="currency"
        )
    exponent = minor_unit_exponent(group.currency)
    parse_decimal(str(payment.amount), path="amount", max_decimals=exponent)
    if session.scalar(select(t.Payment.id).where(t.Payment.reference == payment.reference)):
        return None
    year = local_date(payment.received_at, zone(row[1])).year
    receipt = f"RCT-{year}-{next_in_sequence(session, 'receipt', year):06d}"
    paid = t.Payment(
        reference=payment.reference,
        receipt_number=receipt,
        billing_group_id=group.id,
        amount=payment.amount,
        currency=payment.currency,
        method=payment.method,
        received_at=payment.received_at,
        recorded_at=at,
    )
    session.add(paid)
    session.flush()
    left = payment.amount
    open_invoices = session.scalars(
        select(t.Invoice)
        .where(t.Invoice.billing_group_id == group.id, t.Invoice.status == "open")
        .order_by(t.Invoice.invoice_date, t.Invoice.number)
        .with_for_update()
    ).all()
    for invoice in open_invoices:
        if left <= 0:
            break
        share = min(left, invoice.amount_due - invoice.amount_paid)
        if share <= 0:
            continue
        session.add(t.PaymentAllocation(payment_id=paid.id, invoice_id=invoice.id, amount=share))
        invoice.amount_paid += share
        if invoice.amount_paid >= invoice.amount_due:
            invoice.status = "paid"
        left -= share
    if left > 0:
        session.add(
            t.Credit(
                billing_group_id=group.id,
                grant_key=f"payment:{payment.reference}",
                amount=left,
                remaining=left,
                currency=group.currency,
                expires_at=None,
                reason=f"overpayment of {payment.reference} (receipt {receipt})",
                granted_at=payment.received_at,
                payment_id=paid.id,
            )
        )
    session.flush()
    return receipt
