"""Scheduler wiring: the billing run and the reminders on their own intervals.

Both jobs run once at start (catching up after downtime), then on their interval, one at a
time on a single worker thread. With several replicas on PostgreSQL only the one holding a
session-level advisory lock acts; the lock lives on a dedicated connection, so the database
frees it when that process dies and another replica takes over at its next tick. The lock
saves work, it is not what keeps things correct: billing is idempotent and the outbox claims
rows with SKIP LOCKED, so two replicas overlapping for a moment still send each message once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from billing_core.services import BillingService
from billing_core.settings import Settings
from notifications.jobs import remind, run_billing_job
from notifications.slack import make_client

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the scheduler leader (any constant unique to this use).
LEADER_LOCK_KEY = 0x62696C6C_6C656164  # "billlead"
BILLING_JOB = "billing"
REMIND_JOB = "remind"


@dataclass(frozen=True)
class SchedulerConfig:
    billing_every: timedelta = timedelta(minutes=5)
    remind_every: timedelta = timedelta(minutes=1)
    lock_key: int = LEADER_LOCK_KEY


class Leader(Protocol):
    def is_leader(self) -> bool: ...

    def close(self) -> None: ...


class SoleLeader:
    """SQLite: one process owns the database file, so it always acts."""

    def is_leader(self) -> bool:
        return True

    def close(self) -> None:
        pass


class AdvisoryLockLeader:
    """Leadership as a PostgreSQL session advisory lock held on its own connection."""

    def __init__(self, url: str, *, key: int = LEADER_LOCK_KEY) -> None:
        self.key = key
        # Keepalives make a silently vanished server (or network) show up as an error here.
        self._engine = create_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": 10,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
        self._conn: Connection | None = None
        self._held = False
        self._lock = threading.Lock()

    def is_leader(self) -> bool:
        """True while this process holds the lock; tries to take it when it does not."""
        with self._lock:
            if self._held and self._alive():
                return True
            self._held = False
            try:
                if self._conn is None:
                    self._conn = self._engine.connect()
                got = self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
                ).scalar_one()
            except DBAPIError as exc:
                log.warning("scheduler leader check failed: %s", type(exc).__name__)
                self._drop()
                return False
            self._held = bool(got)
            if self._held:
                log.info("this process now runs the scheduled jobs")
            return self._held

    def _alive(self) -> bool:
        assert self._conn is not None  # noqa: S101 - held implies connected
        try:
            self._conn.execute(text("SELECT 1"))
        except DBAPIError:
            log.warning("lost the scheduler lock: its database connection is gone")
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except DBAPIError:
                pass  # already broken; closing is best effort
        self._conn = None
        self._held = False

    def close(self) -> None:
        """Give the lock back (closing the session releases it) and free the connection."""
        with self._lock:
            self._drop()
            self._engine.dispose()


def leader_for(url: str, *, key: int = LEADER_LOCK_KEY) -> Leader:
    if url.startswith("postgresql"):
        return AdvisoryLockLeader(url, key=key)
    return SoleLeader()


class RunningScheduler:
    """The started scheduler; ``shutdown()`` waits for a running job, then frees the lock."""

    def __init__(
        self,
        *,
        settings: Settings,
        service: BillingService,
        config: SchedulerConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.service = service
        self.clock = clock
        self.leader = leader_for(service.db.url, key=config.lock_key)
        self.runs = {BILLING_JOB: 0, REMIND_JOB: 0}  # jobs this process ran as leader
        self._client = make_client(settings) if settings.slack_bot_token else None
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        start = datetime.now(UTC)
        self._scheduler.add_job(
            self._billing,
            IntervalTrigger(seconds=config.billing_every.total_seconds(), timezone=UTC),
            id=BILLING_JOB,
            next_run_time=start,
        )
        if self._client is None:
            log.warning("SLACK_BOT_TOKEN is not set: invoices are issued but nobody is reminded")
        else:
            self._scheduler.add_job(
                self._remind,
                IntervalTrigger(seconds=config.remind_every.total_seconds(), timezone=UTC),
                id=REMIND_JOB,
                next_run_time=start,
            )

    def start(self) -> RunningScheduler:
        self._scheduler.start()
        return self

    def shutdown(self) -> None:
        """Stop the jobs (waiting for one that runs) and give up leadership; safe to repeat."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        self.leader.close()

    def _billing(self) -> None:
        if not self.leader.is_leader():
            return
        try:
            report = run_billing_job(self.service, self.clock())
        except Exception:
            log.exception("the scheduled billing run failed")
            return
        finally:
            self.runs[BILLING_JOB] += 1
        if report.issued and self._client is not None:
            self._remind(check_leader=False)  # announce new invoices now, not at the next tick

    def _remind(self, *, check_leader: bool = True) -> None:
        if check_leader and not self.leader.is_leader():
            return
        try:
            report = remind(self.service, self.settings, self.clock(), client=self._client)
            if report.sent or report.failed:
                log.info("reminders: %s", report.describe())
        except Exception:
            log.exception("the scheduled reminder run failed")
        finally:
            self.runs[REMIND_JOB] += 1


def _utc_now() -> datetime:
    return datetime.now(UTC)


def start_scheduler(
    *,
    settings: Settings,
    service: BillingService,
    config: SchedulerConfig | None = None,
    clock: Callable[[], datetime] = _utc_now,
) -> RunningScheduler:
    """Start the billing and reminder jobs in the background; call ``shutdown()`` to stop."""
    return RunningScheduler(
        settings=settings, service=service, config=config or SchedulerConfig(), clock=clock
    ).start()
