"""``run-billing``'s fast path: many (group, period) closes per transaction, set-based.

``issuing.close_period`` closes one period of one group in about thirty round trips. Here a
batch of periods (distinct groups, in the run's order) closes in one transaction with a fixed
number of statements: lock the groups and their usage gates, load their contexts, insert the
closes with the watermark, sum the usage they settle in one statement (nothing is written on
the events: ``billing_core.claims``), take a block of invoice numbers, insert the invoices and
their rows in bulk. The pricing itself is ``issuing``'s (``current_lines``, ``totals_for``), so a
batch issues exactly the invoices the one-by-one path would, numbered in the same order.

Guarantees kept from the one-by-one path:

- the groups are locked (FOR NO KEY UPDATE) before anything is read, and a period that another
  run closed meanwhile is skipped; the unique keys on closes and invoices stay the last guard;
- a close holds its group's usage gate, so an import into the group either committed before
  (and is billed now) or waits and takes ids above the watermark (billed next period): never
  twice or never;
- numbers come from the counter row, locked until commit: gapless, in the run's order;
- a batch commits whole or not at all, and the next run continues where it stopped.

A run waits on a lock only for the first group of a batch, holding nothing else; the other
groups (and gates) are taken with SKIP LOCKED and the batch ends before the first one that is
busy (it
comes first in the next batch and is waited for then). So overlapping runs cannot deadlock,
and a run never gets ahead of a group another writer holds. Batches start at one period and
double up to ``BATCH_SIZE``: a run that dies early, or competes with another, loses or waits
for little, and a full run pays for a few small batches only.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    BigInteger,
    and_,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from billing_core import claims, issuing
from billing_core.db import tables as t
from billing_core.db.engine import Database, among, copy_rows, dialect_insert
from billing_core.db.types import UTCDateTime, dec_max, dec_sum
from billing_core.errors import BillingError
from billing_core.export import checksum, invoice_document
from billing_core.ledger import lock_group
from billing_core.model import ActiveRedemption, AvailableCredit, Totals
from billing_core.periods import Period, Schedule, local_date, zone
from billing_core.rating import Line, MetricPrice

BATCH_SIZE = 500  # periods per transaction, once the run is under way

Outcome = issuing.Closed | BillingError | None


def close_due(
    db: Database,
    due: Sequence[tuple[int, Period]],
    *,
    at: datetime,
    prefix: str,
    overlap: bool | None = None,
) -> Iterator[tuple[int, Outcome]]:
    """Close ``due`` in its order, batch by batch; yields each period's outcome once committed.

    The outcome is the ``Closed`` period, None when another run had closed it, or the
    ``BillingError`` that stopped its group (the group's later periods are then skipped, and
    the other groups go on, as they always did).

    With ``overlap`` (the default on PostgreSQL) the next batch is read and priced in a second
    transaction while the one before it writes and commits (``_Pipeline``); numbers, commits
    and outcomes keep the run's order. SQLite has one writer: its batches run one at a time.
    """
    if overlap is None:
        overlap = db.dialect == "postgresql"
    if overlap:
        yield from _Pipeline(db, due, at=at, prefix=prefix).run()
        return
    broken: set[int] = set()
    position, size = 0, 1
    while position < len(due):
        picked, end = _pick(due, position, size, broken, busy=set())
        if not picked:
            position = end
            continue
        items = [due[i] for i in picked]
        try:
            with db.transaction() as session:
                handled, closed = close_batch(session, items, at=at, prefix=prefix)
        except BillingError:
            yield from _one_by_one(db, items, broken, at=at, prefix=prefix)
            position = end
            continue
        for (group_id, _), outcome in zip(items[:handled], closed, strict=True):
            yield group_id, outcome
        position = end if handled == len(items) else picked[handled]
        size = min(size * 2, BATCH_SIZE)


def _pick(
    due: Sequence[tuple[int, Period]], position: int, size: int, broken: set[int], busy: set[int]
) -> tuple[list[int], int]:
    """The next batch from ``position``: up to ``size`` indices into ``due`` of distinct groups,
    skipping broken groups, ending before a group met again or ``busy`` (held by a batch still
    in flight): a group's next period waits for the batch holding its previous one. Returns the
    indices and the position after them."""
    picked: list[int] = []
    seen: set[int] = set()
    end = position
    while end < len(due) and len(picked) < size:
        group_id = due[end][0]
        if group_id in seen or group_id in busy:
            break
        if group_id not in broken:
            picked.append(end)
            seen.add(group_id)
        end += 1
    return picked, end


def _one_by_one(
    db: Database,
    items: Sequence[tuple[int, Period]],
    broken: set[int],
    *,
    at: datetime,
    prefix: str,
) -> Iterator[tuple[int, Outcome]]:
    """A batch that one group's data refused, redone period by period, so the others still
    close and the refusal names its group."""
    for group_id, period in items:
        if group_id in broken:
            continue
        try:
            with db.transaction() as session:
                one = issuing.close_period(
                    session, group_id=group_id, period=period, at=at, prefix=prefix
                )
        except BillingError as exc:
            broken.add(group_id)
            yield group_id, exc
            continue
        yield group_id, one


class Turn:
    """A batch's place in the run: ``close_batch`` reports what it holds once it has locked
    (``locked``), and waits for the batch before it to be done before it takes numbers and
    commits (``wait``). The sequential path's turn never waits."""

    def locked(self, handled: int) -> None:
        """The batch holds its first ``handled`` items."""

    def wait(self) -> None:
        """Return when this batch may number its invoices and commit."""


