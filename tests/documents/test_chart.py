"""The usage chart: a PNG of exactly the asked size, whatever the period holds."""

from __future__ import annotations

import io
import struct
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from babel import Locale
from PIL import Image

from billing_core.model import DailyCharges, GroupRef
from billing_core.money import Money
from billing_core.periods import Period
from bot.documents.chart import render_usage_chart

D = Decimal
TOKYO = ZoneInfo("Asia/Tokyo")
MARCH = Period(datetime(2026, 3, 1, tzinfo=TOKYO), datetime(2026, 4, 1, tzinfo=TOKYO))
DE, US, JA = Locale.parse("de_DE"), Locale.parse("en_US"), Locale.parse("ja_JP")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIRST_BAR_COLOUR = (31, 119, 180)  # matplotlib's first colour, "C0"


def daily(currency: str, per_day: dict[str, list[str]], *, days: int | None = None) -> DailyCharges:
    count = len(next(iter(per_day.values()))) if days is None else days
    return DailyCharges(
        group=GroupRef("acme/eng", "Engineering Müller", currency),
        period=MARCH,
        days=tuple(date(2026, 3, 1) + timedelta(days=i) for i in range(count)),
        by_category={
            category: tuple(Money(D(a), currency) for a in amounts)
            for category, amounts in per_day.items()
        },
    )


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a PNG must open with."""
    assert png[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", png[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def bar_pixels(png: bytes) -> int:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height) or []
    return sum(count for count, colour in colours if colour == FIRST_BAR_COLOUR)


EURO_DAYS = daily(
    "EUR",
    {
        "Compute": [f"{10 + i}.25" for i in range(12)],
        "Storage": ["1.50"] * 12,
        "Subscription: Team": ["99.00"] + ["0.00"] * 11,
    },
)


def test_chart_is_a_png_of_the_default_size() -> None:
    png = render_usage_chart(EURO_DAYS, locale=DE)

    assert png_size(png) == (1200, 600)
    image = Image.open(io.BytesIO(png))
    image.verify()
    assert image.format == "PNG"
    assert bar_pixels(png) > 0


@pytest.mark.parametrize(("width", "height"), [(800, 450), (1001, 333), (1920, 1080)])
def test_chart_has_exactly_the_requested_size(width: int, height: int) -> None:
    png = render_usage_chart(EURO_DAYS, locale=US, width_px=width, height_px=height)

    assert png_size(png) == (width, height)


def test_period_with_no_charges_draws_an_empty_chart() -> None:
    zero = daily("EUR", {"Compute": ["0.00"] * 9})

    png = render_usage_chart(zero, locale=DE)

    assert png_size(png) == (1200, 600)
    assert bar_pixels(png) == 0


def test_period_that_just_began_has_no_days_and_still_renders() -> None:
    empty = DailyCharges(GroupRef("acme/eng", "Engineering", "EUR"), MARCH, (), {})

    assert png_size(render_usage_chart(empty, locale=US, width_px=640, height_px=360)) == (
        640,
        360,
    )


def test_yen_chart_renders_in_japanese() -> None:
    yen = daily(
        "JPY", {"Compute": [str(1000 + 37 * i) for i in range(31)], "Storage": ["120"] * 31}
    )

    png = render_usage_chart(yen, locale=JA, width_px=900, height_px=500)

    assert png_size(png) == (900, 500)
    assert bar_pixels(png) > 0


def test_many_long_categories_still_fit_the_smallest_chart() -> None:
    crowded = daily(
        "EUR", {f"Category {k} with a rather long name indeed": ["1234.56"] * 31 for k in range(20)}
    )

    assert png_size(render_usage_chart(crowded, locale=DE, width_px=480, height_px=320)) == (
        480,
        320,
    )


def test_a_chart_too_small_to_read_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        render_usage_chart(EURO_DAYS, locale=DE, width_px=300, height_px=200)


def test_charts_drawn_on_several_threads_at_once_match_one_drawn_alone() -> None:
    alone = render_usage_chart(EURO_DAYS, locale=DE)

    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda _: render_usage_chart(EURO_DAYS, locale=DE), range(4)))

    assert all(png == alone for png in together)
