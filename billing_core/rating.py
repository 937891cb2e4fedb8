"""Usage to charges: aggregation, plan allowances, graduated tiers, and project shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from math import lcm
from typing import Literal

from billing_core.money import Money, minor_unit_exponent, round_to_minor_unit
from billing_core.periods import Period

Aggregation = Literal["sum", "max"]
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: Decimal | None  # None: no upper bound
    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class MetricPrice:
    """How one metric is priced in a price list."""

    metric: str
    category: str
    aggregation: Aggregation
    tiers: tuple[Tier, ...]  # a flat unit price is one unbounded tier

    def price(self, billable: Decimal) -> Decimal:
        """Graduated price of ``billable`` units, unrounded."""
        charged = ZERO
        lower = ZERO
        for tier in self.tiers:
            upper = billable if tier.up_to is None else min(billable, tier.up_to)
            if upper > lower:
                charged += (upper - lower) * tier.unit_price
            if tier.up_to is None or billable <= tier.up_to:
                break
            lower = tier.up_to
        return charged

    def amount(self, billable: Decimal, currency: str) -> Money:
        return Money(round_to_minor_unit(self.price(billable), currency), currency)


@dataclass(frozen=True, slots=True)
class ProjectShare:
    project: str
    quantity: Decimal
    amount: Money


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line; ``late_period`` is set when it charges usage of an earlier period."""

    kind: Literal["usage", "subscription"]
    metric: str | None
    category: str
    quantity: Decimal
    billable_quantity: Decimal
    amount: Money
    projects: tuple[ProjectShare, ...] = ()
    late_period: Period | None = None


def aggregate(aggregation: Aggregation, quantities: Sequence[Decimal]) -> Decimal:
    """A project's quantity over a period: the sum of its events, or their peak."""
    if not quantities:
        return ZERO
    return max(quantities) if aggregation == "max" else sum(quantities, ZERO)


def share_out(amount: Money, weights: Mapping[str, Decimal]) -> dict[str, Money]:
    """Split ``amount`` in proportion to ``weights`` by largest remainder, in minor units.

    The parts always add up to ``amount`` exactly and come in key order; ties go to the
    alphabetically first key.
    """
    scale = 10 ** minor_unit_exponent(amount.currency)
    scaled = amount.amount * scale
    units = int(scaled)
    if units != scaled:
        raise ValueError(f"{amount} is not rounded to the minor unit; round before sharing")
    keys = sorted(weights)
    if not keys:
        return {}
    if units < 0:
        return _share_out_fractions(amount, units, scale, keys, weights)
    # Exact in integers: the weights scaled to whole numbers share one denominator, so the
    # floors and remainders of units * w / total compare exactly, as Fractions would.
    whole = _whole_numbers([weights[k] for k in keys])
    total = sum(whole)
    if total == 0:
        whole, total = [1] * len(keys), len(keys)
    floors, remainders = {}, {}
    for k, w in zip(keys, whole, strict=True):
        floors[k], remainders[k] = divmod(units * w, total)
    left = units - sum(floors.values())
    if left:
        for k in sorted(keys, key=lambda k: (-remainders[k], k))[:left]:
            floors[k] += 1
    currency = amount.currency
    return {k: Money(Decimal(floors[k]) / scale, currency) for k in keys}


def _whole_numbers(values: Sequence[Decimal]) -> list[int]:
    """``values`` times one common factor that makes them all whole, exactly."""
    # Any common factor shares out alike (the floors stay, the remainders scale with it and
    # keep their order); the least common denominator is the cheapest to find.
    ratios = [v.as_integer_ratio() for v in values]
    common = lcm(*(d for _, d in ratios))
    return [n * (common // d) for n, d in ratios]


def _share_out_fractions(
    amount: Money, units: int, scale: int, keys: list[str], weights: Mapping[str, Decimal]
) -> dict[str, Money]:
    total_weight = sum((weights[k] for k in keys), ZERO)
    if total_weight == 0:
        exact = {k: Fraction(units, len(keys)) for k in keys}
    else:
        exact = {k: Fraction(units) * Fraction(weights[k]) / Fraction(total_weight) for k in keys}
    floors = {k: int(exact[k]) for k in keys}
    left = units - sum(floors.values())
    by_remainder = sorted(keys, key=lambda k: (-(exact[k] - floors[k]), k))
    for k in by_remainder[:left]:
        floors[k] += 1
    return {k: Money(Decimal(floors[k]) / scale, amount.currency) for k in keys}


def _shares(amount: Money, quantities: Mapping[str, Decimal]) -> tuple[ProjectShare, ...]:
    # share_out's parts come in key order already: no second sort
    parts = share_out(amount, quantities)
    return tuple(ProjectShare(p, quantities[p], part) for p, part in parts.items())


def rate_usage(
    price: MetricPrice,
    project_quantities: Mapping[str, Decimal],
    *,
    included: Decimal,
    currency: str,
) -> Line:
    """Rate one metric of one group over one period."""
    quantity = sum(project_quantities.values(), ZERO)
    billable = max(quantity - included, ZERO)
    amount = price.amount(billable, currency)
    return Line(
        kind="usage",
        metric=price.metric,
        category=price.category,
        quantity=quantity,
        billable_quantity=billable,
        amount=amount,
        projects=_shares(amount, project_quantities),
    )


def rate_late_usage(
    price: MetricPrice,
    *,
    billed: Mapping[str, Decimal],
    now_known: Mapping[str, Decimal],
    included: Decimal,
    currency: str,
    period: Period,
) -> Line | None:
    """Charge what usage that arrived late adds to an already invoiced period.

    The period is re-rated with everything now known; the line is the difference to what was
    billed, so tiers and allowances apply to the period as a whole, as if nothing had been late.
    """
    before = rate_usage(price, billed, included=included, currency=currency)
    after = rate_usage(price, now_known, included=included, currency=currency)
    delta_q = {p: now_known.get(p, ZERO) - billed.get(p, ZERO) for p in now_known}
    delta_q = {p: q for p, q in delta_q.items() if q > 0}
    if not delta_q:
        return None
    amount = after.amount - before.amount
    return Line(
        kind="usage",
        metric=price.metric,
        category=price.category,
        quantity=after.quantity - before.quantity,
        billable_quantity=after.billable_quantity - before.billable_quantity,
        amount=amount,
        projects=_shares(amount, delta_q),
        late_period=period,
    )


def subscription_line(plan_name: str, monthly_fee: Money) -> Line:
    return Line(
        kind="subscription",
        metric=None,
        category=f"Subscription: {plan_name}",
        quantity=Decimal(1),
        billable_quantity=Decimal(1),
        amount=monthly_fee.rounded(),
    )