class _Aborted(Exception):
    """The run stopped before this batch's turn: its transaction rolls back."""


class _PipelineTurn(Turn):
    def __init__(self, previous: threading.Event | None, abort: threading.Event) -> None:
        self.previous = previous
        self.abort = abort
        self.handled: int | None = None  # None: failed before it knew
        self.known = threading.Event()
        self.done = threading.Event()  # set by the run once this batch is committed and told

    def locked(self, handled: int) -> None:
        self.handled = handled
        self.known.set()

    def wait(self) -> None:
        if self.previous is not None:
            self.previous.wait()
        if self.abort.is_set():
            raise _Aborted


@dataclass
class _Flight:
    picked: list[int]
    items: list[tuple[int, Period]]
    turn: _PipelineTurn
    job: Future[tuple[int, list[issuing.Closed | None]]]


class _Pipeline:
    """Two batches in flight, each in its own transaction on its own connection: while batch
    N copies its invoices in and commits (PostgreSQL's work, the interpreter idle), batch N+1
    locks its groups, sums their usage and prices them (the interpreter's work).

    The run's order holds: N+1 is planned only once N holds all its items (otherwise the ones
    it could not take start the batch after it, as one at a time), never holds a group N holds,
    and waits for N to be committed (or redone one by one) before it numbers and commits. So
    numbers, commits and the outcomes yielded are in the order of a run of one batch at a time,
    and a run that stops leaves whole batches, each before all the ones not committed. An
    error other than a group's ``BillingError`` stops the run: the batch still in flight rolls
    back, and the error is raised.
    """

    DEPTH = 2

    def __init__(
        self, db: Database, due: Sequence[tuple[int, Period]], *, at: datetime, prefix: str
    ) -> None:
        self.db, self.due, self.at, self.prefix = db, due, at, prefix
        self.abort = threading.Event()

    def _batch(
        self, items: list[tuple[int, Period]], turn: _PipelineTurn
    ) -> tuple[int, list[issuing.Closed | None]]:
        try:
            with self.db.transaction() as session:
                return close_batch(session, items, at=self.at, prefix=self.prefix, turn=turn)
        finally:
            turn.known.set()  # also when it failed before locking: the run must not wait on it

    def run(self) -> Iterator[tuple[int, Outcome]]:
        due = self.due
        broken: set[int] = set()
        flights: deque[_Flight] = deque()
        turns: list[_PipelineTurn] = []
        position, size = 0, 1
        pool = ThreadPoolExecutor(max_workers=self.DEPTH, thread_name_prefix="run-billing")
        try:
            while position < len(due) or flights:
                if position < len(due) and len(flights) < self.DEPTH:
                    last = flights[-1] if flights else None
                    if last is not None:
                        last.turn.known.wait()
                    if last is None or last.turn.handled == len(last.items):
                        busy = {g for f in flights for g, _ in f.items}
                        picked, end = _pick(due, position, size, broken, busy)
                        if end > position:  # else the next period's group is still in flight
                            position = end
                            if picked:
                                items = [due[i] for i in picked]
                                previous = last.turn.done if last else None
                                turn = _PipelineTurn(previous, self.abort)
                                turns.append(turn)
                                job = pool.submit(self._batch, items, turn)
                                flights.append(_Flight(picked, items, turn, job))
                                size = min(size * 2, BATCH_SIZE)
                            continue
                flight = flights.popleft()  # there is one: planning stopped only for it
                try:
                    handled, closed = flight.job.result()
                except BillingError:
                    yield from _one_by_one(
                        self.db, flight.items, broken, at=self.at, prefix=self.prefix
                    )
                    flight.turn.done.set()
                    continue
                flight.turn.done.set()
                for (group_id, _), outcome in zip(flight.items[:handled], closed, strict=True):
                    yield group_id, outcome
                if handled < len(flight.items):  # nothing was planned after it
                    position = flight.picked[handled]
        finally:
            self.abort.set()  # first: a batch woken below must see it and roll back
            for turn in turns:
                turn.done.set()
            pool.shutdown(wait=True)


