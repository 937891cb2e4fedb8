"""``issuing.due_periods``: the run's listing, read in chunks of plain rows, never every group's
ORM object (at 20,000 groups those were most of ``run-billing``'s memory)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from billing_core import issuing
from billing_core.db import tables as t
from billing_core.periods import Period, Schedule, zone
from billing_core.services import BillingService
from tests.db.test_concurrency import dataset
from tests.factories import at

FIRST_AT = "2026-02-01T12:00:00+00:00"
SECOND_AT = "2026-03-01T12:00:00+00:00"


def expected(service: BillingService, when: datetime) -> list[tuple[int, Period]]:
    """The due periods worked out group by group from the rows (slow, but plainly right)."""
    due: list[tuple[datetime, int, Period]] = []
    with service.db.transaction() as session:
        for group in session.scalars(sa.select(t.BillingGroup)):
            org = session.get_one(t.Organization, group.organization_id)
            sub = group.subscription_start if group.plan_id else None
            schedule = Schedule(zone(org.timezone), group.created_at, sub)
            last = session.scalar(
                sa.select(sa.func.max(t.PeriodClose.period_end)).where(
                    t.PeriodClose.billing_group_id == group.id
                )
            )
            start = last or group.created_at
            while (end := schedule.next_boundary(start)) <= when:
                due.append((end, group.id, Period(start, end)))
                start = end
    return [(g, p) for _, g, p in sorted(due, key=lambda item: (item[0], item[1]))]


@pytest.fixture
def no_group_objects() -> Iterator[list[Any]]:
    """Every BillingGroup the ORM builds while the fixture is active."""
    loaded: list[Any] = []

    def on_load(target: Any, _context: Any) -> None:
        loaded.append(target)

    sa.event.listen(t.BillingGroup, "load", on_load)
    yield loaded
    sa.event.remove(t.BillingGroup, "load", on_load)


def listing(service: BillingService, when: datetime) -> list[tuple[int, Period]]:
    with service.db.transaction() as session:
        return issuing.due_periods(session, when)


def test_due_periods_in_small_chunks_match_the_rows_without_loading_groups(
    service: BillingService, monkeypatch: pytest.MonkeyPatch, no_group_objects: list[Any]
) -> None:
    doc, usage = dataset()
    service.load(doc, at=at("2026-01-01T00:00:00+00:00"))
    monkeypatch.setattr(issuing, "DUE_CHUNK", 7)  # 60 groups: several chunks, a partial last

    # Nothing closed yet: two periods for every group, anniversary groups cut at the 15th.
    before = expected(service, at(SECOND_AT))
    no_group_objects.clear()
    assert listing(service, at(SECOND_AT)) == before
    assert no_group_objects == []
    assert len(before) == 2 * len({g for g, _ in before}) == 120

    # January closed: each group's next period starts at its last close's end.
    assert service.import_usage([line for line in usage if "-jan-" in line]).ok
    assert not service.run_billing(at=at(FIRST_AT)).failed
    after = expected(service, at(SECOND_AT))
    no_group_objects.clear()
    assert listing(service, at(SECOND_AT)) == after
    assert no_group_objects == []
    assert len(after) == 60
