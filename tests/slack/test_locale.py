"""Amounts and dates in the reader's locale: Slack's, else the organization's, else the default."""

from __future__ import annotations

import pytest

from billing_core.services import BillingService
from billing_core.settings import Settings
from tests.slack.conftest import ADMIN, DEV, JA, bill_acme, running, slack_settings
from tests.slack.slackside import Slack, as_text
from tests.slack_emulator import SlackEmulator


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (DEV, ["1.469,06 € unpaid", "1.234 ¥ unpaid", "due 08.03.2026 — overdue"]),
        (ADMIN, ["€1,469.06 unpaid", "¥1,234 unpaid", "due Mar 8, 2026 — overdue"]),
        (JA, ["€1,469.06 unpaid", "￥1,234 unpaid", "due 2026/03/08 — overdue"]),
    ],
)
def test_amounts_are_shown_in_the_users_slack_locale_and_the_groups_currency(
    slack: Slack, user: str, expected: list[str]
) -> None:
    shown = as_text(slack.ask(user, "owed"))
    for part in expected:
        assert part in shown, shown


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (DEV, ["Tax 19 %: 234,56 €", "Total: 1.469,06 €", "15.03.2026"]),
        (ADMIN, ["Tax 19%: €234.56", "Total: €1,469.06", "Mar 15, 2026"]),
        (JA, ["Tax 19%: €234.56", "2026/03/15", "3,086,250,000"]),
    ],
)
def test_an_invoice_is_shown_in_the_users_locale(
    slack: Slack, user: str, expected: list[str]
) -> None:
    shown = as_text(slack.ask_dm(user, "invoice INV-2026-000002"))
    for part in expected:
        assert part in shown, shown


def test_without_a_slack_locale_the_organizations_is_used(
    settings: Settings, service: BillingService, emulator: SlackEmulator
) -> None:
    bill_acme(service, locale="de_DE")
    emulator.add_user(ADMIN, locale="")
    with running(settings, service, emulator) as slack:
        assert "1.469,06 € unpaid" in as_text(slack.ask(ADMIN, "owed"))


def test_without_user_or_organization_locale_default_locale_is_used(
    emulator: SlackEmulator, service: BillingService, db_url: str
) -> None:
    bill_acme(service, locale=None)
    emulator.add_user(ADMIN, locale="")
    settings = slack_settings(emulator, db_url, DEFAULT_LOCALE="ja_JP")
    with running(settings, service, emulator) as slack:
        assert "￥1,234 unpaid" in as_text(slack.ask(ADMIN, "owed"))


def test_users_info_is_asked_once_per_user_for_a_while(
    slack: Slack, emulator: SlackEmulator
) -> None:
    for text in ("owed", "balance", "help", "credits"):
        slack.ask(DEV, text)
    slack.ask_dm(DEV, "owed")
    asked = [c for c in emulator.calls_to("users.info") if c.params.get("user") == DEV]
    assert len(asked) == 1


def test_a_member_is_answered_even_when_users_info_fails(
    slack: Slack, emulator: SlackEmulator
) -> None:
    emulator.fail_next("users.info", status=500)
    shown = as_text(slack.ask(DEV, "owed"))
    assert "€1,469.06 unpaid" in shown, "organization locale (en_US) when Slack cannot tell"