# Named tuples, not frozen dataclasses (one setattr call per field): a run builds one per
# project share and line, 150,000 at a quarter of the benchmark's scale, only to read them once.
class _ProjectDoc(NamedTuple):
    project_key: str
    quantity: Decimal
    amount: Decimal


class _LineDoc(NamedTuple):
    kind: str
    metric: str | None
    category: str
    quantity: Decimal
    billable_quantity: Decimal
    amount: Decimal
    late_period_start: datetime | None
    projects: tuple[_ProjectDoc, ...]


class _InvoiceDoc(NamedTuple):
    """What ``export.invoice_document`` reads of an invoice, before it has a row."""

    number: str
    currency: str
    period_start: datetime
    period_end: datetime
    invoice_date: date
    due_date: date
    status: str
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    total: Decimal
    credits_applied: Decimal
    amount_due: Decimal
    amount_paid: Decimal
    lines: tuple[_LineDoc, ...]


@dataclass
class _Issue:
    """One invoice to write: its period, lines and totals, and later its number."""

    ctx: issuing.GroupContext
    period: Period
    close_id: int
    lines: list[Line]
    totals: Totals
    redemptions: list[tuple[ActiveRedemption, str]]
    credits: list[AvailableCredit]
    invoice_date: date
    number: str = ""


def close_batch(
    session: Session,
    items: Sequence[tuple[int, Period]],
    *,
    at: datetime,
    prefix: str,
    turn: Turn | None = None,
) -> tuple[int, list[issuing.Closed | None]]:
    """Close a prefix of ``items`` (distinct groups, in run order) in the caller's transaction.

    Returns how many items it dealt with (at least one: it waits for the first group) and, for
    each of them, the ``Closed`` period or None when it was closed already. ``turn`` is told
    what the batch holds, and waited for before numbers are taken (see ``_Pipeline``).
    """
    turn = turn or Turn()
    groups = _lock(session, items)
    handled = next((i for i, (g, _) in enumerate(items) if g not in groups), len(items))
    turn.locked(handled)
    items = items[:handled]
    marks = claims.marks(session, list(groups))
    todo = [
        (g, p) for g, p in items if p.start == (marks[g].end or groups[g].created_at)
    ]  # the others were closed by another run (or an earlier period is still open)
    outcomes: dict[int, issuing.Closed | None] = {}
    issues: list[_Issue] = []
    if todo:
        outcomes, issues = _close(session, todo, groups, marks, at=at)
    turn.wait()
    if issues:
        _number(session, issues, prefix)
        _store(session, issues, at)
        for issue in issues:
            outcomes[issue.ctx.group.id] = issuing.Closed(
                issue.ctx.group.id, issue.period, issue.number
            )
    return handled, [outcomes.get(g) for g, _ in items]


