"""Every /billing subcommand, for a member and an admin, as a slash command, a DM and a mention."""

from __future__ import annotations

from typing import Any

import pytest

from billing_core.services import BillingService
from tests.slack.blockkit import assert_everything_sent_is_valid
from tests.slack.conftest import ADMIN, AUDIT, DEV, audit_log, redemptions
from tests.slack.slackside import Slack, as_text, buttons, plain_spaces, wait_for
from tests.slack_emulator import SlackEmulator

# What each read answers for ADMIN (Slack locale en-US) and DEV (de-DE); see bill_acme.
READS: list[tuple[str, list[str], list[str]]] = [
    ("help", ["/billing balance [GROUP]", "/billing assign PROJECT GROUP", "(admins)"], []),
    ("", ["/billing invoice NUMBER"], []),
    (
        "balance",
        ["Engineering (`eng`)", "Requests", "Tax 19%: €19.00", "Due if invoiced now: €119.00"],
        ["Tax 19 %: 19,00 €", "Due if invoiced now: 119,00 €", "01.03.2026 – 31.03.2026"],
    ),
    ("balance eng", ["Due if invoiced now: €119.00"], ["Due if invoiced now: 119,00 €"]),
    (
        "owed",
        ["€1,469.06 unpaid", "`INV-2026-000003`: ¥1,234, due Mar 8, 2026 — overdue"],
        ["1.469,06 € unpaid", "`INV-2026-000003`: 1.234 ¥, due 08.03.2026 — overdue"],
    ),
    (
        "invoices",
        ["`INV-2026-000002` · Engineering", "€1,469.06 · open", "`INV-2026-000001`", "paid"],
        ["1.469,06 € · open · due 15.03.2026", "11,90 € · paid"],
    ),
    (
        "invoice INV-2026-000002",
        ["Invoice INV-2026-000002", "Total: €1,469.06", "↳ `web`: €1,234.50"],
        ["Total: 1.469,06 €", "Outstanding: 1.469,06 €"],
    ),
    ("invoice inv-2026-000001", ["Invoice INV-2026-000001", "Credits applied: -€5.00"], []),
    (
        "payments",
        ["€6.90 by card on Feb 3, 2026", "ref `pay-1`", "↳ paid `INV-2026-000001`: €6.90"],
        ["6,90 € by card on 03.02.2026"],
    ),
    (
        "credits",
        ["Operations & Support (`ops`): €20.00 left of €20.00 (goodwill) · expires Dec 31, 2026"],
        ["20,00 € left of 20,00 € (goodwill) · expires 31.12.2026"],
    ),
    (
        "groups",
        ["Engineering (`eng`) · EUR · card · 14 days to pay", "Projects: `web`", "@U0FIN"],
        ["Operations & Support (`ops`)", "#C0BILLING", "Projects: `jp`"],
    ),
]


def ask(slack: Slack, surface: str, user: str, text: str) -> dict[str, Any]:
    if surface == "slash":
        return slack.ask(user, text)
    return slack.ask_dm(user, text)


@pytest.mark.parametrize("surface", ["slash", "dm"])
@pytest.mark.parametrize("user", [ADMIN, DEV])
def test_every_read_command_answers_members_and_admins_in_their_locale(
    slack: Slack, surface: str, user: str
) -> None:
    for text, english, german in READS:
        answer = ask(slack, surface, user, text)
        shown = as_text(answer)
        for expected in english if user == ADMIN else german:
            assert expected in shown, f"{text!r} for {user} via {surface}:\n{shown}"
        assert answer["text"], "every answer has a text fallback"
    assert assert_everything_sent_is_valid(slack.emu) >= len(READS)


def test_slash_answers_are_ephemeral_and_come_through_response_url(
    slack: Slack, emulator: SlackEmulator
) -> None:
    answer = slack.ask(DEV, "owed")
    assert answer["response_type"] == "ephemeral"
    assert not emulator.messages(), "nothing is posted in public"


def test_a_dm_is_answered_in_the_dm(slack: Slack, emulator: SlackEmulator) -> None:
    answer = slack.ask_dm(DEV, "/billing owed")
    assert "1.469,06 € unpaid" in as_text(answer)
    assert [c.params["channel"] for c in emulator.calls_to("chat.postMessage")] == [f"D{DEV}"]


def test_a_mention_is_answered_privately_to_the_asker(
    slack: Slack, emulator: SlackEmulator
) -> None:
    response = slack.mention(DEV, "owed")
    assert response.status_code == 200
    ephemeral = wait_for(lambda: emulator.ephemerals(DEV), what="an ephemeral answer")[0]
    assert ephemeral["channel"] == "C0GENERAL"
    assert "1.469,06 € unpaid" in as_text(ephemeral)
    assert not emulator.messages("C0GENERAL"), "nothing is posted in the channel"


