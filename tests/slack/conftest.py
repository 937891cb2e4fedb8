"""Fixtures for the Slack tests: the Web API emulator, a billed organization, the served app.

Every test that takes ``slack`` runs the real ``billing-bot serve`` ASGI app under uvicorn on
127.0.0.1, talks to it with signed HTTP requests, and reads the answers from the emulator.
Through ``db_url`` each of them runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from billing_core.db import tables as t
from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.server import create_app
from tests import factories
from tests.slack.blockkit import IN_CI, _schema, assert_everything_sent_is_valid
from tests.slack.slackside import SECRET, TEAM, Slack, serving
from tests.slack_emulator import SlackEmulator

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
PAYMENT_URL = "https://pay.example.test/invoices/{number}"
AUDIT = "C0AUDIT"
ADMIN, DEV, JA, GUEST, STRANGER = "U0ADMIN", "U0DEV", "U0JA", "U0GUEST", "U0STRANGER"


class Clock:
    """The bot's notion of now, movable by a test (Slack signatures still use real time)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def acme_document(
    *, open_read_access: bool = False, locale: str | None = "en_US"
) -> dict[str, Any]:
    """Acme with three groups: eng (EUR, 19 % tax), ops (EUR) and tokyo (JPY, 7 days to pay)."""
    doc = factories.document(
        coupons=[{"code": "WELCOME10", "percent_off": "10", "duration": "once"}]
    )
    doc["price_lists"].append(
        {
            "key": "standard-jpy",
            "currency": "JPY",
            "metrics": [{"metric": "requests.GET", "category": "Requests", "unit_price": "0.01"}],
        }
    )
    org = factories.org(doc)
    org["open_read_access"] = open_read_access
    if locale is None:
        org.pop("locale")
    else:
        org["locale"] = locale
    org["members"].append({"slack_user_id": JA, "role": "member"})
    org["billing_groups"][0]["tax_rate"] = "0.19"
    org["billing_groups"] += [
        {
            "key": "ops",
            "name": "Operations & Support",
            "price_list": "standard-eur",
            "payment_method": "bank_transfer",
            "payment_terms_days": 30,
            "created_at": "2026-01-01T00:00:00+00:00",
            "contacts": [{"slack_channel_id": "C0BILLING"}],
        },
        {
            "key": "tokyo",
            "name": "Tokyo",
            "price_list": "standard-jpy",
            "payment_method": "card",
            "payment_terms_days": 7,
            "created_at": "2026-01-01T00:00:00+00:00",
            "contacts": [{"slack_user_id": "U0TOKYO", "email": "tokyo@acme.example"}],
        },
    ]
    org["projects"] += [
        {"key": "api", "name": "API", "billing_group": "ops"},
        {"key": "jp", "name": "Japan", "billing_group": "tokyo"},
    ]
    org["credits"] = [
        {"billing_group": "eng", "amount": "5.00", "reason": "trial"},
        {
            "billing_group": "ops",
            "amount": "20.00",
            "reason": "goodwill",
            "expires_at": "2026-12-31T00:00:00+00:00",
        },
    ]
    return doc


def bill_acme(service: BillingService, **document: Any) -> None:
    """Load Acme with two months invoiced and a third running (see NOW).

    eng: January 10.00 (paid by the 5.00 credit and a payment), February 1,234.50 + 19 % tax
    (open, due 2026-03-15), March so far 100.00. tokyo: February ¥1,234, due 2026-03-08, so
    overdue at NOW.
    """
    service.load(acme_document(**document), at=datetime(2026, 1, 1, tzinfo=UTC))
    events = [
        factories.event("e-jan", "requests.GET", "25000000", "2026-01-15T12:00:00+00:00"),
        factories.event("e-feb", "requests.GET", "3086250000", "2026-02-10T12:00:00+00:00"),
        factories.event("e-mar", "requests.GET", "250000000", "2026-03-05T12:00:00+00:00"),
        factories.event(
            "e-jp", "requests.GET", "123400", "2026-02-11T12:00:00+00:00", project="acme/jp"
        ),
    ]
    report = service.import_usage(events)
    assert not report.rejected, report.rejected
    service.run_billing(at=datetime(2026, 2, 1, 0, 5, tzinfo=UTC))
    paid = service.import_payments(
        [factories.payment("pay-1", "6.90", "2026-02-03T10:00:00+00:00")],
        at=datetime(2026, 2, 3, 10, tzinfo=UTC),
    )
    assert not paid.rejected, paid.rejected
    service.run_billing(at=datetime(2026, 3, 1, 0, 5, tzinfo=UTC))


