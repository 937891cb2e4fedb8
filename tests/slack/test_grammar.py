"""The /billing grammar: text -> command, or a refusal saying what was wrong and what works."""

from __future__ import annotations

import pytest

from billing_core.errors import InvalidInput
from bot import commands as c


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("", c.Help()),
        ("   ", c.Help()),
        ("help", c.Help()),
        ("HELP", c.Help()),
        ("balance", c.Balance()),
        ("Balance eng", c.Balance("eng")),
        ("owed ops", c.Owed("ops")),
        ("invoices", c.Invoices()),
        ("invoice inv-2026-000001", c.Invoice("INV-2026-000001")),
        ("payments eng", c.Payments("eng")),
        ("credits", c.Credits()),
        ("groups", c.Groups()),
        ("usage", c.UsageChart()),
        ("Usage eng", c.UsageChart("eng")),
        ("export", c.Export()),
        ("export tokyo", c.Export("tokyo")),
        ("redeem WELCOME10", c.Redeem("WELCOME10")),
        ("redeem welcome10 eng", c.Redeem("welcome10", "eng")),
        ("assign web ops", c.Assign("web", "ops")),
        ("  assign   web\tops ", c.Assign("web", "ops")),
    ],
)
def test_commands_are_parsed(text: str, command: c.Command) -> None:
    assert c.parse(text) == command


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        (
            "balnce",
            "I don't know the subcommand `balnce`.",
            "Did you mean `/billing balance [GROUP]`?",
        ),
        ("xyzzy", "I don't know the subcommand `xyzzy`.", "`/billing help` lists what I can do."),
        ("invoice", "`invoice` needs NUMBER.", "Use `/billing invoice NUMBER`."),
        ("assign web", "`assign` needs GROUP.", "Use `/billing assign PROJECT GROUP`."),
        ("owed a b c", "`owed` got more than it takes: `b c`.", "Use `/billing owed [GROUP]`."),
        ("groups x", "`groups` takes no arguments.", "Use `/billing groups`."),
        ("usge", "I don't know the subcommand `usge`.", "Did you mean `/billing usage [GROUP]`?"),
        (
            "exprt eng",
            "I don't know the subcommand `exprt`.",
            "Did you mean `/billing export [GROUP]`?",
        ),
        (
            "export eng ops",
            "`export` got more than it takes: `ops`.",
            "Use `/billing export [GROUP]`.",
        ),
        (
            "redeem <!here>",
            "`‹!here›` is not a valid code: use letters, digits, '-', '_' or '.' (at most 64).",
            "Use `/billing redeem CODE [GROUP]`.",
        ),
        ("balance " + "g" * 65, "is not a valid group", "Use `/billing balance [GROUP]`."),
    ],
)
def test_mistakes_say_what_was_wrong_and_what_works(text: str, message: str, hint: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        c.parse(text)
    assert message in refused.value.message
    assert refused.value.hint == hint


def test_the_command_name_in_hints_follows_slack_command() -> None:
    with pytest.raises(InvalidInput) as refused:
        c.parse("invoice", command="/bill")
    assert refused.value.hint == "Use `/bill invoice NUMBER`."


def test_echoed_text_cannot_carry_markup_or_break_out_of_code() -> None:
    with pytest.raises(InvalidInput) as refused:
        c.parse("`<@U1>&` " * 10)
    assert "<" not in refused.value.message and "&" not in refused.value.message
    assert refused.value.message.count("`") == 2


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ("<@UBOT> owed eng", "owed eng"),
        ("<@UBOT|billing>: balance", "balance"),
        ("/billing invoices", "invoices"),
        ("billing invoices", "invoices"),
        ("<@UBOT> /billing groups", "groups"),
        ("owed", "owed"),
        ("redeem A&amp;B", "redeem A&B"),
    ],
)
def test_dm_and_mention_text_is_reduced_to_the_subcommand(text: str, stripped: str) -> None:
    assert c.strip_invocation(text) == stripped


def test_every_subcommand_is_in_help_and_admin_ones_are_marked() -> None:
    names = [u.name for u in c.USAGES]
    assert names == [
        "help",
        "balance",
        "owed",
        "invoices",
        "invoice",
        "payments",
        "credits",
        "groups",
        "usage",
        "export",
        "redeem",
        "assign",
    ]
    assert c.ADMIN_COMMANDS == {"export", "redeem", "assign"}
