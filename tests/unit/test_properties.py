"""Invariants of the billing core, checked on many generated cases (Hypothesis)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from itertools import islice
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from billing_core.model import (
    ActiveRedemption,
    AvailableCredit,
    Coupon,
    compute_totals,
)
from billing_core.money import Money, minor_unit_exponent, round_to_minor_unit
from billing_core.periods import Period, Schedule, add_months, local_date, local_midnight
from billing_core.rating import (
    Aggregation,
    Line,
    MetricPrice,
    Tier,
    aggregate,
    rate_late_usage,
    rate_usage,
    share_out,
)

D = Decimal
ZERO = D(0)
CURRENCIES = ("EUR", "JPY", "KWD")
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",  # daylight saving in the southern summer
    "Asia/Kolkata",  # a half-hour offset
    "Pacific/Chatham",  # +12:45 with daylight saving
    "America/Santiago",  # skips local midnight when daylight saving starts
)
ISSUED_AT = datetime(2026, 11, 1, tzinfo=UTC)
OCTOBER = Period(datetime(2026, 10, 1, tzinfo=UTC), ISSUED_AT)
OFFSETS = (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)), ZoneInfo("Asia/Tokyo"))
PERIOD_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MATHS_SETTINGS = settings(max_examples=200, deadline=None)
INVOICE_SETTINGS = settings(max_examples=100, deadline=None)

# --- strategies -----------------------------------------------------------------------------

currencies = st.sampled_from(CURRENCIES)
projects = st.sampled_from(["api", "db", "etl", "web", "www"])
quantities = st.decimals(min_value=0, max_value=10**7, places=3)
unit_prices = st.decimals(min_value=0, max_value=5, places=12)  # SPEC 5.1: up to 12


def minor_units(currency: str, *, max_value: int = 10**8) -> st.SearchStrategy[Money]:
    """Money already on the currency's minor unit, as every line amount is."""
    scale = minor_unit_exponent(currency)
    return st.integers(0, max_value).map(lambda n: Money(D(n).scaleb(-scale), currency))


