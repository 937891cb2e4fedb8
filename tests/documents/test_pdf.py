"""The invoice PDF: real text, figures in the reader's locale, clean page breaks."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from babel import Locale
from pypdf import PdfReader

from billing_core.model import (
    ActiveRedemption,
    AvailableCredit,
    Coupon,
    GroupRef,
    InvoiceView,
    compute_totals,
)
from billing_core.money import Money
from billing_core.periods import Period
from billing_core.rating import Line, ProjectShare
from bot import format as fmt
from bot.documents.pdf import render_invoice_pdf

D = Decimal
BERLIN = ZoneInfo("Europe/Berlin")
MARCH = Period(datetime(2026, 3, 1, tzinfo=BERLIN), datetime(2026, 4, 1, tzinfo=BERLIN))
FEBRUARY = Period(datetime(2026, 2, 1, tzinfo=BERLIN), MARCH.start)
WELCOME = Coupon("WELCOME10", "once", percent_off=D(10))
DE, US, JA = Locale.parse("de_DE"), Locale.parse("en_US"), Locale.parse("ja_JP")


def money(amount: str, currency: str, scale: int = 1) -> Money:
    return Money.of(D(amount) * scale, currency)


def usage_lines(currency: str) -> tuple[Line, ...]:
    """Compute 1,000.00 shared by two projects, and 234.50 of February's storage, late."""
    scale = 100 if currency == "JPY" else 1
    compute = Line(
        kind="usage",
        metric="cpu_hours",
        category="Compute",
        quantity=D("1500.5"),
        billable_quantity=D("1000"),
        amount=money("1000.00", currency, scale),
        projects=(
            ProjectShare("web-shop", D("900.3"), money("600.00", currency, scale)),
            ProjectShare("data-api", D("600.2"), money("400.00", currency, scale)),
        ),
    )
    storage = Line(
        kind="usage",
        metric="gb_months",
        category="Storage",
        quantity=D("46.9"),
        billable_quantity=D("46.9"),
        amount=money("234.50", currency, scale),
        projects=(ProjectShare("web-shop", D("46.9"), money("234.50", currency, scale)),),
        late_period=FEBRUARY,
    )
    return (compute, storage)


def an_invoice(currency: str = "EUR", lines: tuple[Line, ...] | None = None) -> InvoiceView:
    """Subtotal 1,234.50, 10 % off, 19 % tax, 22.15 of credit, 300.00 paid (×100 in JPY)."""
    lines = usage_lines(currency) if lines is None else lines
    scale = 100 if currency == "JPY" else 1
    redemption = ActiveRedemption(1, WELCOME, datetime(2026, 3, 2, tzinfo=UTC), 1)
    credit = AvailableCredit(
        7, money("22.15", currency, scale), None, datetime(2026, 1, 1, tzinfo=UTC)
    )
    totals = compute_totals(
        lines=lines,
        currency=currency,
        redemptions=[redemption],
        tax_rate=D("0.19"),
        credits=[credit],
        credits_at=MARCH.end,
    )
    return InvoiceView(
        number="ACME-2026-000042",
        organization="acme",
        organization_name="Müller & Söhne Société Générale",
        group=GroupRef("acme/eng", "Engineering", currency),
        period=MARCH,
        invoice_date=date(2026, 4, 1),
        due_date=date(2026, 4, 15),
        status="open",
        lines=lines,
        totals=totals,
        amount_paid=money("300.00", currency, scale),
        tax_rate=D("0.19"),
        billing_address="Hauptstraße 1\n10115 Berlin\nDeutschland",
        shipping_address="Lager Süd\nZollstraße 9\n80331 München",
        vat_id="DE123456789",
        payment_method="card",
        discount_codes=("WELCOME10",),
    )


def render(invoice: InvoiceView, locale: Locale) -> bytes:
    return render_invoice_pdf(
        invoice,
        seller_name="Nordlicht Cloud GmbH",
        seller_address="Große Elbstraße 7\n22767 Hamburg",
        locale=locale,
    )


def pages_text(pdf: bytes) -> list[str]:
    """Each page's text, with Babel's no-break spaces read as plain ones."""
    reader = PdfReader(io.BytesIO(pdf))
    return [_plain(page.extract_text()) for page in reader.pages]


def _plain(text: str) -> str:
    return text.replace("\xa0", " ").replace("\u202f", " ")


