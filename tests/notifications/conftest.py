"""Fixtures for the notification tests: an organization in Berlin, a Slack emulator, settings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cache
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import select

from billing_core.db import tables as t
from billing_core.services import BillingService
from billing_core.settings import Settings
from tests.factories import document, event, org
from tests.slack.blockkit import require_schema
from tests.slack_emulator import SlackEmulator

TOKEN = "xoxb-notifications-test"
USER = "U0FIN"
CHANNEL = "C0BILLING"
AUDIT = "C0AUDIT"
PAY = "https://pay.example/invoices/{number}"


@cache
def block_kit() -> Draft202012Validator:
    """The shared Block Kit schema (``tests.slack.blockkit``: skips on a developer's machine
    without ../shared, fails in CI)."""
    return Draft202012Validator(require_schema())


def block_kit_errors(blocks: object) -> list[str]:
    """Why ``blocks`` is not valid Block Kit (empty when it is)."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in block_kit().iter_errors(blocks)]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def berlin(text: str) -> datetime:
    """An aware time from ISO text (the tests write Berlin offsets explicitly)."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return moment


def acme(*, contacts: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The factories' organization, in Berlin, German, with a user and a channel contact."""
    doc = document()
    o = org(doc)
    o["timezone"] = "Europe/Berlin"
    o["locale"] = "de_DE"
    group = o["billing_groups"][0]
    group["created_at"] = "2026-10-01T00:00:00+02:00"
    group["contacts"] = contacts or [{"slack_user_id": USER}, {"slack_channel_id": CHANNEL}]
    return doc


def usage(month: str, requests: str = "10000000") -> str:
    """One usage event on the 10th of ``month`` (``2026-10``)."""
    return event(f"evt-{month}", "requests.GET", requests, f"{month}-10T12:00:00+00:00")


@pytest.fixture
def emu() -> Iterator[SlackEmulator]:
    with SlackEmulator(bot_token=TOKEN) as emulator:
        emulator.add_user(USER, locale="de-DE", tz="Europe/Berlin")
        emulator.add_channel(CHANNEL)
        emulator.add_channel(AUDIT)
        yield emulator
        assert emulator.errors == []


@pytest.fixture
def settings(db_url: str, emu: SlackEmulator) -> Settings:
    return Settings(
        database_url=db_url,
        slack_bot_token=TOKEN,
        slack_api_url=emu.api_url,
        reminder_offsets=(-3, 0, 3, 7),
        audit_channel=AUDIT,
        payment_url=PAY,
    )


@pytest.fixture
def billed(service: BillingService) -> BillingService:
    """Acme with October's usage, billed at 00:05 on November 1st (Berlin)."""
    service.load(acme(), at=berlin("2026-10-01T00:00:00+02:00"))
    service.import_usage([usage("2026-10")])
    report = service.run_billing(at=berlin("2026-11-01T00:05:00+01:00"))
    assert report.issued == ["INV-2026-000001"]
    return service


def keys(emu: SlackEmulator, channel: str) -> list[str]:
    """The outbox keys of the messages in ``channel``, oldest first."""
    return [
        m["metadata"]["event_payload"]["outbox_key"]
        for m in emu.messages(channel)
        if m.get("metadata")
    ]


def states(service: BillingService) -> dict[str, str]:
    """Outbox key -> state, for every row."""
    with service.db.transaction() as session:
        rows = session.execute(
            select(
                t.Invoice.number,
                t.OutboxMessage.step,
                t.OutboxMessage.recipient,
                t.OutboxMessage.state,
            ).join(t.Invoice, t.Invoice.id == t.OutboxMessage.invoice_id)
        ).all()
    return {f"{number}/{step}/{recipient}": state for number, step, recipient, state in rows}


# Behaviour that does not depend on the database runs on SQLite only (PostgreSQL setup is slow).
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
