"""``assign PROJECT GROUP``: asked first; only a fresh, rightful Confirm moves the project."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing_core.services import BillingService
from tests.slack.conftest import (
    ADMIN,
    AUDIT,
    DEV,
    Clock,
    acme_document,
    audit_log,
    project_group,
)
from tests.slack.slackside import Slack, as_text, buttons, wait_for
from tests.slack_emulator import SlackEmulator


def test_confirm_moves_the_project_and_replaces_the_question(
    slack: Slack, billed: BillingService, emulator: SlackEmulator
) -> None:
    question = slack.ask(ADMIN, "assign web ops")
    assert "Move project `web` from `eng` to `ops`?" in as_text(question)
    assert as_text(question).endswith("[confirm] [cancel]")
    assert project_group(billed, "web") == "eng", "asking changes nothing"

    assert slack.click(ADMIN, buttons(question)["assign_confirm"], key="c1").status_code == 200
    done = slack.answer("c1")
    assert done["replace_original"] is True
    assert "Project `web` moved from `eng` to `ops`." in as_text(done)
    assert not buttons(done), "the buttons are gone"
    assert project_group(billed, "web") == "ops"
    assert audit_log(billed) == [(ADMIN, "project.assign", "acme/web")]
    line = wait_for(lambda: emulator.messages(AUDIT), what="the audit line")[0]
    assert "Project `web` moved from `eng` to `ops`." in as_text(line)
    assert line["text"].startswith("Project web moved from eng to ops. By <@U0ADMIN> at 2026-03-10")


def test_cancel_changes_nothing(slack: Slack, billed: BillingService) -> None:
    question = slack.ask(ADMIN, "assign web ops")
    slack.click(ADMIN, buttons(question)["assign_cancel"], key="c1")
    answer = slack.answer("c1")
    assert "Cancelled: project `web` stays in `eng`. Nothing was changed." in as_text(answer)
    assert answer["replace_original"] is True
    assert project_group(billed, "web") == "eng"
    assert audit_log(billed) == []


def test_a_replayed_confirm_changes_nothing_and_says_so(
    slack: Slack, billed: BillingService
) -> None:
    question = slack.ask(ADMIN, "assign web ops")
    confirm = buttons(question)["assign_confirm"]
    slack.click(ADMIN, confirm, key="first")
    slack.answer("first")
    slack.click(ADMIN, confirm, key="again")
    replay = as_text(slack.answer("again"))
    assert "Project `web` moved to `ops` since you were asked; nothing was changed." in replay
    assert project_group(billed, "web") == "ops"
    assert len(audit_log(billed)) == 1


def test_a_stale_confirm_does_not_undo_a_later_move(slack: Slack, billed: BillingService) -> None:
    to_ops = slack.ask(ADMIN, "assign web ops")
    to_tokyo = slack.ask(ADMIN, "assign web tokyo")
    slack.click(ADMIN, buttons(to_tokyo)["assign_confirm"], key="tokyo")
    assert "moved from `eng` to `tokyo`" in as_text(slack.answer("tokyo"))

    slack.click(ADMIN, buttons(to_ops)["assign_confirm"], key="ops")
    stale = as_text(slack.answer("ops"))
    assert "moved to `tokyo` since you were asked; nothing was changed" in stale
    assert "Run `assign` again" in stale
    assert project_group(billed, "web") == "tokyo"


def test_an_old_confirmation_expires(slack: Slack, billed: BillingService, clock: Clock) -> None:
    question = slack.ask(ADMIN, "assign web ops")
    clock.now += timedelta(minutes=16)
    slack.click(ADMIN, buttons(question)["assign_confirm"], key="late")
    late = as_text(slack.answer("late"))
    assert "This confirmation has expired; nothing was changed." in late
    assert "Run `/billing assign web ops` again." in late
    assert project_group(billed, "web") == "eng"


def test_confirm_rechecks_the_admins_rights(slack: Slack, billed: BillingService) -> None:
    question = slack.ask(ADMIN, "assign web ops")
    demoted = acme_document()
    demoted["organizations"][0]["members"][0]["role"] = "member"
    demoted["organizations"][0]["members"].append({"slack_user_id": "U0BOSS", "role": "admin"})
    billed.load(demoted, at=datetime(2026, 3, 10, tzinfo=UTC))

    slack.click(ADMIN, buttons(question)["assign_confirm"], key="c1")
    refused = as_text(slack.answer("c1"))
    assert "Only organization admins can change billing." in refused
    assert "@U0BOSS" in refused
    assert project_group(billed, "web") == "eng"
    assert audit_log(billed) == []


def test_someone_elses_confirm_is_refused(slack: Slack, billed: BillingService) -> None:
    question = slack.ask(ADMIN, "assign web ops")
    slack.click(DEV, buttons(question)["assign_confirm"], key="c1")
    assert "nothing was changed" in as_text(slack.answer("c1"))
    assert project_group(billed, "web") == "eng"


def test_a_member_is_not_even_asked(slack: Slack, billed: BillingService) -> None:
    answer = slack.ask(DEV, "assign web ops")
    shown = as_text(answer)
    assert "Only organization admins can change billing." in shown
    assert f"Ask @{ADMIN}." in shown
    assert not buttons(answer)


def test_assign_by_dm_is_confirmed_in_the_dm(
    slack: Slack, billed: BillingService, emulator: SlackEmulator
) -> None:
    question = slack.ask_dm(ADMIN, "assign api eng")
    assert as_text(question).endswith("[confirm] [cancel]")
    slack.click(ADMIN, buttons(question)["assign_confirm"], key="dm", channel=f"D{ADMIN}")
    assert "Project `api` moved from `ops` to `eng`." in as_text(slack.answer("dm"))
    assert project_group(billed, "api") == "eng"
    wait_for(lambda: emulator.messages(AUDIT), what="the audit line")


def test_assign_by_mention_is_asked_privately_and_confirmed(
    slack: Slack, billed: BillingService, emulator: SlackEmulator
) -> None:
    assert slack.mention(ADMIN, "assign jp ops").status_code == 200
    question = wait_for(lambda: emulator.ephemerals(ADMIN), what="the ephemeral question")[0]
    assert question["channel"] == "C0GENERAL"
    slack.click(ADMIN, buttons(question)["assign_confirm"], key="mention")
    assert "Project `jp` moved from `tokyo` to `ops`." in as_text(slack.answer("mention"))
    assert project_group(billed, "jp") == "ops"