def test_german_invoice_shows_its_number_dates_and_figures_in_german() -> None:
    [text] = pages_text(render(an_invoice(), DE))

    assert "ACME-2026-000042" in text
    assert "01.04.2026" in text and "15.04.2026" in text  # invoice and due date
    assert "01.03.2026 – 31.03.2026" in text
    for figure in ("1.234,50 €", "-123,45 €", "211,10 €", "1.322,15 €", "-22,15 €"):
        assert figure in text
    assert "1.300,00 €" in text and "300,00 €" in text  # amount due, paid
    assert "Tax (19 %)" in text


def test_us_invoice_uses_us_number_and_date_formats() -> None:
    [text] = pages_text(render(an_invoice(), US))

    for figure in ("€1,234.50", "-€123.45", "€211.10", "€1,322.15", "€1,300.00"):
        assert figure in text
    assert "Apr 1, 2026" in text and "Apr 15, 2026" in text
    assert "1,500.5" in text  # a quantity


def test_japanese_yen_invoice_has_no_decimals() -> None:
    [text] = pages_text(render(an_invoice("JPY"), JA))

    # Babel's fullwidth ￥ is drawn as ¥: DejaVu Sans has only the latter.
    for figure in ("¥123,450", "-¥12,345", "¥21,110", "¥132,215", "¥130,000"):
        assert figure in text
    assert "2026/04/01" in text
    assert ".00" not in text


def test_lines_show_their_projects_the_late_period_and_the_coupon() -> None:
    [text] = pages_text(render(an_invoice(), DE))

    assert "↳ web-shop 900,3 600,00 €" in text
    assert "↳ data-api 600,2 400,00 €" in text
    assert "Late usage of 01.02.2026 – 28.02.2026" in text
    assert "Discount (WELCOME10)" in text
    assert "Compute" in text and "Storage" in text


def test_accented_and_non_latin_names_survive_as_text() -> None:
    compute, storage = usage_lines("EUR")
    web, api = compute.projects
    compute = replace(
        compute, category="Rechenzeit ☁", projects=(web, replace(api, project="データ"))
    )
    invoice = replace(
        an_invoice(lines=(compute, storage)), organization_name="Müller & Söhne 株式会社"
    )
    pdf = render(invoice, DE)
    [text] = pages_text(pdf)

    assert "Müller & Söhne 株式会社" in text
    assert "Rechenzeit ☁" in text and "↳ データ 600,2 400,00 €" in text
    assert "Große Elbstraße 7" in text and "Lager Süd" in text
    fonts = PdfReader(io.BytesIO(pdf)).pages[0]["/Resources"]["/Font"]
    names = {str(font.get_object()["/BaseFont"]) for font in fonts.values()}
    assert any("DejaVuSans" in name for name in names)


def test_paid_invoice_says_so() -> None:
    invoice = an_invoice()
    paid = replace(invoice, status="paid", amount_paid=invoice.totals.amount_due)
    [text] = pages_text(render(paid, DE))

    assert "Status: paid" in text
    assert "Outstanding 0,00 €" in text


def test_long_invoice_breaks_pages_and_repeats_the_table_heading() -> None:
    lines = tuple(
        Line(
            kind="usage",
            metric=f"metric_{i:03d}",
            category=f"Category {i % 7}",
            quantity=D(i),
            billable_quantity=D(i),
            amount=Money(D(1000 + i * 7) + D("0.37"), "EUR"),
        )
        for i in range(200)
    )
    pages = pages_text(render(an_invoice(lines=lines), DE))
    text = "\n".join(pages)

    assert len(pages) >= 4
    assert all("Item Quantity Billable Amount" in page for page in pages[:-1])
    for line in lines:
        assert f"{line.metric} " in text
        assert fmt.money(line.amount, DE).replace("\xa0", " ") in text
    assert f"page {len(pages)} of {len(pages)}" in pages[-1]


def test_the_same_invoice_renders_to_the_same_bytes() -> None:
    assert render(an_invoice(), DE) == render(an_invoice(), DE)


@pytest.mark.parametrize("locale", [DE, US, JA])
def test_the_page_is_a4(locale: Locale) -> None:
    page = PdfReader(io.BytesIO(render(an_invoice(), locale))).pages[0]

    assert (round(float(page.mediabox.width)), round(float(page.mediabox.height))) == (595, 842)