def _lock(session: Session, items: Sequence[tuple[int, Period]]) -> dict[int, t.BillingGroup]:
    """Lock the first item's group and usage gate (waiting), then whichever of the others are
    free: a group another writer holds, or whose usage an import is writing, waits for the
    next batch."""
    first = lock_group(session, items[0][0])
    claims.take_gate(session, first.id)
    groups = {first.id: first}
    others = [g for g, _ in items[1:]]
    if others:
        for group in session.scalars(
            select(t.BillingGroup)
            .where(among(t.BillingGroup.id, others))
            .order_by(t.BillingGroup.id)
            .with_for_update(key_share=True, skip_locked=True)
        ):
            groups[group.id] = group
        gated = claims.take_gates(session, [g for g in groups if g != first.id], wait=False)
        groups = {g: group for g, group in groups.items() if g == first.id or g in gated}
    return groups


def _contexts(
    session: Session, groups: Sequence[t.BillingGroup]
) -> dict[int, issuing.GroupContext]:
    """``issuing.group_context`` for many groups, in three queries."""
    orgs = {
        o.id: o
        for o in session.scalars(
            select(t.Organization).where(
                among(t.Organization.id, {g.organization_id for g in groups})
            )
        )
    }
    plan_ids = {g.plan_id for g in groups if g.plan_id}
    plans = (
        {p.id: p for p in session.scalars(select(t.Plan).where(among(t.Plan.id, plan_ids)))}
        if plan_ids
        else {}
    )
    prices: dict[int, dict[str, MetricPrice]] = defaultdict(dict)
    for row in session.scalars(
        select(t.MetricPriceRow)
        .where(among(t.MetricPriceRow.price_list_id, {g.price_list_id for g in groups}))
        .order_by(t.MetricPriceRow.id)
    ):
        prices[row.price_list_id][row.metric] = issuing.metric_price(row)
    project_keys: dict[int, str] = {}  # shared: filled once for the whole batch
    contexts = {}
    for group in groups:
        org = orgs[group.organization_id]
        tz = zone(org.timezone)
        plan = plans[group.plan_id] if group.plan_id else None
        contexts[group.id] = issuing.GroupContext(
            group=group,
            org=org,
            tz=tz,
            schedule=Schedule(tz, group.created_at, group.subscription_start if plan else None),
            prices=prices[group.price_list_id],
            plan=plan,
            project_keys=project_keys,
        )
    return contexts


# (group, metric, project, sum, max, early) of the events a close settles; early: some of
# them are stamped before the previous close's end (late usage of an invoiced period).
Settled = list[tuple[int, str, int, Decimal, Decimal, bool]]


def _settle(
    session: Session, todo: list[tuple[int, Period]], marks: dict[int, claims.Mark], upto: int
) -> Settled:
    """Sum up, per group, the events its close settles: up to the watermark ``upto`` and
    before its period's end, and not settled by its previous close (``claims.settled_by``).

    On PostgreSQL one statement for the batch (``_SETTLE``); SQLite sums group by group."""
    # Only whether a sum holds events from before the previous close's end is read, not when
    # the earliest was: at full scale 400,000 timestamps with time zones a run need not parse.
    ev = t.UsageEvent
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            _SETTLE,
            {
                "gids": [g for g, _ in todo],
                "pends": [p.end for _, p in todo],
                "prev_uptos": [marks[g].upto or 0 for g, _ in todo],
                "prev_ends": [marks[g].end or p.start for g, p in todo],
                "upto": upto,
            },
        ).all()
        return cast(Settled, rows)  # Rows unpack like the tuples they are read as
    keys = (ev.billing_group_id, ev.metric, ev.project_id)
    sums = (*keys, dec_sum(ev.quantity), dec_max(ev.quantity), func.min(ev.ts))
    settled: Settled = []
    for g, p in todo:
        previous_end = marks[g].end or p.start
        for group_id, metric, project_id, total, peak, first in session.execute(
            select(*sums)
            .where(claims.settled_by(g, marks[g], claims.Mark(upto, p.end)))
            .group_by(*keys)
        ):
            settled.append((group_id, metric, project_id, total, peak, first < previous_end))
    return settled


