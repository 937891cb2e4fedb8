"""Plain domain objects and the invoice rule order of SPEC 5.4.

lines -> subtotal -> coupons (before tax, in redemption order, each on what is left)
      -> tax on the rest, rounded once -> credits (after tax, never above the total) -> due
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal

from billing_core.errors import CouponRefused
from billing_core.money import Money, round_to_minor_unit, total
from billing_core.periods import Period
from billing_core.rating import Line

Role = Literal["admin", "member", "reader"]
Duration = Literal["once", "repeating", "forever"]


@dataclass(frozen=True, slots=True)
class Coupon:
    code: str
    duration: Duration
    percent_off: Decimal | None = None
    amount_off: Money | None = None
    duration_periods: int | None = None
    max_redemptions: int | None = None
    redeem_by: datetime | None = None

    def periods_allowed(self) -> int | None:
        """How many invoices it discounts; None for ever."""
        if self.duration == "once":
            return 1
        if self.duration == "repeating":
            return self.duration_periods
        return None

    def check_redeemable(self, *, currency: str, at: datetime, redemptions_so_far: int) -> None:
        """Refuse a redemption that this coupon's own terms forbid."""
        if self.redeem_by is not None and at > self.redeem_by:
            raise CouponRefused(
                f"Coupon {self.code} could only be redeemed until {self.redeem_by.date()}."
            )
        if self.max_redemptions is not None and redemptions_so_far >= self.max_redemptions:
            raise CouponRefused(
                f"Coupon {self.code} has been redeemed the maximum number of times."
            )
        if self.amount_off is not None and self.amount_off.currency != currency:
            raise CouponRefused(
                f"Coupon {self.code} takes off {self.amount_off.currency}, "
                f"but this billing group pays in {currency}."
            )


@dataclass(frozen=True, slots=True)
class ActiveRedemption:
    """A coupon redeemed by a group, with how many more invoices it may discount."""

    id: int
    coupon: Coupon
    redeemed_at: datetime
    uses_left: int | None  # None: forever

    def applies_to(self, period: Period) -> bool:
        return period.end > self.redeemed_at and (self.uses_left is None or self.uses_left > 0)


@dataclass(frozen=True, slots=True)
class AvailableCredit:
    id: int
    remaining: Money
    expires_at: datetime | None
    granted_at: datetime

    def usable_at(self, moment: datetime) -> bool:
        return self.remaining.amount > 0 and (self.expires_at is None or self.expires_at > moment)


@dataclass(frozen=True, slots=True)
class Totals:
    subtotal: Money
    discounts: tuple[tuple[int, Money], ...]  # (redemption id, amount), in application order
    discount: Money
    tax: Money
    total: Money
    credits: tuple[tuple[int, Money], ...]  # (credit id, amount applied)
    credits_applied: Money
    amount_due: Money


def coupon_discount(coupon: Coupon, base: Money) -> Money:
    """What one coupon takes off ``base``: never more than ``base``."""
    if coupon.percent_off is not None:
        cut = Money(
            round_to_minor_unit(base.amount * coupon.percent_off / 100, base.currency),
            base.currency,
        )
    elif coupon.amount_off is not None:
        if coupon.amount_off.currency != base.currency:
            raise CouponRefused(f"Coupon {coupon.code} is in another currency.")
        cut = coupon.amount_off
    else:  # pragma: no cover - the loader refuses such coupons
        cut = Money.zero(base.currency)
    return cut.min(base)


def compute_totals(
    *,
    lines: Sequence[Line],
    currency: str,
    redemptions: Sequence[ActiveRedemption],
    tax_rate: Decimal | None,
    credits: Sequence[AvailableCredit],
    credits_at: datetime,
) -> Totals:
    """Apply SPEC 5.4 to ``lines``: coupons, then tax, then credits."""
    subtotal = total((line.amount for line in lines), currency)
    left = subtotal
    discounts: list[tuple[int, Money]] = []
    for redemption in redemptions:
        cut = coupon_discount(redemption.coupon, left)
        discounts.append((redemption.id, cut))
        left = left - cut
    discount = subtotal - left
    tax = Money(round_to_minor_unit(left.amount * (tax_rate or 0), currency), currency)
    grand = left + tax
    to_pay = grand
    applied: list[tuple[int, Money]] = []
    usable = [c for c in credits if c.usable_at(credits_at)]
    for credit in sorted(usable, key=credit_order):
        if to_pay.is_zero():
            break
        use = credit.remaining.min(to_pay)
        applied.append((credit.id, use))
        to_pay = to_pay - use
    return Totals(
        subtotal=subtotal,
        discounts=tuple(discounts),
        discount=discount,
        tax=tax,
        total=grand,
        credits=tuple(applied),
        credits_applied=grand - to_pay,
        amount_due=to_pay,
    )


