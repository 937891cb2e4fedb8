"""Which messages an invoice owes at a given moment: the rules, without a database."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from notifications.plan import (
    Action,
    InvoiceState,
    Known,
    NewRow,
    Supersede,
    alert_step,
    parse_alert_step,
    plan_invoice,
    step_due_at,
)

BERLIN = ZoneInfo("Europe/Berlin")
OFFSETS = (-3, 0, 3, 7)
USER, CHANNEL = "user:U1", "channel:C1"


def invoice(
    *,
    is_open: bool = True,
    issued_at: str = "2026-11-01T00:05:00+01:00",
    due: date = date(2026, 11, 15),
    recipients: tuple[str, ...] = (USER,),
) -> InvoiceState:
    return InvoiceState(
        invoice_id=1,
        number="INV-1",
        is_open=is_open,
        issued_at=datetime.fromisoformat(issued_at),
        due_date=due,
        tz=BERLIN,
        recipients=recipients,
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def summary(actions: list[Action]) -> list[tuple[str, str, str]]:
    out = []
    for a in actions:
        if isinstance(a, NewRow):
            out.append((a.step, a.recipient, a.state))
        else:
            out.append((a.step, a.recipient, "superseded"))
    return out


def test_steps_are_due_at_nine_in_the_organizations_zone() -> None:
    assert step_due_at(date(2026, 11, 15), -3, BERLIN) == at("2026-11-12T09:00:00+01:00")
    assert step_due_at(date(2026, 3, 29), 0, BERLIN) == at("2026-03-29T09:00:00+02:00")


def test_a_new_invoice_owes_each_contact_its_notice() -> None:
    actions = plan_invoice(
        invoice(recipients=(USER, CHANNEL)),
        {},
        offsets=OFFSETS,
        now=at("2026-11-01T00:05:00+01:00"),
    )
    assert summary(actions) == [("issued", USER, "pending"), ("issued", CHANNEL, "pending")]


def test_nothing_is_owed_before_the_invoice_is_issued_or_while_everything_is_recorded() -> None:
    known = {("issued", USER): Known(1, "sent")}
    assert (
        plan_invoice(invoice(), known, offsets=OFFSETS, now=at("2026-11-12T08:59:59+01:00")) == []
    )


def test_a_step_is_owed_from_nine_oclock() -> None:
    known = {("issued", USER): Known(1, "sent")}
    actions = plan_invoice(invoice(), known, offsets=OFFSETS, now=at("2026-11-12T09:00:00+01:00"))
    assert summary(actions) == [("due-3", USER, "pending")]


def test_after_downtime_only_the_latest_step_is_sent_and_the_missed_ones_are_skipped() -> None:
    known = {("issued", USER): Known(1, "sent"), ("due-3", USER): Known(2, "sent")}
    actions = plan_invoice(invoice(), known, offsets=OFFSETS, now=at("2026-11-20T12:00:00+01:00"))
    assert summary(actions) == [("due+3", USER, "pending"), ("due+0", USER, "skipped")]


def test_a_pending_step_is_superseded_by_a_later_one() -> None:
    known = {("issued", USER): Known(1, "sent"), ("due-3", USER): Known(2, "pending")}
    actions = plan_invoice(invoice(), known, offsets=OFFSETS, now=at("2026-11-15T09:00:00+01:00"))
    assert summary(actions) == [("due+0", USER, "pending"), ("due-3", USER, "superseded")]
    assert isinstance(actions[1], Supersede) and actions[1].row_id == 2


def test_a_notice_not_yet_sent_when_a_step_came_due_is_merged_into_that_step() -> None:
    actions = plan_invoice(invoice(), {}, offsets=OFFSETS, now=at("2026-11-22T10:00:00+01:00"))
    assert summary(actions) == [
        ("due+7", USER, "pending"),
        ("due-3", USER, "skipped"),
        ("due+0", USER, "skipped"),
        ("due+3", USER, "skipped"),
        ("issued", USER, "skipped"),
    ]
    pending_notice = {("issued", USER): Known(9, "pending")}
    actions = plan_invoice(
        invoice(), pending_notice, offsets=OFFSETS, now=at("2026-11-12T09:00:00+01:00")
    )
    assert summary(actions) == [("due-3", USER, "pending"), ("issued", USER, "superseded")]


def test_steps_due_before_the_invoice_was_issued_are_covered_by_its_notice() -> None:
    late = invoice(issued_at="2026-11-20T10:00:00+01:00")
    actions = plan_invoice(late, {}, offsets=OFFSETS, now=at("2026-11-20T10:00:00+01:00"))
    assert summary(actions) == [
        ("due-3", USER, "skipped"),
        ("due+0", USER, "skipped"),
        ("due+3", USER, "skipped"),
        ("issued", USER, "pending"),
    ]


def test_paid_invoices_get_their_notice_but_no_more_reminders() -> None:
    paid = invoice(is_open=False)
    assert summary(
        plan_invoice(paid, {}, offsets=OFFSETS, now=at("2026-11-20T10:00:00+01:00"))
    ) == [("issued", USER, "pending")]
    known = {("issued", USER): Known(1, "sent"), ("due+0", USER): Known(2, "pending")}
    actions = plan_invoice(paid, known, offsets=OFFSETS, now=at("2026-11-20T10:00:00+01:00"))
    assert summary(actions) == [("due+0", USER, "superseded")]
    assert isinstance(actions[0], Supersede) and actions[0].note == "invoice paid"


def test_old_paid_invoices_are_not_announced() -> None:
    long_after = at("2026-11-01T00:05:00+01:00") + timedelta(days=36)
    assert plan_invoice(invoice(is_open=False), {}, offsets=OFFSETS, now=long_after) == []


def test_a_removed_contacts_pending_message_is_dropped_and_a_new_contact_gets_the_latest_step() -> (
    None
):
    known = {
        ("issued", USER): Known(1, "sent"),
        ("due-3", USER): Known(2, "sent"),
        ("due+0", USER): Known(3, "pending"),
    }
    actions = plan_invoice(
        invoice(recipients=(CHANNEL,)), known, offsets=OFFSETS, now=at("2026-11-15T10:00:00+01:00")
    )
    assert summary(actions) == [
        ("due+0", CHANNEL, "pending"),
        ("due-3", CHANNEL, "skipped"),
        ("issued", CHANNEL, "skipped"),
        ("due+0", USER, "superseded"),
    ]


def test_alert_steps_name_the_failed_step_and_recipient() -> None:
    assert parse_alert_step(alert_step("due+3", "user:U1")) == ("due+3", "user:U1")