def test_the_pay_button_links_to_the_payment_page_while_unpaid(slack: Slack) -> None:
    open_invoice = slack.ask(ADMIN, "invoice INV-2026-000002")
    pay = buttons(open_invoice)["pay_invoice"]
    assert pay["url"] == "https://pay.example.test/invoices/INV-2026-000002"
    assert plain_spaces(pay["text"]["text"]) == "Pay €1,469.06"
    assert "pay_invoice" not in buttons(slack.ask(ADMIN, "invoice INV-2026-000001"))


def test_clicking_pay_is_acknowledged(slack: Slack) -> None:
    open_invoice = slack.ask(ADMIN, "invoice INV-2026-000002")
    response = slack.click(ADMIN, buttons(open_invoice)["pay_invoice"], key="pay")
    assert response.status_code == 200


MISTAKES = [
    ("balnce", ["I don't know the subcommand `balnce`.", "Did you mean `/billing balance"]),
    ("frobnicate", ["I don't know the subcommand `frobnicate`.", "`/billing help`"]),
    ("balance nope", ["There is no billing group `nope`.", "Groups: eng, ops, tokyo."]),
    ("invoice", ["`invoice` needs NUMBER.", "Use `/billing invoice NUMBER`."]),
    ("invoice INV-2099-000001", ["There is no invoice `INV-2099-000001`"]),
    ("invoices eng ops", ["`invoices` got more than it takes: `ops`."]),
    ("owed <!channel>", ["is not a valid group", "Use `/billing owed [GROUP]`."]),
    ("groups all", ["`groups` takes no arguments."]),
]


def test_mistakes_are_answered_with_what_was_wrong_and_what_works(slack: Slack) -> None:
    for text, expected in MISTAKES:
        shown = as_text(slack.ask(DEV, text))
        for part in expected:
            assert part in shown, f"{text!r}:\n{shown}"
        assert "Traceback" not in shown


def test_an_admin_redeems_a_coupon_and_the_audit_channel_hears_of_it(
    slack: Slack, billed: BillingService, emulator: SlackEmulator
) -> None:
    answer = slack.ask(ADMIN, "redeem welcome10 eng")
    assert "Coupon WELCOME10 redeemed for Engineering (`eng`)." in as_text(answer)
    assert audit_log(billed) == [(ADMIN, "coupon.redeem", "acme/eng")]
    line = wait_for(lambda: emulator.messages(AUDIT), what="the audit line")[0]
    assert "Coupon WELCOME10 redeemed for Engineering" in line["text"]
    assert f"<@{ADMIN}>" in line["text"]
    balance = as_text(slack.ask(ADMIN, "balance eng"))
    assert "Coupons (WELCOME10): -€10.00" in balance


def test_an_admin_redeems_by_dm(slack: Slack, billed: BillingService) -> None:
    answer = slack.ask_dm(ADMIN, "redeem WELCOME10 ops")
    assert "Coupon WELCOME10 redeemed for Operations &amp; Support" in answer["text"]
    assert "Coupon WELCOME10 redeemed for Operations & Support" in as_text(answer)
    assert redemptions(billed) == 1


BAD_ADMIN_COMMANDS = [
    ("redeem WELCOME10", ["several billing groups; say which one", "eng, ops, tokyo"]),
    ("redeem NOPE eng", ["There is no coupon `NOPE`."]),
    ("redeem", ["`redeem` needs CODE."]),
    ("assign web", ["`assign` needs GROUP."]),
    ("assign web nowhere", ["There is no billing group `nowhere`."]),
    ("assign nothing ops", ["There is no project `nothing`.", "Projects: api, jp, web."]),
    ("assign web eng", ["Project `web` is already in `eng`"]),
]


def test_bad_admin_commands_change_nothing_and_say_why(
    slack: Slack, billed: BillingService
) -> None:
    for text, expected in BAD_ADMIN_COMMANDS:
        answer = slack.ask(ADMIN, text)
        for part in expected:
            assert part in as_text(answer), f"{text!r}:\n{as_text(answer)}"
        assert not buttons(answer)
    assert audit_log(billed) == []
    assert redemptions(billed) == 0


def test_a_coupon_redeemed_twice_is_refused_the_second_time(
    slack: Slack, billed: BillingService
) -> None:
    slack.ask(ADMIN, "redeem WELCOME10 eng")
    again = as_text(slack.ask(ADMIN, "redeem WELCOME10 eng"))
    assert "Group `eng` has already redeemed WELCOME10." in again
    assert redemptions(billed) == 1
