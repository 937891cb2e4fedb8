"""Which usage events a close settles, by watermark instead of a mark on every event.

A close of a group's period records ``usage_upto``, the highest usage event id at that moment,
and settles the group's events with ``id <= usage_upto`` and ``ts < period_end`` that earlier
closes had not. A group's closes come one after another with growing ends and growing
watermarks, so their corners are nested: what the closes of a group have settled so far is the
last close's corner, a ``Mark``. Nothing is written on the events, so closing a period costs
reading its events, not rewriting them.

That is exact only if no event of the group can appear later with an id below the watermark.
Ids come from a sequence, handed out in the order they are asked for; what could break it is
an import that took ids before the close and commits after it. So imports hold their groups'
``usage_gates`` rows FOR SHARE while they write (``share_gates``) and a close holds its group's
FOR UPDATE (``take_gate``): a close waits for the imports in flight into its group, and an
import into a group being closed waits for the close, then takes ids above its watermark.
SQLite has one writer at a time, which gives the same order without the rows being locked.

Closes made before this design (migration 0004) have no watermark; the events they claimed
carry their id in ``usage_events.close_id``, and count as settled whatever the marks say.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session

from billing_core.db import tables as t
from billing_core.db.engine import among, dialect_insert, ids_param

ev = t.UsageEvent


@dataclass(frozen=True, slots=True)
class Mark:
    """What a group's closes had settled after one of them: events with ``id <= upto`` and
    ``ts < end``. ``upto`` None: no close yet, or only closes older than the watermarks."""

    upto: int | None = None
    end: datetime | None = None


NOTHING = Mark()


def _corner(mark: Mark) -> ColumnElement[bool]:
    if mark.upto is None or mark.end is None:
        return false()
    return and_(ev.id <= mark.upto, ev.ts < mark.end)


def settled(mark: Mark) -> ColumnElement[bool]:
    """Events settled by the closes up to ``mark`` (their group is the caller's condition)."""
    return or_(ev.close_id.is_not(None), _corner(mark))


def unsettled(mark: Mark) -> ColumnElement[bool]:
    """Events no close up to ``mark`` settled, written so an index on id or ts can serve it."""
    if mark.upto is None or mark.end is None:
        return ev.close_id.is_(None)
    return and_(ev.close_id.is_(None), or_(ev.id > mark.upto, ev.ts >= mark.end))


def settled_by(group_id: int, before: Mark, mark: Mark) -> ColumnElement[bool]:
    """The events of ``group_id`` that its close at ``mark`` settled, after one at ``before``."""
    return and_(ev.billing_group_id == group_id, _corner(mark), unsettled(before))


def legacy_settled_by(group_id: int, close_id: int) -> ColumnElement[bool]:
    """The events a close made before migration 0004 claimed."""
    return and_(ev.billing_group_id == group_id, ev.close_id == close_id)


_LAST = (
    select(
        t.PeriodClose.billing_group_id.label("g"),
        func.max(t.PeriodClose.period_end).label("end"),
    )
    .where(t.PeriodClose.billing_group_id.in_(ids_param("groups")))
    .group_by(t.PeriodClose.billing_group_id)
    .subquery()
)
# Each group's last close; built once, the ids bound at execution.
_MARKS = (
    select(t.PeriodClose.billing_group_id, t.PeriodClose.usage_upto, t.PeriodClose.period_end)
    .join(
        _LAST,
        and_(t.PeriodClose.billing_group_id == _LAST.c.g, t.PeriodClose.period_end == _LAST.c.end),
    )
    # Said again of the outer side: the planner does not carry it through the join, and
    # without it hashes every close of every group (a scan growing with the history).
    .where(t.PeriodClose.billing_group_id.in_(ids_param("groups")))
)


def marks(session: Session, group_ids: Collection[int]) -> dict[int, Mark]:
    """Each group's last close as a ``Mark`` (NOTHING when it has none), in one query."""
    if not group_ids:
        return {}
    rows = session.execute(_MARKS, {"groups": list(group_ids)})
    found = {g: Mark(upto, end) for g, upto, end in rows}
    return {g: found.get(g, NOTHING) for g in group_ids}


def mark(session: Session, group_id: int) -> Mark:
    return marks(session, [group_id])[group_id]


def watermark(session: Session) -> int:
    """The highest usage event id now; a close takes it once it holds its groups' gates."""
    return int(session.scalar(select(func.coalesce(func.max(ev.id), 0))) or 0)


def _postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _lock(session: Session, ids: list[int], *, share: bool, wait: bool = True) -> set[int]:
    """Lock the gate rows of ``ids``, creating those a group does not have yet."""
    statement = (
        select(t.UsageGate.billing_group_id)
        .where(among(t.UsageGate.billing_group_id, ids))
        .order_by(t.UsageGate.billing_group_id)
    )
    statement = (
        statement.with_for_update(read=True)
        if share
        else statement.with_for_update(skip_locked=not wait)
    )
    got = set(session.scalars(statement))
    missing = [g for g in ids if g not in got]
    if missing:
        # A group's first usage (its row is made with the group since 0004): an insert racing
        # another one waits for it, then the row is locked like the others.
        session.execute(
            dialect_insert(session, t.UsageGate).on_conflict_do_nothing(
                index_elements=["billing_group_id"]
            ),
            [{"billing_group_id": g} for g in missing],
        )
        got |= set(session.scalars(statement.where(among(t.UsageGate.billing_group_id, missing))))
    return got


def share_gates(session: Session, group_ids: Iterable[int]) -> None:
    """An import is about to write events of ``group_ids``: hold their gates until commit."""
    ids = sorted(set(group_ids))
    if ids and _postgresql(session):
        _lock(session, ids, share=True)


def take_gate(session: Session, group_id: int) -> None:
    """Hold the group's gate for a close, waiting for the imports writing into it."""
    take_gates(session, [group_id], wait=True)


def take_gates(session: Session, group_ids: Iterable[int], *, wait: bool) -> set[int]:
    """Hold the gates of ``group_ids`` for a close; which ones it got. ``wait=False`` skips a
    gate an import holds (the caller leaves that group for later)."""
    ids = sorted(set(group_ids))
    if not ids or not _postgresql(session):
        return set(ids)
    return _lock(session, ids, share=False, wait=wait)