# claims.settled_by for many groups, split where an index serves each half: the events since
# the previous close's end by (group, ts), whose index carries every column read here, so a
# vacuumed table answers from the index alone; those before it that came after the previous
# close (late usage, rare) by (group, id). Group ids, period ends, previous watermarks and
# ends come as arrays, so the statement is the same text for every batch.
_SETTLE = text(
    """
WITH bounds AS (
    SELECT * FROM unnest(
        CAST(:gids AS integer[]), CAST(:pends AS timestamptz[]),
        CAST(:prev_uptos AS bigint[]), CAST(:prev_ends AS timestamptz[])
    ) AS b (gid, pend, prev_upto, prev_end)
), settled AS (
    SELECT e.billing_group_id, e.metric, e.project_id, e.quantity, false AS early
    FROM bounds b JOIN usage_events e
        ON e.billing_group_id = b.gid AND e.ts >= b.prev_end AND e.ts < b.pend
    WHERE e.id <= :upto AND e.close_id IS NULL
    UNION ALL
    SELECT e.billing_group_id, e.metric, e.project_id, e.quantity, true AS early
    FROM bounds b JOIN usage_events e
        ON e.billing_group_id = b.gid AND e.id > b.prev_upto AND e.id <= :upto
    WHERE e.ts < b.prev_end AND e.close_id IS NULL
)
SELECT billing_group_id, metric, project_id, sum(quantity), max(quantity), bool_or(early)
FROM settled GROUP BY billing_group_id, metric, project_id
"""
)


def _close(
    session: Session,
    todo: list[tuple[int, Period]],
    groups: dict[int, t.BillingGroup],
    marks: dict[int, claims.Mark],
    *,
    at: datetime,
) -> tuple[dict[int, issuing.Closed | None], list[_Issue]]:
    """Insert the closes of ``todo``, settle and price their usage: the outcomes of the periods
    with nothing to charge, and the invoices to number and store for the others."""
    contexts = _contexts(session, [groups[g] for g, _ in todo])
    upto = claims.watermark(session)  # every gate is held: no lower id can appear any more
    close_ids = _insert_closes(session, todo, at=at, upto=upto)
    outcomes: dict[int, issuing.Closed | None] = {}
    todo = [(g, p) for g, p in todo if g in close_ids]  # a conflict: closed meanwhile
    if not todo:
        return outcomes, []
    claimed = _settle(session, todo, marks, upto)
    current: dict[int, issuing.Aggregates] = defaultdict(lambda: defaultdict(dict))
    late: set[int] = set()
    # A group's first period takes everything stamped before it: nothing there is late. Read
    # once per group rather than through the ORM once per (metric, project).
    first = {g for g, p in todo if p.start == contexts[g].group.created_at}
    for g, metric, project_id, total, peak, early in claimed:
        if early and g not in first:
            late.add(g)  # usage of closed periods: re-rated one group at a time (rare)
            continue
        price = issuing.price_of(contexts[g], metric)
        current[g][metric][project_id] = peak if price.aggregation == "max" else total
    missing = {p for g, _, p, _, _, _ in claimed if g not in late}
    if missing:
        keys = next(iter(contexts.values())).project_keys
        keys.update(
            (pid, key)
            for pid, key in session.execute(
                select(t.Project.id, t.Project.key).where(among(t.Project.id, missing))
            )
        )

    issues: list[_Issue] = []
    pending: list[tuple[int, Period, list[Line]]] = []
    for g, period in todo:
        ctx = contexts[g]
        if g in late:
            lines = issuing.rate_period(
                session,
                ctx,
                period,
                new=claims.settled_by(g, marks[g], claims.Mark(upto, period.end)),
                settled=and_(t.UsageEvent.billing_group_id == g, claims.settled(marks[g])),
            )
        else:
            lines = issuing.current_lines(session, ctx, period, current.get(g, {}))
        if not any(line.amount.amount > 0 for line in lines):
            outcomes[g] = issuing.Closed(g, period, None)
            continue
        pending.append((g, period, lines))
    if pending:
        charged = [g for g, _, _ in pending]
        redemptions = issuing.active_redemptions_of(session, charged)
        credits = issuing.available_credits_of(session, {g: groups[g].currency for g in charged})
        for g, period, lines in pending:
            ctx = contexts[g]
            totals, applied = issuing.totals_for(
                ctx, period, lines, redemptions.get(g, []), credits.get(g, [])
            )
            issues.append(
                _Issue(
                    ctx=ctx,
                    period=period,
                    close_id=close_ids[g],
                    lines=lines,
                    totals=totals,
                    redemptions=applied,
                    credits=credits.get(g, []),
                    invoice_date=local_date(period.end, ctx.tz),
                )
            )
    return outcomes, issues


