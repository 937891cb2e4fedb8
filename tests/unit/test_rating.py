"""Rating: aggregation, plan allowances, graduated tiers, project shares, late usage (SPEC 5.3)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing_core.money import Money
from billing_core.periods import Period
from billing_core.rating import (
    MetricPrice,
    Tier,
    aggregate,
    rate_late_usage,
    rate_usage,
    share_out,
    subscription_line,
)

D = Decimal

REQUESTS = MetricPrice("requests.GET", "Requests", "sum", (Tier(None, D("0.0000004")),))
STORAGE = MetricPrice("storage.gb", "Storage", "max", (Tier(None, D("0.021")),))
# First 100 GB free, then 0.09 per GB.
TRANSFER = MetricPrice(
    "transfer.gb", "Transfer", "sum", (Tier(D(100), D(0)), Tier(None, D("0.09")))
)
# 1.00 up to 10, 0.50 from 10 to 50, 0.25 above 50.
THREE_TIERS = MetricPrice(
    "builds",
    "Builds",
    "sum",
    (Tier(D(10), D("1.00")), Tier(D(50), D("0.50")), Tier(None, D("0.25"))),
)
OCTOBER = Period(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))


def eur(amount: str) -> Money:
    return Money(D(amount), "EUR")


def rate(price: MetricPrice, quantities: dict[str, str], included: str = "0") -> Money:
    line = rate_usage(
        price, {p: D(q) for p, q in quantities.items()}, included=D(included), currency="EUR"
    )
    return line.amount


def shares(amount: Money, weights: dict[str, str]) -> dict[str, str]:
    return {
        k: v.to_str() for k, v in share_out(amount, {k: D(w) for k, w in weights.items()}).items()
    }


# --- prices and tiers -----------------------------------------------------------------------


def test_flat_unit_price_is_rounded_once_on_the_line() -> None:
    # 12,345,678 requests x 0.0000004 = 4.9382712 -> 4.94
    assert rate(REQUESTS, {"web": "12345678"}) == eur("4.94")


def test_tiers_charge_each_band_at_its_own_price() -> None:
    # 130 GB: the first 100 free, the other 30 at 0.09 = 2.70
    assert rate(TRANSFER, {"web": "130"}) == eur("2.70")


def test_usage_inside_the_free_tier_costs_nothing() -> None:
    assert rate(TRANSFER, {"web": "100"}) == eur("0.00")
    assert rate(TRANSFER, {"web": "0"}) == eur("0.00")


def test_crossing_into_a_tier_by_a_fraction_rounds_half_up() -> None:
    # 100.5 GB: 0.5 x 0.09 = 0.045 -> 0.05
    assert rate(TRANSFER, {"web": "100.5"}) == eur("0.05")


def test_three_tiers_each_charge_only_their_band() -> None:
    # 80: 10 x 1.00 + 40 x 0.50 + 30 x 0.25 = 10 + 20 + 7.50 = 37.50
    assert rate(THREE_TIERS, {"ci": "80"}) == eur("37.50")


def test_usage_exactly_on_a_tier_boundary_stays_in_the_lower_band() -> None:
    # 50: 10 x 1.00 + 40 x 0.50 = 30.00, nothing at 0.25
    assert rate(THREE_TIERS, {"ci": "50"}) == eur("30.00")
    # 7 is inside the first band: 7 x 1.00
    assert rate(THREE_TIERS, {"ci": "7"}) == eur("7.00")


def test_tier_price_is_unrounded_until_the_line() -> None:
    # 3 x 0.0000004 = 0.0000012 exactly, before any rounding
    assert REQUESTS.price(D(3)) == D("0.0000012")


def test_tiers_apply_to_the_groups_total_not_per_project() -> None:
    # 70 + 60 = 130 GB over the group: 30 x 0.09 = 2.70 (per project it would be 0.00)
    assert rate(TRANSFER, {"web": "70", "api": "60"}) == eur("2.70")


def test_plan_allowance_is_taken_off_before_the_tiers() -> None:
    line = rate_usage(THREE_TIERS, {"ci": D(15)}, included=D(5), currency="EUR")

    # 15 - 5 included = 10 billable, all in the first band: 10 x 1.00 = 10.00
    # (not 5 at 1.00 + 5 at 0.50, which would be taking the allowance off the top)
    assert line.quantity == D(15)
    assert line.billable_quantity == D(10)
    assert line.amount == eur("10.00")


def test_plan_allowance_then_free_tier() -> None:
    # 250 GB - 20 included = 230 billable; 100 free, 130 x 0.09 = 11.70
    assert rate(TRANSFER, {"web": "250"}, included="20") == eur("11.70")


def test_allowance_larger_than_usage_leaves_nothing_to_pay() -> None:
    line = rate_usage(REQUESTS, {"web": D(3_000_000)}, included=D(5_000_000), currency="EUR")

    assert line.billable_quantity == D(0)
    assert line.amount == eur("0.00")
    assert [s.amount for s in line.projects] == [eur("0.00")]


def test_line_amount_is_in_the_currencys_minor_unit() -> None:
    line = rate_usage(TRANSFER, {"web": D(130)}, included=D(0), currency="JPY")

    # 30 x 0.09 = 2.70 yen -> 3 yen
    assert line.amount == Money(D(3), "JPY")
    assert line.amount.to_str() == "3"


# --- aggregation ----------------------------------------------------------------------------


def test_sum_aggregation_adds_a_projects_events() -> None:
    assert aggregate("sum", [D(1200), D(300), D("0.5")]) == D("1500.5")


def test_max_aggregation_takes_the_projects_peak() -> None:
    assert aggregate("max", [D(12), D(40), D(7)]) == D(40)


def test_aggregating_no_events_gives_zero() -> None:
    assert aggregate("sum", []) == D(0)
    assert aggregate("max", []) == D(0)


def test_storage_peaks_of_projects_are_added_over_the_group() -> None:
    # peaks 40 GB + 60 GB = 100 GB x 0.021 = 2.10
    peaks = {"web": aggregate("max", [D(12), D(40)]), "api": aggregate("max", [D(60)])}

    line = rate_usage(STORAGE, peaks, included=D(0), currency="EUR")

    assert line.quantity == D(100)
    assert line.amount == eur("2.10")


# --- project shares -------------------------------------------------------------------------


def test_equal_shares_give_the_leftover_cent_to_the_alphabetically_first_project() -> None:
    # 10 cents / 3 = 3.33 each; floors 3 + 3 + 3 = 9, one cent left. All remainders tie at 1/3,
    # and ties go to the alphabetically first key: api.
    assert shares(eur("0.10"), {"web": "1", "api": "1", "db": "1"}) == {
        "api": "0.04",
        "db": "0.03",
        "web": "0.03",
    }


def test_leftover_cents_go_to_the_largest_remainders_first() -> None:
    # 5 cents in 1:3 -> 1.25 and 3.75 cents; floors 1 + 3 = 4, the cent goes to 0.75 (b).
    assert shares(eur("0.05"), {"a": "1", "b": "3"}) == {"a": "0.01", "b": "0.04"}


def test_shares_follow_the_projects_quantities() -> None:
    # 10.00 in 2:1 -> 666.67 and 333.33 cents; floors 666 + 333 = 999; web (0.67) gets the cent.
    assert shares(eur("10.00"), {"web": "200", "api": "100"}) == {"web": "6.67", "api": "3.33"}


def test_shares_add_up_exactly_to_the_line() -> None:
    amount = eur("99.99")

    parts = share_out(amount, {"a": D(1), "b": D(1), "c": D(1), "d": D(1), "e": D(1), "f": D(1)})

    # 9999 / 6 = 1666.5 cents: three get 1667, three 1666 (a, b, c by the tie rule)
    assert [p.to_str() for p in parts.values()] == ["16.67"] * 3 + ["16.66"] * 3
    assert sum(parts.values()) == amount


def test_a_jpy_line_is_shared_in_whole_yen() -> None:
    parts = share_out(Money(D(100), "JPY"), {"web": D(1), "api": D(1), "db": D(1)})

    # 100 / 3 = 33.33 yen each; floors 99, the yen left goes to api (tie, first alphabetically)
    assert {k: v.to_str() for k, v in parts.items()} == {"api": "34", "db": "33", "web": "33"}
    assert all(v.amount == v.amount.to_integral_value() for v in parts.values())


def test_a_kwd_line_is_shared_in_fils() -> None:
    # 1.000 KWD / 3 = 333.33 fils; floors 999, one fil to a
    assert {
        k: v.to_str()
        for k, v in share_out(Money(D("1.000"), "KWD"), {"a": D(1), "b": D(1), "c": D(1)}).items()
    } == {"a": "0.334", "b": "0.333", "c": "0.333"}


def test_a_project_with_no_usage_gets_no_share() -> None:
    assert shares(eur("3.00"), {"web": "5", "idle": "0"}) == {"web": "3.00", "idle": "0.00"}


def test_all_zero_quantities_share_equally() -> None:
    # A line with an amount but no weights (a fixed charge) is split evenly, 1 cent to a.
    assert shares(eur("0.03"), {"b": "0", "a": "0"}) == {"a": "0.02", "b": "0.01"}


def test_nothing_to_share_among_no_projects() -> None:
    assert share_out(eur("1.00"), {}) == {}


def test_rated_line_carries_each_projects_quantity_and_share() -> None:
    line = rate_usage(TRANSFER, {"web": D(90), "api": D(40)}, included=D(0), currency="EUR")

    # 130 GB -> 2.70 = 270 cents in 90:40 -> 186.92 and 83.08; floors 186 + 83 = 269;
    # web's remainder 0.92 beats api's 0.08.
    assert [(s.project, s.quantity, s.amount.to_str()) for s in line.projects] == [
        ("api", D(40), "0.83"),
        ("web", D(90), "1.87"),
    ]


# --- late usage -----------------------------------------------------------------------------


def test_late_usage_charges_exactly_what_it_adds_to_the_tiered_period() -> None:
    billed = {"web": D(80)}
    now_known = {"web": D(80), "api": D(50)}

    first = rate_usage(TRANSFER, billed, included=D(0), currency="EUR")
    late = rate_late_usage(
        TRANSFER, billed=billed, now_known=now_known, included=D(0), currency="EUR", period=OCTOBER
    )

    # First invoice: 80 GB, all free = 0.00. Everything at once: 130 GB -> 30 x 0.09 = 2.70.
    # The late line is the difference, 2.70 (rating 50 GB alone would have cost 0.00).
    assert first.amount == eur("0.00")
    assert late is not None
    assert late.amount == eur("2.70")
    assert first.amount + late.amount == rate(TRANSFER, {"web": "80", "api": "50"})
    assert late.quantity == D(50)
    assert late.billable_quantity == D(50)
    assert late.late_period == OCTOBER
    # Only the project whose usage arrived late carries the late line.
    assert [(s.project, s.quantity, s.amount) for s in late.projects] == [
        ("api", D(50), eur("2.70"))
    ]


def test_late_usage_across_three_tiers_adds_up_to_rating_everything_at_once() -> None:
    billed = {"ci": D(8)}
    now_known = {"ci": D(60)}

    first = rate_usage(THREE_TIERS, billed, included=D(0), currency="EUR")
    late = rate_late_usage(
        THREE_TIERS,
        billed=billed,
        now_known=now_known,
        included=D(0),
        currency="EUR",
        period=OCTOBER,
    )

    # First: 8 x 1.00 = 8.00. All at once: 10 x 1.00 + 40 x 0.50 + 10 x 0.25 = 32.50.
    # Late: 32.50 - 8.00 = 24.50.
    assert first.amount == eur("8.00")
    assert late is not None
    assert late.amount == eur("24.50")


def test_late_usage_difference_is_taken_between_rounded_lines() -> None:
    price = MetricPrice("m", "M", "sum", (Tier(None, D("0.015")),))

    late = rate_late_usage(
        price,
        billed={"a": D(1)},
        now_known={"a": D(2)},
        included=D(0),
        currency="EUR",
        period=OCTOBER,
    )

    # Billed 1 x 0.015 = 0.015 -> 0.02. All at once 2 x 0.015 = 0.03. Late = 0.03 - 0.02 = 0.01,
    # so the two invoices together charge 0.03, not 0.02 + round(0.015) = 0.04.
    assert late is not None
    assert late.amount == eur("0.01")


def test_late_usage_inside_the_allowance_is_listed_at_no_charge() -> None:
    late = rate_late_usage(
        REQUESTS,
        billed={"web": D(1000)},
        now_known={"web": D(4000)},
        included=D(5000),
        currency="EUR",
        period=OCTOBER,
    )

    # 4000 requests are still under the 5000 included: nothing billable, nothing to pay.
    assert late is not None
    assert late.quantity == D(3000)
    assert late.billable_quantity == D(0)
    assert late.amount == eur("0.00")


def test_late_usage_uses_up_the_rest_of_the_allowance_first() -> None:
    late = rate_late_usage(
        TRANSFER,
        billed={"web": D(60)},
        now_known={"web": D(160)},
        included=D(20),
        currency="EUR",
        period=OCTOBER,
    )

    # Billed 60 - 20 = 40, free. Now 160 - 20 = 140: 40 x 0.09 = 3.60. Late = 3.60.
    assert late is not None
    assert late.billable_quantity == D(100)
    assert late.amount == eur("3.60")


def test_no_late_line_when_nothing_was_added() -> None:
    same = {"web": D(130), "api": D(5)}

    assert (
        rate_late_usage(
            TRANSFER,
            billed=same,
            now_known=dict(same),
            included=D(0),
            currency="EUR",
            period=OCTOBER,
        )
        is None
    )
    assert (
        rate_late_usage(
            TRANSFER, billed={}, now_known={}, included=D(0), currency="EUR", period=OCTOBER
        )
        is None
    )


# --- subscriptions --------------------------------------------------------------------------


@pytest.mark.parametrize(("fee", "expected"), [("49", "49.00"), ("49.005", "49.01")])
def test_subscription_line_charges_the_monthly_fee_rounded(fee: str, expected: str) -> None:
    line = subscription_line("Pro", Money(D(fee), "EUR"))

    assert line.kind == "subscription"
    assert line.category == "Subscription: Pro"
    assert line.amount.to_str() == expected


def test_sharing_an_unrounded_amount_is_refused_rather_than_losing_a_fraction() -> None:
    with pytest.raises(ValueError, match="not rounded"):
        share_out(Money(Decimal("0.105"), "EUR"), {"a": Decimal(1), "b": Decimal(1)})
