"""Babel formatting in the reader's locale; amounts always in the group's own currency.

Babel takes a few tenths of a millisecond per amount or date, and an answer shows dozens, most
of them repeated from one answer to the next; so texts are kept in small LRU caches keyed by
the exact value (a Decimal by its text, so 1.0 and 1.00 stay apart), currency and locale.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, format_percent

from billing_core.money import Money, minor_unit_exponent
from billing_core.periods import Period


def parse_locale(value: str | None) -> Locale | None:
    """A Babel locale from Slack's ``en-US`` or CLDR's ``en_US``; None if unknown."""
    if not value:
        return None
    try:
        return Locale.parse(value.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return None


_CACHED = 8192  # texts per function


def money(value: Money, locale: Locale) -> str:
    return _money(str(value.amount), value.currency, locale)


@lru_cache(maxsize=_CACHED)
def _money(amount: str, currency: str, locale: Locale) -> str:
    value = Money(Decimal(amount), currency)
    digits = minor_unit_exponent(value.currency)
    pattern = locale.currency_formats["standard"]
    return (
        format_currency(
            value.amount,
            value.currency,
            format=pattern,
            locale=locale,
            currency_digits=False,
            decimal_quantization=True,
            format_type="standard",
            numbering_system="latn",
        )
        if digits == 2
        else _money_digits(value, locale, digits)
    )


def _money_digits(value: Money, locale: Locale, digits: int) -> str:
    # Babel's CLDR digits differ from ISO 4217 for a few currencies; force the ISO exponent.
    pattern = locale.currency_formats["standard"].pattern
    number, _, _ = pattern.partition(";")
    head, dot, tail = number.partition(".")
    zeros = "0" * digits
    fixed = head + (("." + zeros) if digits else "") + tail.lstrip("0#")
    return format_currency(
        value.amount, value.currency, format=fixed, locale=locale, currency_digits=False
    )


def quantity(value: Decimal, locale: Locale) -> str:
    return _quantity(str(value), locale)


@lru_cache(maxsize=_CACHED)
def _quantity(value: str, locale: Locale) -> str:
    return format_decimal(Decimal(value), locale=locale, decimal_quantization=False)


@lru_cache(maxsize=_CACHED)
def day(value: date, locale: Locale) -> str:
    return format_date(value, format="medium", locale=locale)


def moment(value: datetime, locale: Locale) -> str:
    return format_datetime(value, format="medium", locale=locale, tzinfo=value.tzinfo)


def period(value: Period, locale: Locale) -> str:
    """[start, end) shown as the first and last day it covers, in its own zone."""
    from datetime import timedelta  # noqa: PLC0415

    last = (value.end - timedelta(microseconds=1)).date()
    return f"{day(value.start.date(), locale)} – {day(last, locale)}"


def minus(value: Money, locale: Locale) -> str:
    """A reduction (discount, credit), shown with a minus sign; the domain stores it positive."""
    return money(-value, locale) if not value.is_zero() else money(value, locale)


def rate(value: Decimal, locale: Locale) -> str:
    """A tax rate such as 0.19 as a percentage in the locale: 19 %, 19%."""
    return format_percent(value, locale=locale, decimal_quantization=False)