def _insert_closes(
    session: Session, todo: list[tuple[int, Period]], *, at: datetime, upto: int
) -> dict[int, int]:
    """Insert the closes of ``todo`` with the watermark ``upto``, ids in ``todo``'s order;
    group -> close id, without the periods another run closed meanwhile (the unique key)."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            _CLOSES,
            {
                "gids": [g for g, _ in todo],
                "starts": [p.start for _, p in todo],
                "ends": [p.end for _, p in todo],
                "at": at,
                "upto": upto,
            },
        )
    else:
        rows = session.connection().execute(
            dialect_insert(session, t.PeriodClose)
            .on_conflict_do_nothing(index_elements=["billing_group_id", "period_start"])
            .returning(t.PeriodClose.id, t.PeriodClose.billing_group_id),
            [
                {
                    "billing_group_id": g,
                    "period_start": p.start,
                    "period_end": p.end,
                    "closed_at": at,
                    "usage_upto": upto,
                }
                for g, p in todo
            ],
        )
    return {g: close_id for close_id, g in rows}


# The closes of a batch as arrays: one short statement of the same text for every batch,
# where a VALUES row per close cost SQLAlchemy and psycopg ~100k instructions a close to
# build and parse. Ordered by position, so the ids follow the run's order as before.
_CLOSES = text(
    """
