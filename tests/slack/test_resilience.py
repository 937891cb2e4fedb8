"""Slack never waits on the database, failures are answered, and delivery problems are logged."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from billing_core.services import BillingService
from billing_core.settings import Settings
from tests.slack.conftest import ADMIN, AUDIT, DEV, redemptions, running
from tests.slack.slackside import Slack, as_text, buttons, wait_for
from tests.slack_emulator import SlackEmulator


@contextlib.contextmanager
def database_locked(db_url: str) -> Iterator[None]:
    """Hold a lock that stalls every read the bot makes, as a long billing run could."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        # The billing core opens every transaction with BEGIN IMMEDIATE: a held write lock
        # stalls them all (for up to its 60 s busy timeout).
        connection = sqlite3.connect(str(url.database), isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield
            connection.execute("ROLLBACK")
        finally:
            connection.close()
        return
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            connection.exec_driver_sql("LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE")
            yield
            transaction.rollback()
    finally:
        engine.dispose()


def test_slack_gets_its_ack_at_once_while_the_database_is_stuck(
    slack: Slack, emulator: SlackEmulator, db_url: str
) -> None:
    with database_locked(db_url):
        started = time.monotonic()
        response, key = slack.command(DEV, "balance")
        dm = slack.dm(DEV, "owed")
        health = slack.http.get("/healthz")
        elapsed = time.monotonic() - started
        assert (response.status_code, dm.status_code, health.status_code) == (200, 200, 200)
        assert elapsed < 3, f"acks took {elapsed:.2f}s"
        assert emulator.responses(key) == [], "the answer waits for the database"
    assert "Due if invoiced now: 119,00 €" in as_text(slack.answer(key))
    wait_for(lambda: emulator.messages(f"D{DEV}"), what="the DM answer after the lock")


def test_an_unexpected_error_is_logged_and_answered_with_a_reference(
    slack: Slack, billed: BillingService, caplog: pytest.LogCaptureFixture
) -> None:
    with billed.db.engine.begin() as connection:  # a broken schema: not a BillingError
        connection.exec_driver_sql("ALTER TABLE credits RENAME TO credits_gone")
    with caplog.at_level(logging.ERROR, logger="billing_bot"):
        shown = as_text(slack.ask(DEV, "credits eng"))
    assert "Sorry, something went wrong on our side" in shown
    reference = shown.split("reference `")[1].split("`")[0]
    records = [r for r in caplog.records if reference in r.getMessage()]
    assert records and records[0].exc_info, "logged with the traceback, for the operator"
    assert f"user {DEV}" in records[0].getMessage()
    assert "Traceback" not in shown and "credits_gone" not in shown
    assert "xoxb" not in caplog.text


def test_an_answer_ready_in_time_comes_in_the_ack_itself(
    slack: Slack, emulator: SlackEmulator
) -> None:
    response, key = slack.command(DEV, "help")
    assert response.status_code == 200
    answer = response.json()
    assert answer["response_type"] == "ephemeral" and "Billing commands" in as_text(answer)
    assert emulator.responses(key) == [answer] and emulator.calls_to("response_url") == []


def test_a_failing_response_url_is_retried(
    slack: Slack, emulator: SlackEmulator, db_url: str
) -> None:
    emulator.fail_next("response_url", status=500)
    with database_locked(db_url):  # the answer misses the ack: it goes through response_url
        response, key = slack.command(DEV, "balance")
    assert response.status_code == 200 and not response.content.strip()
    assert "Due if invoiced now" in as_text(slack.answer(key))
    assert [c.status for c in emulator.calls_to("response_url")] == [500, 200]


def test_a_failed_audit_post_is_logged_and_the_change_stands(
    slack: Slack,
    billed: BillingService,
    emulator: SlackEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator.fail_next("chat.postMessage", error="not_in_channel")
    with caplog.at_level(logging.ERROR, logger="billing_bot"):
        answer = slack.ask(ADMIN, "redeem WELCOME10 eng")
        assert "redeemed" in as_text(answer)
        wait_for(
            lambda: "could not deliver the audit line" in caplog.text, what="the logged failure"
        )
    assert "not_in_channel" in caplog.text
    assert redemptions(billed) == 1
    assert emulator.messages(AUDIT) == []


def test_no_audit_channel_no_audit_post(
    emulator: SlackEmulator, billed: BillingService, db_url: str
) -> None:
    from tests.slack.conftest import slack_settings  # noqa: PLC0415

    settings = slack_settings(emulator, db_url, AUDIT_CHANNEL="")
    with running(settings, billed, emulator) as slack:
        slack.ask(ADMIN, "redeem WELCOME10 eng")
    assert emulator.calls_to("chat.postMessage") == []
    assert redemptions(billed) == 1


def test_an_event_retried_for_a_slow_ack_is_not_answered_twice(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    with running(settings, billed, emulator) as slack:
        retry = slack.dm(
            DEV, "owed", headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
        )
        assert retry.status_code == 200
        slack.ask_dm(DEV, "help")
    assert [as_text(m).splitlines()[0] for m in emulator.messages(f"D{DEV}")] == [
        "Billing commands"
    ]


def test_own_and_edited_messages_are_not_answered(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    with running(settings, billed, emulator) as slack:
        own = {
            "type": "message",
            "channel": f"D{DEV}",
            "channel_type": "im",
            "user": emulator.bot_user_id,
            "bot_id": emulator.bot_id,
            "text": "owed",
            "ts": "1.000001",
        }
        edit = {
            "type": "message",
            "subtype": "message_changed",
            "channel": f"D{DEV}",
            "channel_type": "im",
            "ts": "1.000002",
            "message": {"text": "owed"},
        }
        channel = {
            "type": "message",
            "channel": "C0GENERAL",
            "channel_type": "channel",
            "user": DEV,
            "text": "owed",
            "ts": "1.000003",
        }
        for event in (own, edit, channel):
            assert slack.event(event).status_code == 200
    assert emulator.calls_to("chat.postMessage") == []
    assert emulator.calls_to("chat.postEphemeral") == []


def test_buttons_of_a_question_carry_only_what_was_asked(slack: Slack) -> None:
    question = slack.ask(ADMIN, "assign web ops")
    value = buttons(question)["assign_confirm"]["value"]
    assert len(value) < 2000
    assert "xoxb" not in value and "token" not in value
