"""Invoice maths of SPEC 5.4-5.6: lines, coupons, tax, credits, amount due."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing_core.errors import CouponRefused
from billing_core.model import (
    ActiveRedemption,
    AvailableCredit,
    Coupon,
    Totals,
    compute_totals,
    coupon_discount,
)
from billing_core.money import Money
from billing_core.periods import Period
from billing_core.rating import Line

D = Decimal
ISSUED_AT = datetime(2026, 11, 1, tzinfo=UTC)
OCTOBER = Period(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
NOVEMBER = Period(OCTOBER.end, datetime(2026, 12, 1, tzinfo=UTC))
TEN_PERCENT = Coupon("WELCOME10", "once", percent_off=D(10))
FIVE_EUR = Coupon("SAVE5", "repeating", amount_off=Money(D("5.00"), "EUR"), duration_periods=3)


def eur(amount: str) -> Money:
    return Money(D(amount), "EUR")


def line(amount: str, currency: str = "EUR") -> Line:
    return Line(
        kind="usage",
        metric="m",
        category="Usage",
        quantity=D(1),
        billable_quantity=D(1),
        amount=Money(D(amount), currency),
    )


def redeemed(*coupons: Coupon) -> list[ActiveRedemption]:
    at = datetime(2026, 10, 5, tzinfo=UTC)
    return [ActiveRedemption(i, c, at, c.periods_allowed()) for i, c in enumerate(coupons, 1)]


def credit(
    credit_id: int,
    remaining: str,
    *,
    expires: datetime | None,
    granted: datetime = datetime(2026, 1, 1, tzinfo=UTC),
) -> AvailableCredit:
    return AvailableCredit(credit_id, eur(remaining), expires, granted)


def totals(
    amounts: Sequence[str],
    *,
    coupons: Sequence[Coupon] = (),
    tax_rate: str | None = None,
    credits: Sequence[AvailableCredit] = (),
    currency: str = "EUR",
) -> Totals:
    return compute_totals(
        lines=[line(a, currency) for a in amounts],
        currency=currency,
        redemptions=redeemed(*coupons),
        tax_rate=None if tax_rate is None else D(tax_rate),
        credits=credits,
        credits_at=ISSUED_AT,
    )


# --- the whole order ------------------------------------------------------------------------


def test_invoice_applies_coupons_then_tax_then_credits() -> None:
    result = totals(
        ["80.00", "20.00", "0.50"],
        coupons=[TEN_PERCENT, FIVE_EUR],
        tax_rate="0.19",
        credits=[
            credit(1, "50.00", expires=None),
            credit(2, "25.00", expires=datetime(2026, 12, 31, tzinfo=UTC)),
        ],
    )

    # lines 80.00 + 20.00 + 0.50 = 100.50
    # 10% of 100.50 = 10.05 -> 90.45; then 5.00 off what is left -> 85.45; discount 15.05
    # tax 19% of 85.45 = 16.2355 -> 16.24; total 85.45 + 16.24 = 101.69
    # credits: the expiring 25.00 first, then 50.00 without expiry = 75.00; due 26.69
    assert result.subtotal == eur("100.50")
    assert result.discounts == ((1, eur("10.05")), (2, eur("5.00")))
    assert result.discount == eur("15.05")
    assert result.tax == eur("16.24")
    assert result.total == eur("101.69")
    assert result.credits == ((2, eur("25.00")), (1, eur("50.00")))
    assert result.credits_applied == eur("75.00")
    assert result.amount_due == eur("26.69")


def test_an_invoice_without_coupons_tax_or_credits_is_due_in_full() -> None:
    result = totals(["12.30", "0.05"])

    # 12.30 + 0.05 = 12.35, nothing taken off, nothing added
    assert (result.subtotal, result.discount, result.tax, result.total, result.amount_due) == (
        eur("12.35"),
        eur("0"),
        eur("0"),
        eur("12.35"),
        eur("12.35"),
    )


def test_an_invoice_with_no_lines_is_zero() -> None:
    result = totals([], coupons=[FIVE_EUR], tax_rate="0.19")

    assert result.subtotal == eur("0")
    assert result.discounts == ((1, eur("0")),)
    assert result.amount_due == eur("0")


def test_a_jpy_invoice_keeps_whole_yen() -> None:
    result = totals(["1230", "7"], coupons=[TEN_PERCENT], tax_rate="0.10", currency="JPY")

    # 1237 yen; 10% = 123.7 -> 124; left 1113; tax 10% = 111.3 -> 111; total 1224
    assert result.discount.to_str() == "124"
    assert result.tax.to_str() == "111"
    assert result.total.to_str() == "1224"


# --- coupons --------------------------------------------------------------------------------


def test_percent_coupon_is_rounded_half_up_to_the_minor_unit() -> None:
    # 15% of 33.33 = 4.9995 -> 5.00
    assert coupon_discount(Coupon("P15", "once", percent_off=D(15)), eur("33.33")) == eur("5.00")
    # 10% of 0.05 = 0.005 -> 0.01
    assert coupon_discount(TEN_PERCENT, eur("0.05")) == eur("0.01")


def test_two_coupons_apply_in_redemption_order_each_on_what_is_left() -> None:
    percent_first = totals(["100.00"], coupons=[TEN_PERCENT, FIVE_EUR])
    amount_first = totals(["100.00"], coupons=[FIVE_EUR, TEN_PERCENT])

    # 100.00 - 10% (10.00) = 90.00, - 5.00 = 85.00
    assert percent_first.discounts == ((1, eur("10.00")), (2, eur("5.00")))
    assert percent_first.total == eur("85.00")
    # 100.00 - 5.00 = 95.00, - 10% of 95.00 (9.50) = 85.50
    assert amount_first.discounts == ((1, eur("5.00")), (2, eur("9.50")))
    assert amount_first.total == eur("85.50")


def test_coupons_never_take_the_invoice_below_zero() -> None:
    result = totals(["3.00"], coupons=[FIVE_EUR, TEN_PERCENT], tax_rate="0.19")

    # 5.00 off 3.00 takes only 3.00; 10% of the 0.00 left is 0.00; no tax on nothing
    assert result.discounts == ((1, eur("3.00")), (2, eur("0.00")))
    assert result.discount == eur("3.00")
    assert result.tax == eur("0.00")
    assert result.amount_due == eur("0.00")


def test_a_hundred_percent_coupon_takes_everything() -> None:
    everything = Coupon("FREE", "forever", percent_off=D(100))

    assert totals(["19.99"], coupons=[everything], tax_rate="0.19").total == eur("0.00")


def test_amount_off_in_another_currency_cannot_discount_the_invoice() -> None:
    with pytest.raises(CouponRefused):
        coupon_discount(FIVE_EUR, Money(D("100"), "USD"))


def test_once_coupon_discounts_one_invoice() -> None:
    assert TEN_PERCENT.periods_allowed() == 1


def test_repeating_coupon_discounts_its_number_of_invoices() -> None:
    assert FIVE_EUR.periods_allowed() == 3


def test_forever_coupon_has_no_limit() -> None:
    assert Coupon("ALWAYS", "forever", percent_off=D(5)).periods_allowed() is None


@pytest.mark.parametrize(
    ("coupon", "discounted"),
    [
        (TEN_PERCENT, ["2026-10"]),
        (FIVE_EUR, ["2026-10", "2026-11", "2026-12"]),
        (
            Coupon("ALWAYS", "forever", percent_off=D(5)),
            ["2026-10", "2026-11", "2026-12", "2027-01", "2027-02"],
        ),
    ],
)
def test_a_coupon_discounts_as_many_issued_invoices_as_its_duration_allows(
    coupon: Coupon, discounted: list[str]
) -> None:
    # Redeemed on 5 Oct, then five monthly invoices are issued; each discounted one uses it once.
    redeemed_at = datetime(2026, 10, 5, tzinfo=UTC)
    starts = [datetime(2026, m, 1, tzinfo=UTC) for m in (10, 11, 12)] + [
        datetime(2027, m, 1, tzinfo=UTC) for m in (1, 2, 3)
    ]
    allowed, uses, seen = coupon.periods_allowed(), 0, []
    for start, end in zip(starts, starts[1:], strict=False):
        left = None if allowed is None else allowed - uses
        if ActiveRedemption(1, coupon, redeemed_at, left).applies_to(Period(start, end)):
            seen.append(f"{start:%Y-%m}")
            uses += 1

    assert seen == discounted


@pytest.mark.parametrize(("uses_left", "applies"), [(1, True), (3, True), (0, False), (None, True)])
def test_redemption_applies_while_it_has_uses_left(uses_left: int | None, applies: bool) -> None:
    redemption = ActiveRedemption(1, FIVE_EUR, datetime(2026, 10, 5, tzinfo=UTC), uses_left)

    assert redemption.applies_to(NOVEMBER) is applies


def test_redemption_applies_from_the_current_period_not_to_earlier_ones() -> None:
    # Redeemed during October: October (ends after) is discounted; September is already over.
    at = datetime(2026, 10, 5, tzinfo=UTC)
    redemption = ActiveRedemption(1, TEN_PERCENT, at, 1)
    september = Period(datetime(2026, 9, 1, tzinfo=UTC), OCTOBER.start)

    assert redemption.applies_to(OCTOBER)
    assert not redemption.applies_to(september)


def test_redemption_at_the_very_end_of_a_period_waits_for_the_next() -> None:
    redemption = ActiveRedemption(1, TEN_PERCENT, OCTOBER.end, 1)

    assert not redemption.applies_to(OCTOBER)
    assert redemption.applies_to(NOVEMBER)


def test_a_once_coupon_is_used_up_by_one_issued_invoice() -> None:
    # Issuing an invoice spends one use: 1 allowed -> 0 left after October.
    redemption = ActiveRedemption(1, TEN_PERCENT, datetime(2026, 10, 5, tzinfo=UTC), 1)
    after_october = ActiveRedemption(1, TEN_PERCENT, redemption.redeemed_at, 0)

    assert redemption.applies_to(OCTOBER)
    assert not after_october.applies_to(NOVEMBER)


def test_amount_off_coupon_in_a_foreign_currency_is_refused() -> None:
    with pytest.raises(CouponRefused, match="USD"):
        FIVE_EUR.check_redeemable(currency="USD", at=ISSUED_AT, redemptions_so_far=0)


def test_percent_coupon_is_redeemable_in_any_currency() -> None:
    TEN_PERCENT.check_redeemable(currency="JPY", at=ISSUED_AT, redemptions_so_far=0)


def test_coupon_past_its_redeem_by_date_is_refused() -> None:
    deadline = datetime(2027, 1, 1, tzinfo=UTC)
    coupon = Coupon("WELCOME10", "once", percent_off=D(10), redeem_by=deadline)

    coupon.check_redeemable(currency="EUR", at=deadline, redemptions_so_far=0)  # last instant
    with pytest.raises(CouponRefused, match="until 2027-01-01"):
        coupon.check_redeemable(
            currency="EUR", at=datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC), redemptions_so_far=0
        )


def test_coupon_at_its_max_redemptions_is_refused() -> None:
    coupon = Coupon("WELCOME10", "once", percent_off=D(10), max_redemptions=100)

    coupon.check_redeemable(currency="EUR", at=ISSUED_AT, redemptions_so_far=99)
    with pytest.raises(CouponRefused, match="maximum"):
        coupon.check_redeemable(currency="EUR", at=ISSUED_AT, redemptions_so_far=100)


# --- tax ------------------------------------------------------------------------------------


def test_tax_is_computed_on_the_discounted_amount() -> None:
    result = totals(["100.00"], coupons=[TEN_PERCENT], tax_rate="0.19")

    # 100.00 - 10.00 = 90.00; 19% of 90.00 = 17.10 (not 19.00 on the undiscounted 100.00)
    assert result.tax == eur("17.10")
    assert result.total == eur("107.10")


def test_tax_is_rounded_once_on_the_invoice_not_per_line() -> None:
    result = totals(["0.03", "0.03", "0.03"], tax_rate="0.19")

    # 0.09 x 19% = 0.0171 -> 0.02 (per line: 0.0057 -> 0.01, three times = 0.03)
    assert result.tax == eur("0.02")
    assert result.total == eur("0.11")


def test_tax_rounds_half_up() -> None:
    # 10.50 x 7% = 0.735 -> 0.74
    assert totals(["10.00", "0.50"], tax_rate="0.07").tax == eur("0.74")


def test_no_tax_rate_means_no_tax() -> None:
    assert totals(["10.00"], tax_rate=None).tax == eur("0.00")


# --- credits --------------------------------------------------------------------------------


def test_credits_are_used_soonest_expiring_first_and_no_expiry_last() -> None:
    result = totals(
        ["30.00"],
        credits=[
            credit(1, "100.00", expires=None),
            credit(2, "10.00", expires=datetime(2026, 12, 31, tzinfo=UTC)),
            credit(3, "5.00", expires=datetime(2026, 11, 30, tzinfo=UTC)),
        ],
    )

    # 30.00: 5.00 (expires 30 Nov) + 10.00 (expires 31 Dec) + 15.00 from the open-ended credit
    assert result.credits == ((3, eur("5.00")), (2, eur("10.00")), (1, eur("15.00")))
    assert result.amount_due == eur("0.00")


def test_credits_expiring_together_are_used_oldest_grant_first() -> None:
    expiry = datetime(2027, 1, 1, tzinfo=UTC)
    result = totals(
        ["8.00"],
        credits=[
            credit(1, "5.00", expires=expiry, granted=datetime(2026, 6, 1, tzinfo=UTC)),
            credit(2, "5.00", expires=expiry, granted=datetime(2026, 3, 1, tzinfo=UTC)),
            credit(3, "5.00", expires=None, granted=datetime(2026, 5, 1, tzinfo=UTC)),
            credit(4, "5.00", expires=None, granted=datetime(2026, 2, 1, tzinfo=UTC)),
        ],
    )

    # 8.00: credit 2 (granted March) 5.00, then credit 1 (June) 3.00; open-ended ones untouched
    assert result.credits == ((2, eur("5.00")), (1, eur("3.00")))


def test_credits_without_expiry_are_used_oldest_grant_first() -> None:
    result = totals(
        ["8.00"],
        credits=[
            credit(1, "5.00", expires=None, granted=datetime(2026, 5, 1, tzinfo=UTC)),
            credit(2, "5.00", expires=None, granted=datetime(2026, 2, 1, tzinfo=UTC)),
        ],
    )

    assert result.credits == ((2, eur("5.00")), (1, eur("3.00")))


def test_grant_age_decides_between_open_ended_credits_whatever_offset_it_carries() -> None:
    plus_two = timezone(timedelta(hours=2))
    result = totals(
        ["5.00"],
        credits=[
            credit(1, "5.00", expires=None, granted=datetime(2026, 6, 1, tzinfo=plus_two)),
            credit(2, "5.00", expires=None, granted=datetime(2026, 1, 1, tzinfo=UTC)),
        ],
    )

    # Credit 2 was granted in January, credit 1 in June: January's pays, whatever the offsets.
    assert result.credits == ((2, eur("5.00")),)


def test_expired_credits_are_never_used() -> None:
    result = totals(
        ["20.00"],
        credits=[
            credit(1, "50.00", expires=datetime(2026, 10, 31, tzinfo=UTC)),
            credit(2, "50.00", expires=ISSUED_AT),  # expires the instant the invoice is issued
            credit(3, "5.00", expires=datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC)),
        ],
    )

    # Only credit 3 is still valid at issue: 20.00 - 5.00 = 15.00 due
    assert result.credits == ((3, eur("5.00")),)
    assert result.amount_due == eur("15.00")


def test_credits_never_pay_more_than_the_total() -> None:
    result = totals(["10.00"], tax_rate="0.19", credits=[credit(1, "100.00", expires=None)])

    # total 10.00 + 1.90 tax = 11.90; the 100.00 credit pays 11.90 and keeps the rest
    assert result.credits == ((1, eur("11.90")),)
    assert result.credits_applied == eur("11.90")
    assert result.amount_due == eur("0.00")


def test_credits_pay_after_tax() -> None:
    result = totals(["100.00"], tax_rate="0.19", credits=[credit(1, "100.00", expires=None)])

    # 100.00 + 19.00 tax = 119.00; the credit pays 100.00; 19.00 still due
    assert result.tax == eur("19.00")
    assert result.amount_due == eur("19.00")


def test_used_up_credits_and_a_free_invoice_apply_nothing() -> None:
    empty = credit(1, "0.00", expires=None)

    assert totals(["10.00"], credits=[empty]).credits == ()
    assert totals([], credits=[credit(2, "5.00", expires=None)]).credits == ()
