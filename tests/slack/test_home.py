"""The App Home tab: the user's billing groups with their balance and what they owe."""

from __future__ import annotations

from typing import Any

from billing_core.services import BillingService
from billing_core.settings import Settings
from tests.slack.conftest import DEV, STRANGER, running
from tests.slack.slackside import Slack, as_text, wait_for
from tests.slack_emulator import SlackEmulator


def home_of(slack: Slack, emulator: SlackEmulator, user: str) -> dict[str, Any]:
    before = len(emulator.published_views(user))
    assert slack.home(user).status_code == 200
    views = wait_for(
        lambda: (v := emulator.published_views(user)) and len(v) > before and v,
        what=f"a Home tab for {user}",
    )
    view: dict[str, Any] = views[-1]["view"]
    return view


def test_home_shows_each_group_with_balance_and_owed(slack: Slack, emulator: SlackEmulator) -> None:
    view = home_of(slack, emulator, DEV)
    assert view["type"] == "home"
    shown = as_text(view)
    assert "Engineering (`eng`)" in shown
    assert "Balance 01.03.2026 – 31.03.2026: 119,00 € due if invoiced now" in shown
    assert "Unpaid: 1.469,06 € in 1 invoices" in shown
    assert "Unpaid: 1.234 ¥ in 1 invoices — 1 overdue" in shown
    assert "Operations & Support (`ops`)" in shown


def test_home_of_a_non_member_explains_why_it_is_empty(
    slack: Slack, emulator: SlackEmulator
) -> None:
    shown = as_text(home_of(slack, emulator, STRANGER))
    assert "Only members of Acme Inc can see its billing." in shown
    assert "€" not in shown


def test_the_messages_tab_publishes_nothing(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    with running(settings, billed, emulator) as slack:
        response = slack.event({"type": "app_home_opened", "user": DEV, "tab": "messages"})
        assert response.status_code == 200
    assert emulator.calls_to("views.publish") == []
