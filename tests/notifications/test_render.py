"""Every message the notifier can render is valid Block Kit and says the right thing."""

from __future__ import annotations

import json
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from babel import Locale
from jsonschema import Draft202012Validator

from billing_core.money import Money
from billing_core.periods import Period
from notifications.render import (
    GiveUp,
    InvoiceNote,
    alert_message,
    headline,
    invoice_message,
)
from tests.notifications.conftest import block_kit

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return block_kit()


def note(
    *, outstanding: str = "119.00", currency: str = "EUR", group: str = "Engineering"
) -> InvoiceNote:
    return InvoiceNote(
        number="INV-2026-000001",
        organization="Acme & Söhne <GmbH>",
        group=group,
        period=Period(datetime(2026, 10, 1, tzinfo=BERLIN), datetime(2026, 11, 1, tzinfo=BERLIN)),
        total=Money.of("119.00" if currency == "EUR" else "11900", currency),
        outstanding=Money.of(outstanding, currency),
        due_date=date(2026, 11, 15),
    )


@pytest.mark.parametrize("locale", ["en_US", "de_DE", "ja_JP", "fr_CH"])
@pytest.mark.parametrize("reminder", [False, True])
@pytest.mark.parametrize("today", [date(2026, 11, 1), date(2026, 11, 15), date(2026, 11, 22)])
@pytest.mark.parametrize("outstanding", ["119.00", "0.00"])
@pytest.mark.parametrize("payment_url", [None, "https://pay.example/{number}?src=slack"])
def test_every_invoice_message_is_valid_block_kit(
    validator: Draft202012Validator,
    locale: str,
    reminder: bool,
    today: date,
    outstanding: str,
    payment_url: str | None,
) -> None:
    rendered = invoice_message(
        note(outstanding=outstanding),
        reminder=reminder,
        locale=Locale.parse(locale),
        today=today,
        payment_url=payment_url,
    )
    blocks = rendered.message()["blocks"]
    errors = [e.message for e in validator.iter_errors(blocks)]
    assert errors == []
    assert rendered.text and "INV-2026-000001" in rendered.text
    has_button = any(b["type"] == "actions" for b in blocks)
    assert has_button == (payment_url is not None and outstanding != "0.00")


def test_zero_decimal_currencies_and_long_names_stay_valid(validator: Draft202012Validator) -> None:
    rendered = invoice_message(
        note(outstanding="11900", currency="JPY", group="G" * 2000),
        reminder=True,
        locale=Locale.parse("ja_JP"),
        today=date(2026, 11, 20),
        payment_url=None,
    )
    assert list(validator.iter_errors(rendered.message()["blocks"])) == []
    assert "￥11,900" in rendered.text or "¥11,900" in rendered.text


def test_alert_is_valid_block_kit(validator: Draft202012Validator) -> None:
    rendered = alert_message(
        GiveUp(
            number="INV-2026-000001",
            group="Engineering",
            step="due+3",
            recipient="user:U0FIN",
            attempts=8,
            error="internal_error (HTTP 500)",
        )
    )
    assert list(validator.iter_errors(rendered.message()["blocks"])) == []
    assert "<@U0FIN>" in rendered.text and "8 tries" in rendered.text


def test_the_invoice_shows_number_period_total_amount_due_and_due_date() -> None:
    rendered = invoice_message(
        note(outstanding="19.00"),
        reminder=True,
        locale=Locale.parse("de_DE"),
        today=date(2026, 11, 12),
        payment_url="https://pay.example/{number}",
    )
    fields = " ".join(
        f["text"]
        for b in rendered.message()["blocks"]
        if b["type"] == "section"
        for f in b.get("fields", [])
    )
    for expected in (
        "INV-2026-000001",
        "01.10.2026",
        "31.10.2026",
        "119,00\xa0€",
        "19,00\xa0€",
        "15.11.2026",
    ):
        assert expected in fields
    assert "Acme &amp; Söhne &lt;GmbH&gt;" in json.dumps(
        rendered.message()["blocks"], ensure_ascii=False
    )
    assert rendered.text.endswith("Pay: https://pay.example/INV-2026-000001")


def test_headline_counts_the_days_to_the_due_date() -> None:
    n = note()
    assert headline(n, reminder=False, today=date(2026, 11, 1)) == "New invoice INV-2026-000001"
    assert headline(n, reminder=True, today=date(2026, 11, 12)).endswith("is due in 3 days")
    assert headline(n, reminder=True, today=date(2026, 11, 14)).endswith("is due in 1 day")
    assert headline(n, reminder=True, today=date(2026, 11, 15)).endswith("is due today")
    assert headline(n, reminder=True, today=date(2026, 11, 22)).endswith("is 7 days overdue")
    assert headline(note(outstanding="0"), reminder=False, today=date(2026, 11, 1)).endswith(
        "(paid)"
    )
