"""After downtime: the missed invoices go out, and only the latest reminder step of each."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from billing_core.services import BillingService
from billing_core.settings import Settings
from notifications.jobs import remind, run_billing_job
from notifications.scheduler import SchedulerConfig, start_scheduler
from tests.notifications.conftest import CHANNEL, USER, berlin, keys, states, usage, wait_for
from tests.slack_emulator import SlackEmulator

DM = "D" + USER
INV1, INV2 = "INV-2026-000001", "INV-2026-000002"
THREE_WEEKS_LATE = berlin("2026-12-22T10:00:00+01:00")


def delivered(emu: SlackEmulator, who: str, channel: str) -> list[str]:
    return [k.removesuffix(f"/{who}") for k in keys(emu, channel)]


def test_remind_three_weeks_late_sends_only_the_latest_step_of_each_invoice(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    remind(billed, settings, berlin("2026-11-01T00:05:00+01:00"))
    remind(billed, settings, berlin("2026-11-12T09:00:00+01:00"))
    billed.import_usage([usage("2026-11")])
    # Billing ran on December 1st, then the process died before it reminded anybody.
    assert run_billing_job(billed, berlin("2026-12-01T00:05:00+01:00")).issued == [INV2]

    report = remind(billed, settings, THREE_WEEKS_LATE)

    before = [f"{INV1}/issued", f"{INV1}/due-3"]
    late = [f"{INV1}/due+7", f"{INV2}/due+7"]
    assert delivered(emu, f"user:{USER}", DM) == before + late
    assert delivered(emu, f"channel:{CHANNEL}", CHANNEL) == before + late
    rows = states(billed)
    for who in (f"user:{USER}", f"channel:{CHANNEL}"):
        assert rows[f"{INV1}/due+0/{who}"] == rows[f"{INV1}/due+3/{who}"] == "skipped"
        # The notice of INV2 never went out: it is merged into the step sent instead.
        assert rows[f"{INV2}/issued/{who}"] == "skipped"
        assert [rows[f"{INV2}/due{o}/{who}"] for o in ("-3", "+0", "+3")] == ["skipped"] * 3
    notes = {s.key: s.detail for s in report.skipped}
    assert notes[f"{INV2}/issued/user:{USER}"] == "merged into due+7"
    assert remind(billed, settings, THREE_WEEKS_LATE).sent == []


def test_a_scheduler_started_three_weeks_late_catches_up_at_once(
    billed: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    remind(billed, settings, berlin("2026-11-01T00:05:00+01:00"))
    billed.import_usage([usage("2026-11")])
    # Down from November 2nd: no billing on December 1st, no reminders for INV1.
    hourly = SchedulerConfig(billing_every=timedelta(hours=1), remind_every=timedelta(hours=1))
    running = start_scheduler(
        settings=settings, service=billed, config=hourly, clock=lambda: THREE_WEEKS_LATE
    )
    try:
        wait_for(lambda: len(keys(emu, DM)) >= 3 and len(keys(emu, CHANNEL)) >= 3)
    finally:
        running.shutdown()
    for who, channel in ((f"user:{USER}", DM), (f"channel:{CHANNEL}", CHANNEL)):
        # INV2, issued now, is announced (its steps came due before it existed);
        # INV1 gets only its latest step.
        assert Counter(delivered(emu, who, channel)) == Counter(
            [f"{INV1}/issued", f"{INV1}/due+7", f"{INV2}/issued"]
        )