@pytest.fixture
def emulator() -> Iterator[SlackEmulator]:
    """The Slack Web API on loopback; at the end, everything the bot sent must be valid."""
    emu = SlackEmulator(team_id=TEAM).start()
    emu.add_user(ADMIN, locale="en-US")
    emu.add_user(DEV, locale="de-DE", tz="Europe/Berlin")
    emu.add_user(JA, locale="ja-JP", tz="Asia/Tokyo")
    emu.add_user(GUEST, locale="en-US", is_restricted=True)
    emu.add_user(STRANGER, locale="en-US")
    for channel in ("C0GENERAL", AUDIT, *(f"D{u}" for u in (ADMIN, DEV, JA, GUEST, STRANGER))):
        emu.add_channel(channel)
    try:
        yield emu
        assert not emu.errors, emu.errors
        if _schema() is not None or IN_CI:
            assert_everything_sent_is_valid(emu)
    finally:
        emu.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def slack_settings(emu: SlackEmulator, db_url: str, **extra: str) -> Settings:
    """Settings as ``billing-bot serve`` reads them, with SLACK_API_URL at the emulator."""
    environ = {
        "DATABASE_URL": db_url,
        "SLACK_BOT_TOKEN": emu.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": emu.api_url,
        "AUDIT_CHANNEL": AUDIT,
        "PAYMENT_URL": PAYMENT_URL,
        "DEFAULT_LOCALE": "en_US",
        **extra,
    }
    return Settings.from_env(environ, env_file=None)


@pytest.fixture
def settings(emulator: SlackEmulator, db_url: str) -> Settings:
    return slack_settings(emulator, db_url)


@pytest.fixture
def billed(service: BillingService) -> BillingService:
    bill_acme(service)
    return service


@contextlib.contextmanager
def running(
    settings: Settings,
    service: BillingService,
    emulator: SlackEmulator,
    clock: Clock | None = None,
) -> Iterator[Slack]:
    """``billing-bot serve``'s app under uvicorn; leaving the block waits for its answers."""
    app = create_app(settings, service, clock=clock or Clock(NOW))
    with serving(app) as base_url:
        client = Slack(base_url, emulator)
        try:
            yield client
        finally:
            client.close()


@pytest.fixture
def slack(
    settings: Settings, billed: BillingService, emulator: SlackEmulator, clock: Clock
) -> Iterator[Slack]:
    """The served app (real uvicorn) and a signed Slack client for it."""
    with running(settings, billed, emulator, clock) as client:
        yield client


def audit_log(service: BillingService) -> list[tuple[str, str, str]]:
    """(actor, action, subject) of every audit entry, oldest first."""
    with service.db.transaction() as session:
        rows = session.execute(
            select(t.AuditEntry.actor, t.AuditEntry.action, t.AuditEntry.subject).order_by(
                t.AuditEntry.id
            )
        )
        return [(a, b, c) for a, b, c in rows]


def redemptions(service: BillingService) -> int:
    with service.db.transaction() as session:
        return len(session.scalars(select(t.Redemption.id)).all())


def project_group(service: BillingService, project: str) -> str:
    return service.project_group(service.actor(team_id=TEAM, user_id=ADMIN), project)
