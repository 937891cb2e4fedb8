"""The Block Kit builders, on plain domain objects: valid, within Slack's limits, escaped."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from babel import Locale

from billing_core.errors import NotAllowed
from billing_core.model import (
    Balance,
    ContactView,
    CreditView,
    GroupRef,
    GroupView,
    InvoiceSummary,
    InvoiceView,
    Owed,
    PaymentView,
    Totals,
)
from billing_core.money import Money
from billing_core.periods import Period
from billing_core.rating import Line, ProjectShare
from billing_core.services import Change
from bot import views
from bot.textview import render
from tests.slack.blockkit import assert_valid_blocks, assert_valid_home
from tests.slack.slackside import plain_spaces

EN = Locale.parse("en_US")
DE = Locale.parse("de_DE")
JA = Locale.parse("ja_JP")
MARCH = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
RND = GroupRef("rnd", "R&D <Labs>", "EUR")
YEN = GroupRef("tokyo", "Tokyo", "JPY")


def eur(amount: str, currency: str = "EUR") -> Money:
    return Money(Decimal(amount), currency)


def totals(
    amount: str, currency: str = "EUR", *, discount: str = "0", credits: str = "0"
) -> Totals:
    subtotal = eur(amount, currency)
    rest = subtotal - eur(discount, currency)
    applied = eur(credits, currency)
    zero = eur("0", currency)
    return Totals(subtotal, (), eur(discount, currency), zero, rest, (), applied, rest - applied)


def line(category: str, amount: str, *, projects: int = 1, currency: str = "EUR") -> Line:
    shares = tuple(
        ProjectShare(f"p{i}", Decimal(1), eur(amount, currency)) for i in range(projects)
    )
    return Line(
        "usage",
        "requests.GET",
        category,
        Decimal(1000),
        Decimal(1000),
        eur(amount, currency),
        shares,
    )


def invoice(
    number: str, *, lines: int = 2, status: str = "open", group: GroupRef = RND
) -> InvoiceView:
    cur = group.currency
    return InvoiceView(
        number=number,
        organization="acme",
        group=group,
        period=MARCH,
        invoice_date=date(2026, 4, 1),
        due_date=date(2026, 4, 15),
        status="open" if status == "open" else "paid",
        lines=tuple(
            line(f"Category {i}", "1.25" if cur == "EUR" else "125", currency=cur)
            for i in range(lines)
        ),
        totals=totals("2.50" if cur == "EUR" else "250", cur),
        amount_paid=eur("0", cur),
        tax_rate=Decimal("0.19"),
    )


def summary(number: str, *, status: str = "open") -> InvoiceSummary:
    return InvoiceSummary(
        number=number,
        group=RND,
        period=MARCH,
        invoice_date=date(2026, 4, 1),
        due_date=date(2026, 4, 15),
        status="open" if status == "open" else "paid",
        total=eur("2.50"),
        amount_due=eur("2.50"),
        amount_paid=eur("0"),
    )


def every_reply() -> list[views.Reply]:
    many = [summary(f"INV-2026-{i:06d}") for i in range(1, 80)]
    balances = [
        Balance(
            RND,
            MARCH,
            (line("Requests", "1.00"), line("Storage", "2.00")),
            totals("3.00", discount="0.30", credits="1.00"),
            ("WELCOME10",),
            Decimal("0.19"),
        ),
        Balance(YEN, MARCH, (), totals("0", "JPY"), (), None),
    ]
    owed = [Owed(RND, eur("2.50"), (summary("INV-2026-000001"),), ("INV-2026-000001",))]
    payment = PaymentView(
        "ref-1",
        "RCT-2026-000001",
        RND,
        eur("10.00"),
        "bank_transfer",
        datetime(2026, 3, 3, tzinfo=UTC),
        (("INV-2026-000001", eur("2.50")),),
        eur("7.50"),
    )
    credit = CreditView(RND, eur("20"), eur("5"), datetime(2026, 12, 31, tzinfo=UTC), "good <will>")
    group = GroupView(
        RND,
        "card",
        14,
        ("web", "api"),
        (
            ContactView("U0FIN", None, None),
            ContactView(None, "C0BILL", None),
            ContactView(None, None, "a&b@example.com"),
        ),
        "Pro",
    )
    change = Change(
        "U0ADMIN",
        "project.assign",
        "acme/web",
        {"billing_group": "eng"},
        {"billing_group": "R&D"},
        datetime(2026, 3, 10, tzinfo=UTC),
        "Project `web` moved from `eng` to `R&D <x>`.",
    )
    return [
        views.help_reply("/billing"),
        views.balance_reply(balances, DE),
        views.balance_reply([], EN),
        views.owed_reply(owed, JA),
        views.invoices_reply(many, EN),
        views.invoices_reply([], EN),
        views.invoice_reply(
            invoice("INV-2026-000009", lines=300),
            DE,
            payment_url="https://p.example/{number}?x={y}",
        ),
        views.invoice_reply(
            invoice("INV-2026-000010", status="paid", group=YEN), JA, payment_url=None
        ),
        views.payments_reply([payment] * 60, EN),
        views.credits_reply([credit], DE),
        views.groups_reply([group] * 40),
        views.assign_question(project="web", current="eng", target="ops", value='{"p":"web"}'),
        views.change_done(change),
        views.assign_cancelled(project="web", current="eng"),
        views.audit_line(change),
        views.refusal(NotAllowed("Only admins.", hint="Ask <@U0ADMIN> & co.")),
        views.apology("abc123"),
        views.home_reply(
            balances * 40, owed, EN, now=datetime(2026, 3, 10, tzinfo=UTC), command="/billing"
        ),
    ]


def test_every_reply_is_valid_block_kit_with_a_text_fallback() -> None:
    for reply in every_reply():
        message = reply.message()
        assert message["text"].strip()
        assert len(message["text"]) <= 3000
        if message["blocks"]:
            assert len(message["blocks"]) <= 100
            assert_valid_blocks(message["blocks"], message["text"][:40])


def test_a_message_never_has_more_than_50_blocks_and_says_what_was_cut() -> None:
    reply = views.payments_reply(
        [
            PaymentView(
                f"r{i}",
                f"RCT-{i}",
                RND,
                eur("1"),
                "card",
                datetime(2026, 3, 3, tzinfo=UTC),
                (),
                eur("1"),
            )
            for i in range(2000)
        ],
        EN,
    )
    assert len(reply.blocks) == 50
    assert "more blocks not shown" in render(reply)


def test_a_long_invoice_keeps_its_totals_and_pay_button() -> None:
    reply = views.invoice_reply(
        invoice("INV-2026-000009", lines=2000), EN, payment_url="https://p.example/{number}"
    )
    shown = plain_spaces(render(reply))
    assert len(reply.blocks) <= 50
    assert "more blocks not shown" in shown
    assert "Outstanding: €2.50" in shown
    assert shown.endswith("[Pay €2.50: https://p.example/INV-2026-000009]")


def test_names_from_the_database_are_escaped_but_our_mentions_are_kept() -> None:
    groups = views.groups_reply(
        [GroupView(RND, "card", 14, (), (ContactView("U0FIN", None, None),), None)]
    ).message()
    text = groups["blocks"][0]["text"]["text"]
    assert "R&amp;D &lt;Labs&gt;" in text and "<@U0FIN>" in text
    refusal = views.refusal(NotAllowed("No <b>.", hint="Ask <@U0ADMIN>.")).message()
    assert refusal["blocks"][0]["text"]["text"].endswith("No &lt;b&gt;.")
    assert refusal["blocks"][1]["elements"][0]["text"] == "Ask <@U0ADMIN>."


def test_payment_url_gets_the_number_and_keeps_other_braces() -> None:
    reply = views.invoice_reply(
        invoice("INV-2026-000009"), EN, payment_url="https://p.example/pay?n={number}&k={key}"
    )
    assert "[Pay €2.50: https://p.example/pay?n=INV-2026-000009&k={key}]" in plain_spaces(
        render(reply)
    )


def test_a_paid_invoice_has_no_pay_button() -> None:
    reply = views.invoice_reply(
        invoice("INV-2026-000009", status="paid"), EN, payment_url="https://p.example/{number}"
    )
    assert "[Pay" not in render(reply)


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        (DE, "Due if invoiced now: 1,70 €"),
        (EN, "Due if invoiced now: €1.70"),
        (JA, "Due if invoiced now: €1.70"),
    ],
)
def test_balance_in_each_locale(locale: Locale, expected: str) -> None:
    b = Balance(
        RND,
        MARCH,
        (line("Requests", "1.00"), line("Requests", "2.00")),
        totals("3.00", discount="0.30", credits="1.00"),
        ("WELCOME10",),
        Decimal("0.19"),
    )
    shown = plain_spaces(render(views.balance_reply([b], locale)))
    assert expected in shown
    assert shown.count("Requests") == 1, "lines are added up by category"
    assert "Coupons (WELCOME10): -" in shown and "Credits: -" in shown


def test_home_view_is_a_valid_home_surface() -> None:
    reply = views.home_reply([], [], EN, now=datetime(2026, 3, 10, tzinfo=UTC), command="/billing")
    assert_valid_home(views.home_view(reply).to_dict())
    assert_valid_home(views.home_view(views.apology("x")).to_dict())


def test_spent_credits_are_not_listed() -> None:
    spent = CreditView(RND, eur("20"), eur("0.00"), None, None)
    assert render(views.credits_reply([spent], EN)) == "No credits left."
