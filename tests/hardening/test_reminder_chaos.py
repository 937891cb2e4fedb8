"""Reminders while Slack fails at random (seeded): 429, 500, ok:false, dropped connections.

Two months of invoices, a payment in between, and a reminder run every morning: once against a
healthy emulator (the reference), once against one that fails a seeded share of all calls. In
the faulty world each morning's run is repeated, at the moments the outbox asks for (Retry-After,
backoff, the in-doubt lease), until nothing waits; then the next morning comes. In the end
every message the healthy world delivered was delivered exactly once, and nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.services import BillingService
from billing_core.settings import Settings
from notifications.jobs import remind
from tests import factories
from tests.conftest import new_database_url
from tests.notifications.conftest import AUDIT, CHANNEL, PAY, TOKEN, USER, acme, berlin, keys, usage
from tests.slack_emulator import SlackEmulator

SEED = 20_261_101
FAULT_RATE = 0.2
FIRST_MORNING = berlin("2026-11-01T10:00:00+01:00")
MORNINGS = 53  # to December 23rd: every step of both invoices comes due
PAID_ON = berlin("2026-11-16T12:00:00+01:00")  # the first invoice, a day after its due date


def new_emulator() -> SlackEmulator:
    emu = SlackEmulator(bot_token=TOKEN).start()
    emu.add_user(USER, locale="de-DE", tz="Europe/Berlin")
    for channel in (CHANNEL, AUDIT):
        emu.add_channel(channel)
    return emu


def world(url: str) -> BillingService:
    """Acme billed for October and November, reminders not yet run."""
    service = BillingService(Database(url))
    service.load(acme(), at=berlin("2026-10-01T00:00:00+02:00"))
    service.import_usage([usage("2026-10"), usage("2026-11", "20000000")])
    service.run_billing(at=berlin("2026-11-01T00:05:00+01:00"))
    service.run_billing(at=berlin("2026-12-01T00:05:00+01:00"))
    return service


def settings_for(url: str, emu: SlackEmulator) -> Settings:
    return Settings(
        database_url=url,
        slack_bot_token=TOKEN,
        slack_api_url=emu.api_url,
        reminder_offsets=(-3, 0, 3, 7),
        audit_channel=AUDIT,
        payment_url=PAY,
    )


def waiting(service: BillingService) -> datetime | None:
    """When the outbox next wants to try a row that is not settled (None: nothing waits)."""
    with service.db.transaction() as session:
        due: datetime | None = session.scalar(
            sa.select(sa.func.min(t.OutboxMessage.next_attempt_at)).where(
                t.OutboxMessage.state.in_(("pending", "sending"))
            )
        )
    return due


def live_through(service: BillingService, settings: Settings, *, retry: bool) -> int:
    """Every morning's reminder run (and, with ``retry``, its retries); returns the runs."""
    runs = 0
    for day in range(MORNINGS):
        now = FIRST_MORNING + timedelta(days=day)
        if now >= PAID_ON and now - timedelta(days=1) < PAID_ON:
            amount = service.export_invoices(org_key="acme")[0]["amount_due"]
            paid = [factories.payment("pay-1", amount, PAID_ON.isoformat())]
            assert service.import_payments(paid, at=PAID_ON).accepted == 1
        remind(service, settings, now)
        runs += 1
        while retry and (due := waiting(service)) is not None:
            now = max(now + timedelta(seconds=1), due.astimezone(now.tzinfo))
            assert now - FIRST_MORNING < timedelta(days=day, hours=6), "retries never end"
            remind(service, settings, now)
            runs += 1
    return runs


def outbox_states(service: BillingService) -> Counter[str]:
    with service.db.transaction() as session:
        return Counter(session.scalars(sa.select(t.OutboxMessage.state)))


@pytest.fixture
def healthy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Counter[str]]:
    """What a fault-free Slack receives over the same mornings."""
    (tmp_path / "reference").mkdir()
    url = new_database_url("sqlite", request, tmp_path / "reference")
    service, emu = world(url), new_emulator()
    try:
        live_through(service, settings_for(url, emu), retry=False)
        yield Counter(keys(emu, f"D{USER}") + keys(emu, CHANNEL))
    finally:
        emu.stop()
        service.db.dispose()


def test_every_reminder_is_delivered_exactly_once_through_random_slack_failures(
    db_url: str, healthy: Counter[str]
) -> None:
    service, emu = world(db_url), new_emulator()
    try:
        emu.set_random_faults(seed=SEED, rate=FAULT_RATE)
        runs = live_through(service, settings_for(db_url, emu), retry=True)
        delivered = Counter(keys(emu, f"D{USER}") + keys(emu, CHANNEL))
        failures = Counter(c.status for c in emu.calls if c.status != 200)
        assert emu.errors == []
    finally:
        emu.stop()
    try:
        assert delivered == healthy
        assert set(delivered.values()) == {1}
        assert len(delivered) >= 12  # two notices and several reminders, to a user and a channel
        assert runs > MORNINGS, "the faults made runs retry"
        assert failures[429] and failures[500] and failures[0], failures  # 0: dropped
        assert outbox_states(service)["failed"] == 0
        assert emu.messages(AUDIT) == [], "nothing was given up"
        assert service.check() == []
    finally:
        service.db.dispose()
