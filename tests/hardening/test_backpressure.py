"""Work in flight is bounded: when answers fall behind, acks slow down, then requests are
turned away with a clear answer, instead of a queue (and the memory it holds) growing without
end. docs/reliability.md has the load figures this bound keeps flat.
"""

from __future__ import annotations

import threading
import time

import pytest

import bot.server
from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.server import BUSY_TEXT, LazyWork
from tests.notifications.conftest import sqlite_only
from tests.slack.conftest import DEV, running
from tests.slack.slackside import as_text
from tests.slack.test_resilience import database_locked
from tests.slack_emulator import SlackEmulator


def test_room_waits_for_a_job_to_leave_and_counts_failed_jobs_too() -> None:
    work = LazyWork(workers=2, in_flight=2)
    release = threading.Event()
    try:
        work.hard_limit = 3
        held = [work.submit(release.wait) for _ in range(2)]
        started = time.monotonic()
        assert work.room(0.1), "over the bound, under the hard limit: taken after the wait"
        assert time.monotonic() - started >= 0.1
        held.append(work.submit(release.wait))
        assert not work.room(0.05), "three jobs in flight: the hard limit"

        def fail() -> None:
            raise RuntimeError("a listener failed")

        release.set()
        for future in held:
            future.result(timeout=5)
        work.hard_limit = 2
        assert work.room(0.0)
        failing = [work.submit(fail) for _ in range(2)]
        for future in failing:
            with pytest.raises(RuntimeError):
                future.result(timeout=5)
        assert work._count == 0, "a failed job leaves the pool too"
    finally:
        release.set()
        work.shutdown(wait=True)


def test_room_is_given_as_soon_as_a_job_ends() -> None:
    work = LazyWork(workers=1, in_flight=1)
    release = threading.Event()
    try:
        work.submit(release.wait)
        threading.Timer(0.2, release.set).start()
        started = time.monotonic()
        assert work.room(5.0)
        assert time.monotonic() - started < 2.0
    finally:
        release.set()
        work.shutdown(wait=True)


@sqlite_only
def test_a_full_pool_turns_commands_away_with_an_answer_and_events_with_503(
    settings: Settings,
    billed: BillingService,
    emulator: SlackEmulator,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bot.server, "MAX_IN_FLIGHT", 1)
    monkeypatch.setattr(bot.server, "HARD_LIMIT", 1)
    monkeypatch.setattr(bot.server, "BUSY_WAIT", 0.3)
    with running(settings, billed, emulator) as slack:
        with database_locked(db_url):
            first, key = slack.command(DEV, "balance")  # its answer waits for the database
            turned, _ = slack.command(DEV, "owed")
            dm = slack.dm(DEV, "owed")
            assert first.status_code == 200 and first.content in (b"", b"{}")
            assert turned.status_code == 200
            assert turned.json() == {"response_type": "ephemeral", "text": BUSY_TEXT}
            assert dm.status_code == 503  # Slack delivers the event again later
        assert "Due if invoiced now" in as_text(slack.answer(key))
        again, later = slack.command(DEV, "owed")
        assert again.status_code == 200
        assert "1.469,06 € unpaid" in as_text(slack.answer(later))  # served again, in full
