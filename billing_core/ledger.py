"""Writes that move money or usage: counters, imports, payments, redemptions, assignments.

Every function here runs inside the caller's transaction and takes the rows it changes in a
fixed order (billing group first, then the counter) so concurrent writers cannot deadlock.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from billing_core import claims
from billing_core.db import tables as t
from billing_core.db.engine import copy_rows, dialect_insert
from billing_core.errors import InvalidInput
from billing_core.loader import PAYMENT_METHODS, QUANTITY_DECIMALS
from billing_core.money import FloatLiteral, minor_unit_exponent, parse_decimal
from billing_core.periods import local_date, parse_timestamp, zone
from billing_core.validate import Obj, unstorable

IMPORT_BATCH = 1000  # rows per executemany (SQLite)
PG_IMPORT_BATCH = 20_000  # rows per COPY and INSERT (PostgreSQL): bounds the memory held


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
    """Move a project to ``group`` from ``at`` on; its unbilled usage from then on follows.

    The caller holds both groups' locks. An event of a period the new group has closed already
    (stamped after ``at`` but before that close's end: a move dated in the past) stays with the
    old group, which bills it as late usage, rather than hide inside the new group's settled
    usage.
    """
    if group.organization_id != project.organization_id:
        raise InvalidInput("a project can only move to a group of its own organization")
    source_id = project.billing_group_id
    marks = claims.marks(session, {source_id, group.id})
    source, target = marks[source_id], marks[group.id]
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
            t.UsageEvent.billing_group_id == source_id,
            t.UsageEvent.ts >= at,
            claims.unsettled(source),
            claims.unsettled(target),
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


# One decoder for every line: ``json.loads(raw, parse_float=...)`` would build a new one each
# call. It is json.loads minus the BOM check, which json_lines keeps (see below).
_DECODER = json.JSONDecoder(parse_float=FloatLiteral)
TOO_DEEP = "not valid JSON (nested too deeply)"


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, object | InvalidInput]]:
    """(line number, parsed value or the reason it is not JSON); blank lines are skipped.

    Read files with ``errors="surrogateescape"``: a byte that is not UTF-8 then reaches this
    function as a lone surrogate and makes its own line a bad line, instead of ending the read.
    """
    decode = _DECODER.decode
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if not raw.isascii() and (bad := _not_utf8(raw)) is not None:
            yield number, bad
            continue
        try:
            if raw[0] == "\ufeff":  # json.loads's own message for a byte order mark
                yield number, json.loads(raw, parse_float=FloatLiteral)
            else:
                yield number, decode(raw)
        except json.JSONDecodeError as exc:
            yield number, InvalidInput(f"not valid JSON ({exc.msg} at column {exc.colno})")
        except ValueError as exc:  # e.g. a number too long to convert
            yield number, InvalidInput(f"not valid JSON ({exc})")
        except RecursionError:  # '[[[[...' deeper than the parser goes
            yield number, InvalidInput(TOO_DEEP)


def _not_utf8(raw: str) -> InvalidInput | None:
    """The reason a line read with surrogateescape held bytes that are not UTF-8, if it did."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(raw[exc.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "a lone surrogate"
        return InvalidInput(f"not valid UTF-8 ({what} at column {exc.start + 1})")
    return None


class _Event(NamedTuple):
    event_id: str
    org_key: str
    project_key: str
    metric: str
    quantity: Decimal
    ts: datetime


_EVENT_KEYS = frozenset({"id", "project", "metric", "quantity", "timestamp"})


def _parse_event(value: object) -> _Event:
    """One event; the common well-formed case skips the generic reader, with the same result.

    Anything the quick checks do not accept goes through ``_read_event``, which refuses it
    with its reason (or accepts it: the quick path is only ever narrower).
    """
    if type(value) is dict and value.keys() == _EVENT_KEYS:
        ref, event_id, metric = value["project"], value["id"], value["metric"]
        if (
            type(ref) is str
            and type(event_id) is str
            and type(metric) is str
            and len(ref) <= 130  # noqa: PLR2004 - the limits of _read_event
            and len(event_id) <= 128  # noqa: PLR2004
            and len(metric) <= 100  # noqa: PLR2004
            and ref.strip()
            and event_id.strip()
            and metric.strip()
            and unstorable(ref) is None
            and unstorable(event_id) is None
            and unstorable(metric) is None
        ):
            org_key, sep, project_key = ref.partition("/")
            if sep and org_key and project_key:
                # Checked in _read_event's order, with its paths: same refusals, same values.
                quantity = parse_decimal(
                    value["quantity"], path="quantity", max_decimals=QUANTITY_DECIMALS
                )
                ts = parse_timestamp(value["timestamp"], path="timestamp")
                return _Event(event_id, org_key, project_key, metric, quantity, ts)
    return _read_event(value)


def _read_event(value: object) -> _Event:
    o = Obj(value, "", allowed=set(_EVENT_KEYS), required=set(_EVENT_KEYS))
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

    Loaded a whole organization at a time (three queries), so an import touching thousands of
    projects and groups costs a handful of queries, not two per project or one per group.
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
            # The priced metrics of every group of the organization, in one query.
            for group_id, metric in self.s.execute(
                select(t.BillingGroup.id, t.MetricPriceRow.metric)
                .join(t.Organization, t.Organization.id == t.BillingGroup.organization_id)
                .outerjoin(
                    t.MetricPriceRow,
                    t.MetricPriceRow.price_list_id == t.BillingGroup.price_list_id,
                )
                .where(t.Organization.key == org_key)
            ):
                priced = self.metrics.setdefault(group_id, set())
                if metric is not None:
                    priced.add(metric)
        return {key: (pid, *history[pid]) for pid, key in rows}

    def project(self, org_key: str, project_key: str) -> tuple[int, list[datetime], list[int]]:
        projects = self.orgs.get(org_key)
        if projects is None:
            projects = self.orgs[org_key] = self._load(org_key)
        found = projects.get(project_key)
        if found is None:
            raise InvalidInput(
                f"no project {project_key!r} in organization {org_key!r}", path="project"
            )
        return found

    def _priced(self, group_id: int) -> set[str]:
        """A group's priced metrics, if its organization's load did not bring them."""
        priced = self.metrics[group_id] = set(
            self.s.scalars(
                select(t.MetricPriceRow.metric)
                .join(
                    t.BillingGroup,
                    t.BillingGroup.price_list_id == t.MetricPriceRow.price_list_id,
                )
                .where(t.BillingGroup.id == group_id)
            )
        )
        return priced

    def group_at(self, event: _Event) -> tuple[int, int]:
        project_id, starts, groups = self.project(event.org_key, event.project_key)
        if len(groups) == 1:  # never moved: the bisection below would pick it too
            group_id = groups[0]
        else:
            index = bisect.bisect_right(starts, event.ts) - 1
            group_id = groups[max(index, 0)]
        priced = self.metrics.get(group_id)
        if priced is None:
            priced = self._priced(group_id)
        if event.metric not in priced:
            known = ", ".join(sorted(priced))
            raise InvalidInput(
                f"metric {event.metric!r} is not priced for this project's "
                f"billing group (priced: {known})",
                path="metric",
            )
        return project_id, group_id


# A row of usage_events as imported: (event_id, project_id, billing_group_id, metric,
# quantity, ts), ts in UTC.
_Row = tuple[str, int, int, str, Decimal, datetime]


def import_usage(session: Session, items: Iterable[tuple[int, object]]) -> ImportReport:
    """Insert usage events; an id seen before is a duplicate, never counted twice.

    Events are validated here, in Python, and written in batches: on PostgreSQL streamed with
    COPY (``_CopyWriter``), on SQLite as one executemany. Either way the report is the same.
    """
    report = ImportReport()
    index = _ProjectIndex(session)
    pg = session.get_bind().dialect.name == "postgresql"
    flush = _CopyWriter(session) if pg else _ExecuteManyWriter(session)
    limit = PG_IMPORT_BATCH if pg else IMPORT_BATCH
    batch: list[_Row] = []
    seen_here: set[str] = set()
    rejected = report.rejected
    for number, value in items:
        try:
            if isinstance(value, InvalidInput):
                raise value
            event = _parse_event(value)
            project_id, group_id = index.group_at(event)
        except InvalidInput as exc:
            rejected.append((number, str(exc)))
            continue
        except RecursionError:  # a value too deep even to describe
            rejected.append((number, TOO_DEEP))
            continue
        event_id = event.event_id
        if event_id in seen_here:
            report.duplicates += 1
            continue
        seen_here.add(event_id)
        batch.append(
            (event_id, project_id, group_id, event.metric, event.quantity, event.ts.astimezone(UTC))
        )
        if len(batch) >= limit:
            _count(report, len(batch), flush(batch))
            batch = []
    if batch:
        _count(report, len(batch), flush(batch))
    return report


def _count(report: ImportReport, sent: int, inserted: int) -> None:
    report.accepted += inserted
    report.duplicates += sent - inserted  # ids stored before (by this import or an earlier one)


class _ExecuteManyWriter:
    """SQLite: insert a batch with one cached statement; the number of rows inserted."""

    def __init__(self, session: Session) -> None:
        self.connection = session.connection()
        # One cached single-row statement run as executemany: SQLAlchemy batches it into
        # multi-row INSERTs itself, where .values(batch) would compile a new statement each time.
        self.stmt = (
            dialect_insert(session, t.UsageEvent)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(t.UsageEvent.id)
        )

    def __call__(self, batch: list[_Row]) -> int:
        rows = [
            {
                "event_id": event_id,
                "project_id": project_id,
                "billing_group_id": group_id,
                "metric": metric,
                "quantity": quantity,
                "ts": ts,
            }
            for event_id, project_id, group_id, metric, quantity, ts in batch
        ]
        return len(self.connection.execute(self.stmt, rows).all())


_STAGE = "usage_import_stage"
_COLUMNS = "event_id, project_id, billing_group_id, metric, quantity, ts"
_STAGE_DDL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (n integer, event_id text, "
    "project_id bigint, billing_group_id bigint, metric text, quantity numeric, ts timestamptz) "
    "ON COMMIT DROP"
)
_COPY_DIRECT = f"COPY usage_events ({_COLUMNS}) FROM STDIN"
_COPY_STAGE = f"COPY {_STAGE} (n, {_COLUMNS}) FROM STDIN"
_STORED = text("SELECT event_id FROM usage_events WHERE event_id = ANY(:ids)")
# Rows move in file order (n), so ids follow the file as they did row by row. An id already
# stored, or being stored by a concurrent import, is skipped: ON CONFLICT waits for that other
# transaction and counts the row as a duplicate if it commits.
_MOVE = text(
    f"WITH inserted AS (INSERT INTO usage_events ({_COLUMNS}) "  # noqa: S608 - constants only
    f"SELECT {_COLUMNS} FROM {_STAGE} ORDER BY n "
    "ON CONFLICT (event_id) DO NOTHING RETURNING 1) "
    "SELECT count(*) FROM inserted"
)
_EMPTY = text(f"TRUNCATE {_STAGE}")
UNIQUE_VIOLATION = "23505"


class _CopyWriter:
    """PostgreSQL: COPY a batch straight into usage_events, leaving out the ids stored before.

    An id stored between that look-up and the COPY (a concurrent import) makes the COPY fail
    as a whole; the batch then goes again, by a temporary table and INSERT .. ON CONFLICT DO
    NOTHING, which waits for the other import and skips what it stored. Either way each id is
    inserted once and every row the batch did not insert is a duplicate.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.connection = session.connection()
        self.staged = False

    def _stored(self, ids: list[str]) -> set[str]:
        return set(self.connection.execute(_STORED, {"ids": ids}).scalars())

    def __call__(self, batch: list[_Row]) -> int:
        stored = self._stored([row[0] for row in batch])
        fresh = [row for row in batch if row[0] not in stored] if stored else batch
        if not fresh:
            return 0
        # Closes of these groups wait for this import to commit (see billing_core.claims).
        claims.share_gates(self.session, {row[2] for row in fresh})
        savepoint = self.connection.begin_nested()
        try:
            self._copy(_COPY_DIRECT, fresh)
        except DBAPIError as exc:
            savepoint.rollback()
            if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            return self._through_stage(fresh)
        savepoint.commit()
        return len(fresh)

    def _through_stage(self, batch: list[_Row]) -> int:
        if not self.staged:
            self.connection.exec_driver_sql(_STAGE_DDL)
            self.staged = True
        self.connection.execute(_EMPTY)
        self._copy(_COPY_STAGE, [(n, *row) for n, row in enumerate(batch)])
        return int(self.connection.execute(_MOVE).scalar_one())

    def _copy(self, statement: str, rows: list[Any]) -> None:
        copy_rows(self.connection, statement, rows)


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
