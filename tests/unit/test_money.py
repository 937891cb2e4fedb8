"""Money: exact Decimal amounts, one rounding rule, one currency per value."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing_core.errors import CurrencyMismatch, InvalidInput
from billing_core.money import (
    Money,
    check_currency,
    minor_unit_exponent,
    parse_decimal,
    round_to_minor_unit,
    total,
)


def eur(amount: str) -> Money:
    return Money(Decimal(amount), "EUR")


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("EUR", 2), ("USD", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_minor_unit_exponent_follows_iso_4217(currency: str, exponent: int) -> None:
    assert minor_unit_exponent(currency) == exponent


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        # EUR has cents: the third decimal decides, and 5 rounds away from zero.
        ("2.345", "EUR", "2.35"),
        ("2.344", "EUR", "2.34"),
        ("0.005", "EUR", "0.01"),
        ("0.0049999", "EUR", "0.00"),
        # JPY has no minor unit: round to whole yen.
        ("1229.5", "JPY", "1230"),
        ("1229.49", "JPY", "1229"),
        # KWD has fils, three decimals.
        ("1.2345", "KWD", "1.235"),
        ("1.2344", "KWD", "1.234"),
        # Half up means half away from zero for negative amounts too (not banker's rounding).
        ("-2.345", "EUR", "-2.35"),
        ("2.125", "EUR", "2.13"),
    ],
)
def test_rounding_is_half_up_to_the_currencys_own_minor_unit(
    amount: str, currency: str, expected: str
) -> None:
    rounded = round_to_minor_unit(Decimal(amount), currency)

    assert rounded == Decimal(expected)
    assert str(rounded) == expected  # the exponent is the currency's, not the input's


def test_money_of_rounds_and_to_str_shows_the_currencys_decimals() -> None:
    assert Money.of("12.3", "EUR").to_str() == "12.30"
    assert Money.of(Decimal("1229.5"), "JPY").to_str() == "1230"
    assert Money.of(1, "KWD").to_str() == "1.000"
    assert str(Money.of("0.125", "EUR")) == "0.13 EUR"


def test_adding_and_subtracting_same_currency_is_exact() -> None:
    # 0.1 + 0.2 is 0.3 exactly with Decimal, unlike binary floats.
    assert eur("0.1") + eur("0.2") == eur("0.3")
    assert eur("10.00") - eur("2.55") == eur("7.45")
    assert -eur("1.50") == eur("-1.50")


def test_mixing_currencies_raises_currency_mismatch() -> None:
    euros = eur("1.00")
    dollars = Money(Decimal("1.00"), "USD")

    with pytest.raises(CurrencyMismatch):
        _ = euros + dollars
    with pytest.raises(CurrencyMismatch):
        _ = euros - dollars
    with pytest.raises(CurrencyMismatch):
        _ = euros < dollars
    with pytest.raises(CurrencyMismatch):
        euros.min(dollars)
    with pytest.raises(CurrencyMismatch):
        sum([euros, dollars])


def test_builtin_sum_starts_from_zero() -> None:
    # 1.10 + 2.20 + 3.30 = 6.60
    assert sum([eur("1.10"), eur("2.20"), eur("3.30")]) == eur("6.60")


def test_total_of_nothing_is_zero_in_the_given_currency() -> None:
    assert total([], "JPY") == Money.zero("JPY")
    assert total([Money.of(5, "JPY"), Money.of(7, "JPY")], "JPY") == Money.of(12, "JPY")


def test_money_only_adds_to_zero_not_to_other_numbers() -> None:
    with pytest.raises(TypeError):
        _ = eur("1.00") + 1


def test_comparisons_and_min_pick_the_smaller_amount() -> None:
    assert eur("1.00") < eur("1.01")
    assert eur("1.00") <= eur("1.00")
    assert eur("2.00").min(eur("1.99")) == eur("1.99")
    assert eur("0.00").is_zero()


def test_check_currency_accepts_iso_codes_and_refuses_others() -> None:
    assert check_currency("EUR") == "EUR"
    for bad in ("eur", "EURO", "XXQ", "", 978):
        with pytest.raises(InvalidInput):
            check_currency(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12.30", "12.30"), ("0", "0"), ("7", "7"), ("0.000000000001", "0.000000000001")],
)
def test_parse_decimal_reads_decimal_strings_exactly(text: str, expected: str) -> None:
    parsed = parse_decimal(text)

    # Same digits and exponent as written: nothing passed through a float.
    assert parsed.as_tuple() == Decimal(expected).as_tuple()


def test_parse_decimal_accepts_whole_ints() -> None:
    assert parse_decimal(5) == Decimal(5)


@pytest.mark.parametrize("value", [0.1, 12.0, True, None, [], {"amount": "1"}])
def test_parse_decimal_refuses_floats_and_other_types(value: object) -> None:
    with pytest.raises(InvalidInput, match="decimal string"):
        parse_decimal(value, path="amount")


@pytest.mark.parametrize("text", ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf"])
def test_parse_decimal_refuses_nan_and_infinity(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a decimal number"):
        parse_decimal(text, allow_negative=True)


@pytest.mark.parametrize(
    "text", ["", "abc", "1,5", "1.2.3", "12 EUR", " 7 ", "1_000", "+5", "1e3", ".5", "5."]
)
def test_parse_decimal_refuses_text_that_is_not_a_number(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a decimal number"):
        parse_decimal(text)


def test_parse_decimal_refuses_negatives_unless_allowed() -> None:
    with pytest.raises(InvalidInput, match="negative"):
        parse_decimal("-0.01")

    assert parse_decimal("-0.01", allow_negative=True) == Decimal("-0.01")


def test_parse_decimal_refuses_too_many_decimals() -> None:
    # Unit prices keep up to 12 decimals (SPEC 5.1): 13 is one too many.
    assert parse_decimal("0.000000000001", max_decimals=12) == Decimal("1E-12")
    with pytest.raises(InvalidInput, match="more than 12 decimal places"):
        parse_decimal("0.0000000000001", max_decimals=12)
    with pytest.raises(InvalidInput, match="more than 2 decimal places"):
        parse_decimal("1.005", max_decimals=2)
    # trailing zeros add no precision: "12.300" is a valid amount in EUR
    assert parse_decimal("12.300", max_decimals=2) == Decimal("12.300")


def test_parse_decimal_names_the_offending_path() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_decimal(1.5, path="price_lists[0].metrics[1].unit_price")

    assert refused.value.path == "price_lists[0].metrics[1].unit_price"
    assert str(refused.value).startswith("price_lists[0].metrics[1].unit_price: ")