def credit_order(credit: AvailableCredit) -> tuple[bool, datetime, datetime, int]:
    """Soonest-expiring first, credits without expiry last, then the oldest grant."""
    # One shared stand-in for "never": a far date in each credit's own zone would differ
    # between credits and outrank the grant date.
    return (credit.expires_at is None, credit.expires_at or _NEVER, credit.granted_at, credit.id)


_NEVER = datetime.max.replace(tzinfo=UTC)


# --- Read models handed to the Slack layer and the exports -------------------------------


@dataclass(frozen=True, slots=True)
class GroupRef:
    key: str
    name: str
    currency: str


@dataclass(frozen=True, slots=True)
class InvoiceView:
    number: str
    organization: str
    group: GroupRef
    period: Period
    invoice_date: date
    due_date: date
    status: Literal["open", "paid"]
    lines: tuple[Line, ...]
    totals: Totals
    amount_paid: Money
    tax_rate: Decimal | None
    organization_name: str = ""
    organization_locale: str | None = None
    billing_address: str | None = None
    shipping_address: str | None = None
    vat_id: str | None = None
    payment_method: str = ""
    discount_codes: tuple[str, ...] = ()

    @property
    def outstanding(self) -> Money:
        return self.totals.amount_due - self.amount_paid


@dataclass(frozen=True, slots=True)
class InvoiceSummary:
    """An invoice's heading without its lines, discounts or credits: what lists show
    (``invoices``, ``owed``), read from the invoice row alone."""

    number: str
    group: GroupRef
    period: Period
    invoice_date: date
    due_date: date
    status: Literal["open", "paid"]
    total: Money
    amount_due: Money  # the total less credits applied
    amount_paid: Money

    @property
    def outstanding(self) -> Money:
        return self.amount_due - self.amount_paid


@dataclass(frozen=True, slots=True)
class Balance:
    """The open period's charges so far, as they would be invoiced now."""

    group: GroupRef
    period: Period
    lines: tuple[Line, ...]
    totals: Totals
    coupon_codes: tuple[str, ...]
    tax_rate: Decimal | None


@dataclass(frozen=True, slots=True)
class DailyCharges:
    """The open period's charges so far, day by day and by category (before coupons and tax).

    ``by_category[c][i]`` is what day ``days[i]`` added to category ``c``: the difference between
    rating everything up to the end of that day and up to the end of the day before, so the
    days add up to the balance's lines exactly, tiers and allowances included.
    """

    group: GroupRef
    period: Period
    days: tuple[date, ...]
    by_category: dict[str, tuple[Money, ...]]


@dataclass(frozen=True, slots=True)
class Owed:
    group: GroupRef
    outstanding: Money
    open_invoices: tuple[InvoiceSummary, ...]
    overdue: tuple[str, ...]  # invoice numbers past due


@dataclass(frozen=True, slots=True)
class PaymentView:
    reference: str
    receipt_number: str
    group: GroupRef
    amount: Money
    method: str
    received_at: datetime
    allocations: tuple[tuple[str, Money], ...]  # (invoice number, amount)
    to_credit: Money


@dataclass(frozen=True, slots=True)
class CreditView:
    group: GroupRef
    granted: Money
    remaining: Money
    expires_at: datetime | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class ContactView:
    slack_user_id: str | None
    slack_channel_id: str | None
    email: str | None


@dataclass(frozen=True, slots=True)
class GroupView:
    group: GroupRef
    payment_method: str
    payment_terms_days: int
    projects: tuple[str, ...]
    contacts: tuple[ContactView, ...]
    plan: str | None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is asking, as the billing core sees them."""

    organization_id: int
    organization_key: str
    user_id: str
    role: Role
    admins: tuple[str, ...] = field(default=())
    locale: str | None = None  # the organization's, for readers whose Slack gives none

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
