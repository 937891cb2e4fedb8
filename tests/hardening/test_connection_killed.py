"""The database connection killed (``pg_terminate_backend``) in the middle of a request.

Each request is stopped at a known point inside its transaction: the test holds a row lock the
request needs next, waits until the request's backend is blocked on it, and terminates that
backend. The asker must still get an answer, the transaction must leave no trace, and the same
server must answer the next request (its pool drops the dead connection).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from billing_core.db import tables as t
from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.api import api_routes
from bot.server import create_app
from tests import factories
from tests.db.test_concurrency import RUN_AT, lock_waiters, prepare, wait_for
from tests.hardening.conftest import changed_tables, row_locked, snapshot
from tests.hardening.test_hostile_files import API_TOKEN
from tests.slack.conftest import (
    ADMIN,
    NOW,
    Clock,
    audit_log,
    redemptions,
    running,
    slack_settings,
)
from tests.slack.slackside import as_text, serving
from tests.slack_emulator import SlackEmulator

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


def kill_the_waiter(engine: sa.Engine) -> None:
    """Terminate the one backend blocked on the test's lock (the request's connection)."""
    wait_for(lambda: len(lock_waiters(engine)) == 1, "the request waits on the lock", [])
    [pid] = lock_waiters(engine)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_a_slack_request_whose_connection_dies_is_answered_and_writes_nothing(
    settings: Settings, billed: BillingService, emulator: SlackEmulator, engine: sa.Engine
) -> None:
    before = snapshot(billed)
    with running(settings, billed, emulator) as slack:
        # The redemption holds its group's lock and waits for the coupon's: killed there.
        with row_locked(engine, "SELECT 1 FROM coupons WHERE code = 'WELCOME10' FOR UPDATE"):
            response, key = slack.command(ADMIN, "redeem WELCOME10 eng")
            assert response.status_code == 200
            kill_the_waiter(engine)
        shown = as_text(slack.answer(key))
        assert "Sorry, something went wrong on our side" in shown and "reference `" in shown
        assert "Traceback" not in shown and "psycopg" not in shown
        assert not changed_tables(before, snapshot(billed))

        again = as_text(slack.ask(ADMIN, "redeem WELCOME10 eng"))  # the same server, next try
        assert "redeemed" in again
        assert slack.http.get("/healthz").json() == {"ok": True}
    assert redemptions(billed) == 1
    assert audit_log(billed) == [(ADMIN, "coupon.redeem", "acme/eng")]


def usage_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(t.UsageEvent)) or 0


def test_an_api_import_whose_connection_dies_lands_nothing_and_its_retry_lands_once(
    emulator: SlackEmulator, billed: BillingService, engine: sa.Engine, db_url: str
) -> None:
    # Two batches in one transaction: eng's 1,000 events first, then ops's, whose group the
    # test holds: the request is killed with its first batch written but not committed.
    events = [
        json.loads(factories.event(f"k-{n}", "requests.GET", "7", "2026-03-09T00:00:00+00:00"))
        for n in range(1000)
    ] + [
        json.loads(
            factories.event(
                f"k-ops-{n}", "requests.GET", "7", "2026-03-09T00:00:00+00:00", project="acme/api"
            )
        )
        for n in range(200)
    ]
    settings = slack_settings(emulator, db_url, BILLING_API_TOKEN=API_TOKEN)
    app = create_app(settings, billed, clock=Clock(NOW), routes=api_routes(settings, billed))
    bearer = {"Authorization": f"Bearer {API_TOKEN}", "Connection": "close"}
    before = usage_rows(engine)
    with serving(app) as base, ThreadPoolExecutor(max_workers=1) as pool:

        def post() -> httpx.Response:
            return httpx.post(f"{base}/api/v1/usage", json=events, headers=bearer, timeout=60)

        with row_locked(engine, "SELECT 1 FROM billing_groups WHERE key = 'ops' FOR UPDATE"):
            pending = pool.submit(post)
            kill_the_waiter(engine)
        killed = pending.result(timeout=60)
        assert killed.status_code >= 500, killed.text  # an answer: the import did not happen
        assert "Traceback" not in killed.text and "psycopg" not in killed.text
        assert usage_rows(engine) == before  # not one event of the first batch

        retried = post()
        assert retried.status_code == 200 and retried.json()["accepted"] == len(events)
        assert post().json()["accepted"] == 0
    assert usage_rows(engine) == before + len(events)


def test_a_billing_close_whose_connection_dies_leaves_no_trace(
    pg_url: str, service: BillingService, engine: sa.Engine
) -> None:
    prepare(pg_url)
    before = snapshot(service)
    # A close locks its group, records the close, claims the usage, rates it, then takes the
    # next invoice number: the test holds the counter, so the close dies half written.
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO counters (name, year, value) VALUES ('invoice', 2026, 0)")
        )
    counter = "SELECT 1 FROM counters WHERE name = 'invoice' FOR UPDATE"
    with ThreadPoolExecutor(max_workers=1) as pool:
        with row_locked(engine, counter):
            run = pool.submit(service.run_billing, at=factories.at(RUN_AT))
            kill_the_waiter(engine)
        with pytest.raises(sa.exc.OperationalError):
            run.result(timeout=60)
    assert changed_tables(before, snapshot(service)) == {"counters"}  # the row the test made
    report = service.run_billing(at=factories.at(RUN_AT))
    assert report.issued[0] == "INV-2026-000001" and not report.failed
    assert service.check() == []
