"""Exactly once, retries and giving up, against the Slack emulator over real HTTP."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from billing_core.db import tables as t
from billing_core.services import BillingService
from billing_core.settings import Settings
from notifications.jobs import RemindReport, remind
from tests.notifications.conftest import AUDIT, CHANNEL, USER, berlin, keys, sqlite_only, states
from tests.slack_emulator import SlackEmulator

DM = "D" + USER
ISSUED_AT = berlin("2026-11-01T00:05:00+01:00")
NOTICES = {
    f"INV-2026-000001/issued/user:{USER}": DM,
    f"INV-2026-000001/issued/channel:{CHANNEL}": CHANNEL,
}


class Killed(BaseException):
    """The process died (nothing below the hook runs, like SIGKILL)."""


def delivered(emu: SlackEmulator) -> Counter[str]:
    return Counter(keys(emu, DM) + keys(emu, CHANNEL))


def until_settled(
    service: BillingService, settings: Settings, start: datetime, *, step: timedelta
) -> tuple[datetime, list[RemindReport]]:
    """Run remind at start, start + step, ... until nothing waits to be retried."""
    now, reports = start, []
    for _ in range(40):
        reports.append(remind(service, settings, now))
        if not any(s in ("pending", "sending") for s in states(service).values()):
            return now, reports
        now += step
    raise AssertionError(f"still not settled at {now}: {states(service)}")


def test_running_remind_again_for_the_same_moment_sends_nothing_more(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    first = remind(billed, settings, ISSUED_AT)
    assert sorted(s.key for s in first.sent) == sorted(NOTICES)
    for _ in range(3):
        again = remind(billed, settings, ISSUED_AT)
        assert again.sent == [] and again.skipped == []
    assert delivered(emu) == Counter(list(NOTICES))
    assert len(emu.calls_to("chat.postMessage")) == 2


@sqlite_only
def test_every_message_carries_its_outbox_key_in_metadata(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    remind(billed, settings, ISSUED_AT)
    [message] = emu.messages(DM)
    assert message["metadata"]["event_type"] == "billing_invoice"
    assert (
        message["metadata"]["event_payload"]["outbox_key"] == f"INV-2026-000001/issued/user:{USER}"
    )
    [open_call] = emu.calls_to("conversations.open")
    assert open_call.params["users"] == USER
    with billed.db.transaction() as session:
        row = session.scalars(
            select(t.OutboxMessage).filter_by(recipient=f"user:{USER}", step="issued")
        ).one()
    assert (row.state, row.attempts, row.slack_channel, row.slack_ts) == (
        "sent",
        1,
        DM,
        message["ts"],
    )


def test_a_process_killed_between_the_post_and_the_record_does_not_send_twice(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    victim = f"INV-2026-000001/issued/user:{USER}"

    def die_after(key: str) -> None:
        if key == victim:
            raise Killed

    with pytest.raises(Killed):
        remind(billed, settings, ISSUED_AT, after_post=die_after)
    assert keys(emu, DM) == [victim]  # it reached Slack...
    assert states(billed)[victim] == "sending"  # ...but was never recorded

    # Within the lease the row is left alone (its process might still be working on it).
    remind(billed, settings, ISSUED_AT + timedelta(minutes=5))
    assert states(billed)[victim] == "sending"

    # Once the lease ran out, the next run finds it in the history instead of posting again.
    report = remind(billed, settings, ISSUED_AT + timedelta(minutes=11))
    assert [s.key for s in report.sent] == [victim]
    assert states(billed)[victim] == "sent"
    assert delivered(emu) == Counter(list(NOTICES))
    history = emu.calls_to("conversations.history")
    assert history and all(
        c.params.get("include_all_metadata") in ("1", "true", True) for c in history
    )
    assert len([c for c in emu.calls_to("chat.postMessage") if c.params["channel"] == DM]) == 1


@sqlite_only
def test_a_killed_claim_is_sent_after_the_lease_when_the_post_never_happened(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    emu.fail_next("chat.postMessage", drop_connection=True)
    report = remind(billed, settings, ISSUED_AT)  # the dropped post leaves one row in doubt
    [doubt] = report.retrying  # whichever of the two posts came first (they go out at once)
    assert doubt.key in NOTICES and states(billed)[doubt.key] == "sending"
    until_settled(billed, settings, ISSUED_AT, step=timedelta(minutes=1))
    assert delivered(emu) == Counter(list(NOTICES))


def test_rate_limits_and_server_errors_are_retried_until_each_contact_has_one_message(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    emu.fail_next("conversations.open", drop_connection=True)  # the user's DM, first in line
    emu.fail_next("chat.postMessage", status=429, retry_after=20, times=2)
    emu.fail_next("chat.postMessage", status=500, times=2)
    emu.fail_next("chat.postMessage", status=503)
    report = remind(billed, settings, ISSUED_AT)
    # The 429 holds only its channel; Retry-After 20 s is longer than a run waits.
    assert report.sent == [] and report.stopped is None
    with billed.db.transaction() as session:
        rows = {
            r.recipient: (r.state, r.attempts, r.next_attempt_at)
            for r in session.scalars(select(t.OutboxMessage))
        }
    assert rows == {
        f"user:{USER}": ("pending", 1, ISSUED_AT + timedelta(seconds=30)),  # backoff
        f"channel:{CHANNEL}": ("pending", 0, ISSUED_AT + timedelta(seconds=20)),  # Retry-After
    }
    posts = len(emu.calls_to("chat.postMessage"))
    assert remind(billed, settings, ISSUED_AT + timedelta(seconds=19)).sent == []
    assert len(emu.calls_to("chat.postMessage")) == posts
    start = ISSUED_AT + timedelta(seconds=20)
    end, _ = until_settled(billed, settings, start, step=timedelta(minutes=1))
    assert delivered(emu) == Counter(list(NOTICES))
    assert set(states(billed).values()) == {"sent"}
    assert end - ISSUED_AT < timedelta(minutes=30)


@sqlite_only
def test_retry_after_is_honoured(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    emu.fail_next("chat.postMessage", status=429, retry_after=45)
    report = remind(billed, settings, ISSUED_AT)
    # Only the rate-limited conversation waits; the other message goes out in the same run.
    assert report.stopped is None
    [limited] = [s.key for s in report.retrying]
    assert [s.key for s in report.sent] == [k for k in NOTICES if k != limited]
    with billed.db.transaction() as session:
        rows = session.scalars(select(t.OutboxMessage).order_by(t.OutboxMessage.id)).all()
        by_state = {(r.state, r.attempts, r.next_attempt_at) for r in rows}
    # The rate-limited try is given back; the row waits exactly Retry-After (longer than a run
    # waits for a conversation, so it is left to a later run).
    assert by_state == {("pending", 0, ISSUED_AT + timedelta(seconds=45)), ("sent", 1, None)}
    report = remind(billed, settings, ISSUED_AT + timedelta(seconds=44))
    assert report.sent == []
    report = remind(billed, settings, ISSUED_AT + timedelta(seconds=45))
    assert [s.key for s in report.sent] == [limited]
    assert delivered(emu) == Counter(list(NOTICES))


@sqlite_only
def test_random_faults_still_give_exactly_one_message_per_contact_and_step(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    emu.set_random_faults(seed=11, rate=0.35)
    now = ISSUED_AT
    for at in (
        "2026-11-01T00:05:00+01:00",
        "2026-11-12T09:00:00+01:00",
        "2026-11-15T09:00:00+01:00",
    ):
        now, _ = until_settled(billed, settings, max(now, berlin(at)), step=timedelta(minutes=2))
    emu.set_random_faults(seed=0, rate=0)
    expected = Counter(
        f"INV-2026-000001/{step}/{who}"
        for step in ("issued", "due-3", "due+0")
        for who in (f"user:{USER}", f"channel:{CHANNEL}")
    )
    assert delivered(emu) == expected


@sqlite_only
def test_a_message_that_cannot_succeed_fails_at_once_and_is_reported(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    emu.fail_next("conversations.open", error="account_inactive")
    report = remind(billed, settings, ISSUED_AT)
    failed = f"INV-2026-000001/issued/user:{USER}"
    assert [s.key for s in report.failed] == [failed]
    assert states(billed)[failed] == "failed"
    [alert] = emu.messages(AUDIT)
    assert "account_inactive" in alert["text"] and f"<@{USER}>" in alert["text"]
    assert alert["metadata"]["event_type"] == "billing_delivery_failed"
    with billed.db.transaction() as session:
        [entry] = session.scalars(select(t.AuditEntry).filter_by(action="notification.failed"))
        assert entry.subject == failed and entry.actor == "billing-bot"
    assert remind(billed, settings, ISSUED_AT + timedelta(hours=1)).sent == []
    assert len(emu.messages(AUDIT)) == 1


@sqlite_only
def test_a_message_is_given_up_after_eight_tries(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    emu.fail_next("conversations.open", status=500, times=8)  # only the DM fails
    now, reports = until_settled(billed, settings, ISSUED_AT, step=timedelta(minutes=31))
    victim = f"INV-2026-000001/issued/user:{USER}"
    assert [s.key for r in reports for s in r.failed] == [victim]
    assert sum(1 for r in reports for s in r.retrying if s.key == victim) == 7
    assert len(emu.calls_to("conversations.open")) == 8
    assert keys(emu, DM) == []
    [alert] = emu.messages(AUDIT)
    assert "after 8 tries" in alert["text"]


@sqlite_only
def test_a_reminder_for_an_invoice_paid_meanwhile_is_not_sent(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    from tests.factories import payment

    remind(billed, settings, ISSUED_AT)
    emu.fail_next("chat.postMessage", status=500, times=2)
    remind(billed, settings, berlin("2026-11-12T09:00:00+01:00"))  # both due-3 fail, retry later
    [doc] = billed.export_invoices(org_key="acme")
    billed.import_payments(
        [payment("p1", doc["amount_due"], "2026-11-12T10:00:00+01:00")],
        at=berlin("2026-11-12T10:00:00+01:00"),
    )
    report = remind(billed, settings, berlin("2026-11-12T11:00:00+01:00"))
    assert report.sent == []
    assert {s.detail for s in report.skipped} == {"invoice paid"}
    assert delivered(emu) == Counter(list(NOTICES))