@st.composite
def metric_prices(draw: st.DrawFn) -> MetricPrice:
    """1-4 graduated tiers with increasing bounds, the last one unbounded."""
    bounds = sorted(draw(st.sets(st.integers(1, 10**6), max_size=3)))
    prices = draw(st.lists(unit_prices, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    tiers = [Tier(D(b), p) for b, p in zip(bounds, prices, strict=False)]
    tiers.append(Tier(None, prices[-1]))
    aggregation: Aggregation = "max" if draw(st.booleans()) else "sum"
    return MetricPrice("m", "M", aggregation, tuple(tiers))


def reference_price(price: MetricPrice, billable: Decimal) -> Decimal:
    """Graduated pricing written out band by band, independently of MetricPrice.price."""
    charged, lower = ZERO, ZERO
    for tier in price.tiers:
        upper = billable if tier.up_to is None else tier.up_to
        charged += max(ZERO, min(billable, upper) - lower) * tier.unit_price
        lower = upper
    return charged


# currency, lines, redemptions in order, tax rate, credits
Invoice = tuple[str, list[Line], list[ActiveRedemption], Decimal | None, list[AvailableCredit]]


def usage_line(amount: Money) -> Line:
    return Line("usage", "m", "M", D(1), D(1), amount)


@st.composite
def invoices(draw: st.DrawFn) -> Invoice:
    currency = draw(currencies)
    lines = [usage_line(m) for m in draw(st.lists(minor_units(currency), max_size=6))]
    coupons = draw(
        st.lists(
            st.one_of(
                st.decimals(min_value=0, max_value=100, places=2).map(
                    lambda p: Coupon("P", "forever", percent_off=p)
                ),
                minor_units(currency, max_value=10**6).map(
                    lambda m: Coupon("A", "forever", amount_off=m)
                ),
            ),
            max_size=3,
        )
    )
    redemptions = [ActiveRedemption(i, c, ISSUED_AT, None) for i, c in enumerate(coupons)]
    tax_rate = draw(st.none() | st.decimals(min_value=0, max_value=D("0.3"), places=4))
    moments = st.datetimes(
        min_value=datetime(2025, 1, 1),  # noqa: DTZ001 - bounds are naive, values are aware
        max_value=datetime(2028, 1, 1),  # noqa: DTZ001
        # Grants and expiries recorded with different offsets must still compare as instants.
        timezones=st.sampled_from(OFFSETS),
    )
    credits = [
        AvailableCredit(i, remaining, expires, granted)
        for i, (remaining, expires, granted) in enumerate(
            draw(
                st.lists(
                    st.tuples(minor_units(currency, max_value=10**7), st.none() | moments, moments),
                    max_size=5,
                )
            )
        )
    ]
    return currency, lines, redemptions, tax_rate, credits


# --- project shares -------------------------------------------------------------------------


@MATHS_SETTINGS
@given(
    data=st.data(),
    weights=st.dictionaries(projects, quantities, min_size=1, max_size=5),
    currency=currencies,
)
def test_project_shares_add_up_exactly_and_are_never_negative(
    data: st.DataObject, weights: dict[str, Decimal], currency: str
) -> None:
    amount = data.draw(minor_units(currency))

    parts = share_out(amount, weights)

    assert set(parts) == set(weights)
    assert sum(parts.values()) == amount
    assert all(p.amount >= 0 for p in parts.values())
    assert all(p.rounded() == p for p in parts.values())  # whole minor units


def largest_remainder_by_fractions(amount: Money, weights: dict[str, Decimal]) -> dict[str, Money]:
    """The definition, in Fractions: what ``share_out`` computes in integers."""
    scale = 10 ** minor_unit_exponent(amount.currency)
    units = int(amount.amount * scale)
    keys = sorted(weights)
    total = sum(weights.values(), ZERO)
    exact = {
        k: Fraction(units, len(keys))
        if total == 0
        else Fraction(units) * Fraction(weights[k]) / Fraction(total)
        for k in keys
    }
    floors = {k: int(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: (-(exact[k] - floors[k]), k))[
        : units - sum(floors.values())
    ]:
        floors[k] += 1
    return {k: Money(D(floors[k]) / scale, amount.currency) for k in keys}


@MATHS_SETTINGS
@given(
    data=st.data(),
    weights=st.dictionaries(
        projects,
        st.one_of(
            quantities, st.decimals(min_value=0, max_value=10**12, places=0), st.just(D("1E+3"))
        ),
        min_size=1,
        max_size=5,
    ),
    currency=currencies,
)
def test_shares_are_the_largest_remainder_split_exactly(
    data: st.DataObject, weights: dict[str, Decimal], currency: str
) -> None:
    amount = data.draw(minor_units(currency))

    assert share_out(amount, weights) == largest_remainder_by_fractions(amount, weights)


@MATHS_SETTINGS
@given(
    data=st.data(),
    weights=st.dictionaries(projects, quantities, min_size=1, max_size=5),
    currency=currencies,
)
def test_each_share_is_within_one_minor_unit_of_its_exact_proportion(
    data: st.DataObject, weights: dict[str, Decimal], currency: str
) -> None:
    amount = data.draw(minor_units(currency))
    total_weight = sum(weights.values(), ZERO)
    assume(total_weight > 0)
    unit = Fraction(D(1).scaleb(-minor_unit_exponent(currency)))

    parts = share_out(amount, weights)

    for project, weight in weights.items():
        exact = Fraction(amount.amount) * Fraction(weight) / Fraction(total_weight)
        assert abs(Fraction(parts[project].amount) - exact) < unit
        if weight == 0:
            assert parts[project].is_zero()


# --- invoice maths --------------------------------------------------------------------------


@INVOICE_SETTINGS
@given(invoice=invoices())
def test_lines_add_up_to_the_subtotal(
    invoice: Invoice,
) -> None:
    currency, lines, redemptions, tax_rate, credits = invoice

    result = compute_totals(
        lines=lines,
        currency=currency,
        redemptions=redemptions,
        tax_rate=tax_rate,
        credits=credits,
        credits_at=ISSUED_AT,
    )

    assert result.subtotal == sum((line.amount for line in lines), Money.zero(currency))


@INVOICE_SETTINGS
@given(invoice=invoices())
def test_invoice_arithmetic_balances_and_nothing_is_negative(
    invoice: Invoice,
) -> None:
    currency, lines, redemptions, tax_rate, credits = invoice

    r = compute_totals(
        lines=lines,
        currency=currency,
        redemptions=redemptions,
        tax_rate=tax_rate,
        credits=credits,
        credits_at=ISSUED_AT,
    )

    assert r.subtotal - r.discount + r.tax - r.credits_applied == r.amount_due
    assert r.total == r.subtotal - r.discount + r.tax
    assert sum((cut for _, cut in r.discounts), Money.zero(currency)) == r.discount
    assert [i for i, _ in r.discounts] == [red.id for red in redemptions]
    for money in (r.subtotal, r.discount, r.tax, r.total, r.credits_applied, r.amount_due):
        assert money.currency == currency
        assert money.amount >= 0
        assert money.rounded() == money  # every figure is in whole minor units
    assert r.discount <= r.subtotal
    # Tax on what the coupons left, rounded once.
    taxable = r.subtotal - r.discount
    assert r.tax.amount == round_to_minor_unit(taxable.amount * (tax_rate or 0), currency)


@INVOICE_SETTINGS
@given(invoice=invoices())
def test_credits_never_exceed_the_total_nor_any_credits_remaining(
    invoice: Invoice,
) -> None:
    currency, lines, redemptions, tax_rate, credits = invoice

    r = compute_totals(
        lines=lines,
        currency=currency,
        redemptions=redemptions,
        tax_rate=tax_rate,
        credits=credits,
        credits_at=ISSUED_AT,
    )

    by_id = {c.id: c for c in credits}
    assert r.credits_applied <= r.total
    assert sum((used for _, used in r.credits), Money.zero(currency)) == r.credits_applied
    assert len({i for i, _ in r.credits}) == len(r.credits)  # each credit used once at most
    for credit_id, used in r.credits:
        credit = by_id[credit_id]
        assert Money.zero(currency) < used <= credit.remaining
        assert credit.expires_at is None or credit.expires_at > ISSUED_AT
    # Usable credits are spent before anything is left to pay.
    usable = sum((c.remaining for c in credits if c.usable_at(ISSUED_AT)), Money.zero(currency))
    assert r.credits_applied == usable.min(r.total)


def spending_rank(credit: AvailableCredit) -> tuple[bool, float, float, int]:
    """SPEC 5.6 as instants: soonest expiry first, no expiry last, then oldest grant."""
    expiry = 0.0 if credit.expires_at is None else credit.expires_at.timestamp()
    return (credit.expires_at is None, expiry, credit.granted_at.timestamp(), credit.id)


@INVOICE_SETTINGS
@given(invoice=invoices())
def test_credits_are_spent_in_order_each_used_up_before_the_next(
    invoice: Invoice,
) -> None:
    currency, lines, redemptions, tax_rate, credits = invoice

    r = compute_totals(
        lines=lines,
        currency=currency,
        redemptions=redemptions,
        tax_rate=tax_rate,
        credits=credits,
        credits_at=ISSUED_AT,
    )

    applied = dict(r.credits)
    ranked = sorted((c for c in credits if c.usable_at(ISSUED_AT)), key=spending_rank)
    assert [c.id for c in ranked if c.id in applied] == [i for i, _ in r.credits]
    # Every credit ranked before the last one touched is used up completely.
    touched = [c for c in ranked if c.id in applied]
    if touched:
        last = ranked.index(touched[-1])
        assert all(applied.get(c.id) == c.remaining for c in ranked[:last])


# --- rating ---------------------------------------------------------------------------------


@MATHS_SETTINGS
@given(price=metric_prices(), a=quantities, b=quantities, included=quantities, currency=currencies)
def test_more_usage_never_costs_less(
    price: MetricPrice, a: Decimal, b: Decimal, included: Decimal, currency: str
) -> None:
    low, high = sorted((a, b))

    cheaper = rate_usage(price, {"web": low}, included=included, currency=currency)
    dearer = rate_usage(price, {"web": high}, included=included, currency=currency)

    assert cheaper.amount <= dearer.amount


@MATHS_SETTINGS
@given(price=metric_prices(), usage=quantities, a=quantities, b=quantities, currency=currencies)
def test_a_larger_allowance_never_costs_more(
    price: MetricPrice, usage: Decimal, a: Decimal, b: Decimal, currency: str
) -> None:
    small, large = sorted((a, b))

    with_small = rate_usage(price, {"web": usage}, included=small, currency=currency)
    with_large = rate_usage(price, {"web": usage}, included=large, currency=currency)

    assert with_large.amount <= with_small.amount


@MATHS_SETTINGS
@given(
    price=metric_prices(),
    usage=st.dictionaries(projects, quantities, max_size=4),
    included=quantities,
    currency=currencies,
)
def test_line_amount_is_the_graduated_price_of_the_billable_quantity_rounded_once(
    price: MetricPrice, usage: dict[str, Decimal], included: Decimal, currency: str
) -> None:
    line = rate_usage(price, usage, included=included, currency=currency)

    billable = max(sum(usage.values(), ZERO) - included, ZERO)
    assert line.billable_quantity == billable
    assert line.amount == Money(
        round_to_minor_unit(reference_price(price, billable), currency), currency
    )
    assert sum((s.amount for s in line.projects), Money.zero(currency)) == line.amount


@MATHS_SETTINGS
@given(
    price=metric_prices(),
    events=st.lists(st.tuples(projects, quantities), min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 12), max_size=3),
    included=quantities,
    currency=currencies,
)
def test_late_usage_lines_add_up_to_rating_everything_at_once(
    price: MetricPrice,
    events: list[tuple[str, Decimal]],
    cuts: list[int],
    included: Decimal,
    currency: str,
) -> None:
    """Bill the events in batches (first invoice, then late lines); the sum equals one rating."""

    def known(upto: int) -> dict[str, Decimal]:
        by_project: dict[str, list[Decimal]] = {}
        for project, quantity in events[:upto]:
            by_project.setdefault(project, []).append(quantity)
        return {p: aggregate(price.aggregation, qs) for p, qs in by_project.items()}

    stops = sorted({min(c, len(events)) for c in cuts} | {len(events)})
    billed = known(stops[0])
    charged = rate_usage(price, billed, included=included, currency=currency).amount
    for stop in stops[1:]:
        now_known = known(stop)
        late = rate_late_usage(
            price,
            billed=billed,
            now_known=now_known,
            included=included,
            currency=currency,
            period=OCTOBER,
        )
        added = any(q > billed.get(p, ZERO) for p, q in now_known.items())
        if not added:  # only zero-quantity events arrived
            assert late is None
        else:
            assert late is not None
            assert late.amount.amount >= 0
            assert sum((s.amount for s in late.projects), Money.zero(currency)) == late.amount
            charged = charged + late.amount
        billed = now_known

    everything = rate_usage(price, known(len(events)), included=included, currency=currency)
    assert charged == everything.amount


# --- periods --------------------------------------------------------------------------------

zones = st.sampled_from(ZONES).map(ZoneInfo)
month_indexes = st.integers(2024 * 12, 2029 * 12 + 11)  # year * 12 + month - 1


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    tz = draw(zones)
    created = draw(
        st.datetimes(
            min_value=datetime(2024, 1, 1),  # noqa: DTZ001 - bounds are naive, values are aware
            max_value=datetime(2028, 12, 31),  # noqa: DTZ001
            timezones=st.just(tz),
            allow_imaginary=False,
        )
    )
    subscription_start = None
    if draw(st.booleans()):
        year, month = divmod(draw(month_indexes), 12)
        # Anchors on the 28th-31st are where month-end clamping happens: draw them often.
        anchor = draw(st.sampled_from([1, 15, 28, 29, 30, 31]) | st.integers(1, 31))
        assume(anchor <= add_months(date(year, month + 1, 1), 0, 31).day)
        start_day = date(year, month + 1, anchor)
        start = local_midnight(start_day, tz)
        if draw(st.booleans()):  # a subscription may start at any time of its first day
            start = start + timedelta(minutes=draw(st.integers(0, 23 * 60)))
        subscription_start = start
    return Schedule(tz, created, subscription_start)


def walk_to(schedule: Schedule, moment: datetime) -> list[tuple[datetime, datetime]]:
    """Every period up to the one holding ``moment``, by walking from the first."""
    walked = []
    for period in schedule.periods():
        walked.append((period.start, period.end))
        if moment < period.end:
            return walked
    raise AssertionError("unreachable")  # pragma: no cover


@PERIOD_SETTINGS
@given(schedule=schedules(), offset=st.integers(-40 * 24 * 60, 4 * 366 * 24 * 60))
def test_containing_agrees_with_walking_the_periods(schedule: Schedule, offset: int) -> None:
    moment = (schedule.created_at + timedelta(minutes=offset)).astimezone(UTC)

    found = schedule.containing(moment)

    if moment < schedule.created_at:
        assert found == schedule.first()
    else:
        start, end = walk_to(schedule, moment)[-1]
        assert (found.start, found.end) == (start, end)
        assert moment in found


@PERIOD_SETTINGS
@given(schedule=schedules())
def test_periods_are_contiguous_and_start_at_local_midnight(schedule: Schedule) -> None:
    periods = list(islice(schedule.periods(), 30))

    assert periods[0].start == schedule.created_at
    for before, after in zip(periods, periods[1:], strict=False):
        assert before.end == after.start
    for period in periods:
        assert period.start < period.end
        if period.start in (schedule.created_at, schedule.subscription_start):
            continue
        day = local_date(period.start, schedule.tz)
        assert period.start == local_midnight(day, schedule.tz)


@PERIOD_SETTINGS
@given(schedule=schedules())
def test_subscribed_periods_start_on_the_anchor_day_clamped_to_month_end(
    schedule: Schedule,
) -> None:
    assume(schedule.subscription_start is not None)
    assert schedule.subscription_start is not None
    anchor = local_date(schedule.subscription_start, schedule.tz).day

    for period in islice(schedule.periods(), 30):
        if period.start <= schedule.subscription_start or period.start == schedule.created_at:
            continue
        day = local_date(period.start, schedule.tz)
        assert day.day == min(anchor, add_months(day, 0, 31).day)
        # An anniversary period lasts one month: it ends on the next anniversary.
        assert local_date(period.end, schedule.tz) == add_months(day, 1, anchor)
