"""A quarter of billing and reminders in Berlin, run at each step's moment and just before."""

from __future__ import annotations

from billing_core.services import BillingService
from billing_core.settings import Settings
from notifications.jobs import remind, run_billing_job
from tests.factories import payment
from tests.notifications.conftest import (
    CHANNEL,
    USER,
    acme,
    berlin,
    block_kit_errors,
    keys,
    sqlite_only,
    states,
    usage,
)
from tests.slack_emulator import SlackEmulator

DM = "D" + USER


def sent_keys(emu: SlackEmulator) -> list[str]:
    return keys(emu, DM) + keys(emu, CHANNEL)


def test_a_quarter_of_notices_and_reminders(
    service: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    service.load(acme(), at=berlin("2026-10-01T00:00:00+02:00"))
    service.import_usage([usage("2026-10"), usage("2026-11"), usage("2026-12")])

    def run(at: str) -> list[str]:
        """Bill and remind at ``at``; the keys of the messages this sent to the user."""
        before = set(sent_keys(emu))
        now = berlin(at)
        run_billing_job(service, now)
        report = remind(service, settings, now)
        assert report.failed == [] and report.retrying == []
        new = [k for k in sent_keys(emu) if k not in before]
        assert sorted(s.key for s in report.sent) == sorted(new)
        return [k for k in new if k.endswith(f"user:{USER}")]

    inv1, inv2 = "INV-2026-000001", "INV-2026-000002"
    assert run("2026-10-31T23:59:00+01:00") == []
    assert run("2026-11-01T00:05:00+01:00") == [f"{inv1}/issued/user:{USER}"]
    assert run("2026-11-01T00:10:00+01:00") == []
    # Due on November 15th: steps at 09:00 Berlin on the 12th, 15th, 18th and 22nd.
    assert run("2026-11-12T08:59:59+01:00") == []
    assert run("2026-11-12T09:00:00+01:00") == [f"{inv1}/due-3/user:{USER}"]
    assert run("2026-11-12T15:00:00+01:00") == []
    assert run("2026-11-15T08:59:00+01:00") == []
    assert run("2026-11-15T09:00:00+01:00") == [f"{inv1}/due+0/user:{USER}"]

    # Paid on the 16th: nothing more for the first invoice.
    [doc] = service.export_invoices(org_key="acme")
    paid = service.import_payments(
        [payment("pay-1", doc["amount_due"], "2026-11-16T10:00:00+01:00")],
        at=berlin("2026-11-16T10:00:00+01:00"),
    )
    assert paid.accepted == 1
    assert run("2026-11-18T09:00:00+01:00") == []
    assert run("2026-11-22T09:00:00+01:00") == []

    assert run("2026-12-01T00:05:00+01:00") == [f"{inv2}/issued/user:{USER}"]
    for day, step in (("12", "due-3"), ("15", "due+0"), ("18", "due+3"), ("22", "due+7")):
        assert run(f"2026-12-{day}T08:59:00+01:00") == []
        assert run(f"2026-12-{day}T09:00:00+01:00") == [f"{inv2}/{step}/user:{USER}"]
    assert run("2026-12-31T09:00:00+01:00") == []
    assert run("2027-01-01T00:05:00+01:00") == [f"INV-2027-000001/issued/user:{USER}"]

    # The channel contact got exactly the same messages, each once.
    user_keys = keys(emu, DM)
    channel_keys = keys(emu, CHANNEL)
    assert [k.replace(f"user:{USER}", "") for k in user_keys] == [
        k.replace(f"channel:{CHANNEL}", "") for k in channel_keys
    ]
    assert len(set(user_keys)) == len(user_keys) == 9
    for message in emu.messages(DM) + emu.messages(CHANNEL):
        assert block_kit_errors(message["blocks"]) == []
    rows = states(service)
    assert f"{inv1}/due+3/user:{USER}" not in rows  # paid: no more steps at all
    assert {s for k, s in rows.items() if k.startswith(inv2)} == {"sent"}


@sqlite_only
def test_messages_are_in_the_readers_locale_with_a_pay_button(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    remind(billed, settings, berlin("2026-11-01T00:05:00+01:00"))
    [dm] = emu.messages(DM)
    [post] = emu.messages(CHANNEL)
    assert "4,00\xa0€" in dm["text"]  # users.info says de-DE
    assert "4,00\xa0€" in post["text"]  # the organization's de_DE
    assert "15.11.2026" in dm["text"]
    [actions] = [b for b in dm["blocks"] if b["type"] == "actions"]
    assert actions["elements"][0]["url"] == "https://pay.example/invoices/INV-2026-000001"
