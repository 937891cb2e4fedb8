"""One scheduler acts at a time on PostgreSQL; another takes over when its connection goes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from billing_core.db.engine import Database
from billing_core.services import BillingService
from billing_core.settings import Settings
from notifications.scheduler import (
    AdvisoryLockLeader,
    SchedulerConfig,
    SoleLeader,
    leader_for,
    start_scheduler,
)
from tests.conftest import PG_ADMIN_URL, require_postgres
from tests.notifications.conftest import berlin, wait_for

KEY = 4242  # a lock key of these tests only, apart from the real one


@pytest.fixture
def lock_url() -> str:
    """Advisory locks need no tables: the server's own database will do (no setup cost)."""
    require_postgres()
    return PG_ADMIN_URL


@pytest.fixture
def leaders(lock_url: str) -> Iterator[tuple[AdvisoryLockLeader, AdvisoryLockLeader]]:
    key = KEY + uuid.uuid4().int % 1_000_000  # apart from any other test run on this server
    first, second = AdvisoryLockLeader(lock_url, key=key), AdvisoryLockLeader(lock_url, key=key)
    yield first, second
    first.close()
    second.close()


def lock_holders(url: str, key: int) -> list[int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        pids = conn.execute(
            sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objid = :key AND database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())"
            ),
            {"key": key},
        ).scalars()
        result = list(pids)
    engine.dispose()
    return result


def test_only_one_of_two_contenders_leads_and_the_other_takes_over_when_it_closes(
    leaders: tuple[AdvisoryLockLeader, AdvisoryLockLeader], lock_url: str
) -> None:
    first, second = leaders
    assert first.is_leader() is True
    assert second.is_leader() is False
    assert first.is_leader() is True  # still, on the same connection
    assert len(lock_holders(lock_url, first.key)) == 1
    first.close()
    wait_for(second.is_leader)
    assert first.is_leader() is False  # a closed leader can come back only as a contender


def test_a_leader_whose_process_dies_is_replaced(
    leaders: tuple[AdvisoryLockLeader, AdvisoryLockLeader], lock_url: str
) -> None:
    first, second = leaders
    assert first.is_leader() and not second.is_leader()
    [pid] = lock_holders(lock_url, first.key)
    engine = sa.create_engine(lock_url)
    with engine.connect() as conn:  # what the server does when the leader's process dies
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    engine.dispose()
    wait_for(second.is_leader)
    assert first.is_leader() is False


def test_sqlite_has_a_single_process_that_always_leads() -> None:
    assert isinstance(leader_for("sqlite:///billing.db"), SoleLeader)
    assert SoleLeader().is_leader()


def test_of_two_schedulers_one_runs_the_jobs_and_the_other_takes_over(pg_url: str) -> None:
    settings = Settings(database_url=pg_url)  # no token: the billing job only
    fast = SchedulerConfig(
        billing_every=timedelta(seconds=0.2), remind_every=timedelta(hours=1), lock_key=KEY
    )
    services = [BillingService(Database(pg_url)) for _ in range(2)]
    clock = lambda: berlin("2026-11-01T00:05:00+01:00")  # noqa: E731
    first = start_scheduler(settings=settings, service=services[0], config=fast, clock=clock)
    second = start_scheduler(settings=settings, service=services[1], config=fast, clock=clock)
    try:
        wait_for(lambda: first.runs["billing"] + second.runs["billing"] >= 5)
        leader, other = (first, second) if first.runs["billing"] else (second, first)
        assert other.runs["billing"] == 0
        leader.shutdown()
        wait_for(lambda: other.runs["billing"] >= 3)
    finally:
        first.shutdown()
        second.shutdown()
        for service in services:
            service.db.dispose()