INSERT INTO period_closes (billing_group_id, period_start, period_end, closed_at, usage_upto)
SELECT c.gid, c.pstart, c.pend, :at, :upto
FROM unnest(
    CAST(:gids AS integer[]), CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[])
) WITH ORDINALITY AS c (gid, pstart, pend, position)
ORDER BY c.position
ON CONFLICT (billing_group_id, period_start) DO NOTHING
RETURNING id, billing_group_id
"""
).bindparams(bindparam("at", type_=UTCDateTime()), bindparam("upto", type_=BigInteger()))


def _number(session: Session, issues: list[_Issue], prefix: str) -> None:
    """Give ``issues`` the next numbers of their years, in order, a block per year.

    The counter rows stay locked until commit, as ``ledger.next_in_sequence`` leaves them; the
    years are taken in ascending order so two batches spanning the same years cannot deadlock.
    """
    per_year = Counter(issue.invoice_date.year for issue in issues)
    next_of: dict[int, int] = {}
    for year in sorted(per_year):
        session.execute(
            dialect_insert(session, t.Counter)
            .values(name="invoice", year=year, value=0)
            .on_conflict_do_nothing(index_elements=["name", "year"])
        )
        last = session.execute(
            update(t.Counter)
            .where(t.Counter.name == "invoice", t.Counter.year == year)
            .values(value=t.Counter.value + per_year[year])
            .returning(t.Counter.value)
        ).scalar_one()
        next_of[year] = int(last) - per_year[year] + 1
    for issue in issues:
        year = issue.invoice_date.year
        issue.number = f"{prefix}-{year}-{next_of[year]:06d}"
        next_of[year] += 1


def _store(session: Session, issues: list[_Issue], at: datetime) -> None:
    """Insert the invoices, their lines, project shares, discounts and credit uses in bulk."""
    conn = session.connection()
    invoice_rows = []
    for issue in issues:
        ctx, period, totals = issue.ctx, issue.period, issue.totals
        group = ctx.group
        row: dict[str, Any] = {
            "number": issue.number,
            "organization_id": ctx.org.id,
            "billing_group_id": group.id,
            "close_id": issue.close_id,
            "currency": group.currency,
            "period_start": period.start,
            "period_end": period.end,
            "invoice_date": issue.invoice_date,
            "due_date": issue.invoice_date + timedelta(days=group.payment_terms_days),
            "subtotal": totals.subtotal.amount,
            "discount": totals.discount.amount,
            "tax_rate": group.tax_rate,
            "tax": totals.tax.amount,
            "total": totals.total.amount,
            "credits_applied": totals.credits_applied.amount,
            "amount_due": totals.amount_due.amount,
            "amount_paid": Decimal(0),
            "status": "paid" if totals.amount_due.is_zero() else "open",
            "issued_at": at,
        }
        row["checksum"] = checksum(
            invoice_document(
                cast(t.Invoice, _document(row, issue.lines)),
                organization=ctx.org.key,
                group=group.key,
                tz=ctx.tz,
            )
        )
        invoice_rows.append(row)
    invoice_of = {
        row["close_id"]: invoice_id
        for row, invoice_id in zip(
            invoice_rows, _insert(conn, t.Invoice, invoice_rows), strict=True
        )
    }
    line_rows = [
        {
            "invoice_id": invoice_of[issue.close_id],
            "position": position,
            "kind": line.kind,
            "metric": line.metric,
            "category": line.category,
            "quantity": line.quantity,
            "billable_quantity": line.billable_quantity,
            "amount": line.amount.amount,
            "late_period_start": line.late_period.start if line.late_period else None,
            "late_period_end": line.late_period.end if line.late_period else None,
        }
        for issue in issues
        for position, line in enumerate(issue.lines)
    ]
    line_of = {
        (row["invoice_id"], row["position"]): line_id
        for row, line_id in zip(line_rows, _insert(conn, t.InvoiceLine, line_rows), strict=True)
    }
    share_rows = [
        {
            "line_id": line_of[invoice_of[issue.close_id], position],
            "project_key": share.project,
            "quantity": share.quantity,
            "amount": share.amount.amount,
        }
        for issue in issues
        for position, line in enumerate(issue.lines)
        for share in line.projects  # in order: their ids keep the document's order
    ]
    if share_rows:
        _insert(conn, t.InvoiceLineProject, share_rows, ids=False)
    discounts, used_coupons, applications, remaining = [], [], [], []
    for issue in issues:
        invoice_id = invoice_of[issue.close_id]
        codes = {r.id: code for r, code in issue.redemptions}
        for redemption_id, cut in issue.totals.discounts:
            if cut.amount > 0:
                discounts.append(
                    {
                        "invoice_id": invoice_id,
                        "redemption_id": redemption_id,
                        "code": codes[redemption_id],
                        "amount": cut.amount,
                    }
                )
                used_coupons.append({"rid": redemption_id})
        left = {c.id: c.remaining.amount for c in issue.credits}
        for credit_id, used in issue.totals.credits:
            applications.append(
                {"invoice_id": invoice_id, "credit_id": credit_id, "amount": used.amount}
            )
            # In Python, not SQL: SQLite would subtract the stored decimal text as floats.
            remaining.append({"cid": credit_id, "left": left[credit_id] - used.amount})
    if discounts:
        conn.execute(insert(t.InvoiceDiscount), discounts)
        conn.execute(
            update(t.Redemption)
            .where(t.Redemption.id == bindparam("rid"))
            .values(uses=t.Redemption.uses + 1),
            used_coupons,
        )
    if applications:
        conn.execute(insert(t.CreditApplication), applications)
        conn.execute(
            update(t.Credit)
            .where(t.Credit.id == bindparam("cid"))
            .values(remaining=bindparam("left", type_=t.Credit.remaining.type)),
            remaining,
        )


def _insert(
    conn: Connection, table: type[t.Base], rows: list[dict[str, Any]], *, ids: bool = True
) -> list[int]:
    """Insert ``rows`` (dicts with the same keys) and return their ids, in order.

    PostgreSQL: the ids are taken from the table's sequence first, in ascending order, and the
    rows go by COPY (a hundredth of the client time of an INSERT .. RETURNING per row); without
    ``ids`` the sequence numbers them in COPY order. SQLite: one executemany with RETURNING.
    """
    if not rows:
        return []
    columns = list(rows[0])
    name = table.__tablename__
    if conn.dialect.name != "postgresql":
        if not ids:
            conn.execute(insert(table), rows)
            return []
        returned = conn.execute(
            insert(table).returning(table.id, sort_by_parameter_order=True),  # type: ignore[attr-defined]
            rows,
        )
        return list(returned.scalars())
    allocated: list[int] = []
    if ids:
        sequence = text(
            "SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"
        )
        allocated = sorted(conn.execute(sequence, {"t": name, "n": len(rows)}).scalars())
    copy_rows(
        conn,
        f"COPY {name} ({', '.join(['id', *columns] if ids else columns)}) FROM STDIN",
        _cells(conn, table, columns, rows, allocated),
    )
    return allocated


def _cells(
    conn: Connection,
    table: type[t.Base],
    columns: list[str],
    rows: list[dict[str, Any]],
    ids: list[int],
) -> Iterator[list[Any]]:
    """The COPY rows: ``ids`` (when given) then ``columns`` of each of ``rows``."""
    # Datetimes bound as UTCDateTime binds them (aware only, in UTC): COPY skips SQLAlchemy.
    bind, dialect = UTCDateTime().process_bind_param, conn.dialect
    utc = {c.name for c in table.__table__.columns if isinstance(c.type, UTCDateTime)}
    shift = 1 if ids else 0
    at_utc = [shift + i for i, c in enumerate(columns) if c in utc]
    # One C call per row instead of a generator step and a set lookup per cell: tens of
    # thousands of cells a batch.
    take = itemgetter(*columns)
    single = len(columns) == 1
    for position, row in enumerate(rows):
        picked = take(row)
        cells = [picked] if single else list(picked)
        if ids:
            cells.insert(0, ids[position])
        for i in at_utc:
            cells[i] = bind(cells[i], dialect)
        yield cells


def _document(row: dict[str, Any], lines: Sequence[Line]) -> _InvoiceDoc:
    return _InvoiceDoc(
        number=row["number"],
        currency=row["currency"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        invoice_date=row["invoice_date"],
        due_date=row["due_date"],
        status=row["status"],
        subtotal=row["subtotal"],
        discount=row["discount"],
        tax=row["tax"],
        total=row["total"],
        credits_applied=row["credits_applied"],
        amount_due=row["amount_due"],
        amount_paid=row["amount_paid"],
        lines=tuple(
            _LineDoc(
                kind=line.kind,
                metric=line.metric,
                category=line.category,
                quantity=line.quantity,
                billable_quantity=line.billable_quantity,
                amount=line.amount.amount,
                late_period_start=line.late_period.start if line.late_period else None,
                projects=tuple(
                    _ProjectDoc(share.project, share.quantity, share.amount.amount)
                    for share in line.projects
                ),
            )
            for line in lines
        ),
    )
