"""Who may do what: Slack's signature first, then membership, guests and admin rights."""

from __future__ import annotations

import json
import time

import pytest

from billing_core.services import BillingService
from billing_core.settings import Settings
from tests.slack.conftest import (
    ADMIN,
    DEV,
    GUEST,
    STRANGER,
    audit_log,
    bill_acme,
    project_group,
    redemptions,
    running,
)
from tests.slack.slackside import SECRET, Slack, as_text, buttons, sign
from tests.slack_emulator import SlackEmulator


def _bad_requests(slack: Slack) -> list[tuple[str, int]]:
    """Requests that must be refused: (description, HTTP status)."""
    body = slack.command_body(ADMIN, "redeem WELCOME10 eng", key="forged")
    now = int(time.time())
    form = "application/x-www-form-urlencoded"
    statuses = [
        (
            "wrong secret",
            slack.post(body, content_type=form, signature=sign(body, now, "not-the-secret")),
        ),
        (
            "signed for another body",
            slack.post(body, content_type=form, signature=sign(body + "&x=1", now)),
        ),
        ("six minutes old", slack.post(body, content_type=form, timestamp=now - 360)),
        ("from the future", slack.post(body, content_type=form, timestamp=now + 360)),
        (
            "no signature",
            slack.http.post("/slack/events", content=body, headers={"Content-Type": form}),
        ),
    ]
    return [(what, response.status_code) for what, response in statuses]


def test_bad_or_stale_signatures_get_401_and_nothing_runs(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    with running(settings, billed, emulator) as slack:
        refused = _bad_requests(slack)
        event = slack.dm(ADMIN, "redeem WELCOME10 eng", timestamp=int(time.time()) - 301)
        question = slack.ask(ADMIN, "assign web ops")
        click = slack.click(
            ADMIN, buttons(question)["assign_confirm"], key="late", timestamp=int(time.time()) - 600
        )
    # The server has stopped and drained its workers: anything that ran has finished.
    assert refused == [(what, 401) for what, _ in refused]
    assert (event.status_code, click.status_code) == (401, 401)
    assert redemptions(billed) == 0
    assert project_group(billed, "web") == "eng"
    assert audit_log(billed) == []
    assert emulator.responses("forged") == [] and emulator.responses("late") == []
    assert emulator.messages(f"D{ADMIN}") == []


def test_a_fresh_signature_is_accepted(slack: Slack) -> None:
    body = slack.command_body(DEV, "help", key="ok")
    now = int(time.time()) - 200  # within Slack's five minutes
    response = slack.post(
        body,
        content_type="application/x-www-form-urlencoded",
        signature=sign(body, now, SECRET),
        timestamp=now,
    )
    assert response.status_code == 200
    assert "Billing commands" in as_text(response.json())  # answered in the ack


def test_a_non_member_is_refused_with_the_admins_named(slack: Slack) -> None:
    for answer in (slack.ask(STRANGER, "balance"), slack.ask_dm(STRANGER, "owed")):
        shown = as_text(answer)
        assert "Only members of Acme Inc can see its billing." in shown
        assert f"Ask @{ADMIN} for access." in shown
        assert "€" not in shown


def test_help_is_open_to_anyone(slack: Slack) -> None:
    assert "Billing commands" in as_text(slack.ask(STRANGER, "help"))


def test_a_workspace_without_organization_is_refused(slack: Slack) -> None:
    shown = as_text(slack.ask(DEV, "balance", team="T0OTHER"))
    assert "This Slack workspace is not linked to a billing organization." in shown


@pytest.mark.parametrize("text", ["redeem WELCOME10 eng", "assign web ops"])
def test_a_member_cannot_change_billing(slack: Slack, billed: BillingService, text: str) -> None:
    for answer in (slack.ask(DEV, text), slack.ask_dm(DEV, text)):
        shown = as_text(answer)
        assert "Only organization admins can change billing." in shown
        assert f"Ask @{ADMIN}." in shown
        assert not buttons(answer)
    assert redemptions(billed) == 0
    assert project_group(billed, "web") == "eng"
    assert audit_log(billed) == []


def test_with_open_read_access_a_guest_is_refused_but_other_colleagues_read(
    settings: Settings, service: BillingService, emulator: SlackEmulator
) -> None:
    bill_acme(service, open_read_access=True)
    with running(settings, service, emulator) as slack:
        guest = as_text(slack.ask(GUEST, "owed"))
        assert "Guests cannot see Acme Inc's billing." in guest
        assert f"Ask @{ADMIN} for access." in guest
        assert "Guests cannot see" in as_text(slack.ask_dm(GUEST, "balance"))

        emulator.add_user("U0SINGLE", is_ultra_restricted=True)
        single_channel = as_text(slack.ask("U0SINGLE", "owed"))
        assert "Guests cannot see Acme Inc's billing." in single_channel

        colleague = as_text(slack.ask(STRANGER, "owed"))
        assert "€1,469.06 unpaid" in colleague
        reader_change = as_text(slack.ask(STRANGER, "redeem WELCOME10 eng"))
        assert "Only organization admins can change billing." in reader_change
    assert redemptions(service) == 0


def test_a_guest_is_recognised_from_users_info(
    settings: Settings, service: BillingService, emulator: SlackEmulator
) -> None:
    bill_acme(service, open_read_access=True)
    with running(settings, service, emulator) as slack:
        slack.ask(GUEST, "owed")
    lookups = [c.params for c in emulator.calls_to("users.info") if c.params["user"] == GUEST]
    assert lookups and all(str(p.get("include_locale")).lower() in ("1", "true") for p in lookups)


def test_url_verification_needs_a_valid_signature(slack: Slack) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "x"})
    signed = slack.post(body, content_type="application/json")
    assert (signed.status_code, signed.json()) == (200, {"challenge": "c-123"})
    forged = slack.post(body, content_type="application/json", signature="v0=00")
    assert forged.status_code == 401
