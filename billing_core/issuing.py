"""Closing billing periods: rate the usage, apply coupons, tax and credits, number the invoice.

Each (group, period) closes in its own transaction, under the group's row lock, and the
database's unique keys make a second close of the same period impossible. A run that dies half
way leaves whole invoices only; running it again continues where it stopped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from billing_core import claims
from billing_core.db import tables as t
from billing_core.db.engine import dialect_insert, ids_param
from billing_core.db.types import dec_max, dec_sum
from billing_core.errors import BillingError
from billing_core.export import checksum, invoice_document
from billing_core.ledger import lock_group, next_in_sequence
from billing_core.model import (
    ActiveRedemption,
    AvailableCredit,
    Coupon,
    Totals,
    compute_totals,
)
from billing_core.money import Money
from billing_core.periods import Period, Schedule, local_date, local_midnight, zone
from billing_core.rating import (
    ZERO,
    Line,
    MetricPrice,
    Tier,
    aggregate,
    rate_late_usage,
    rate_usage,
    subscription_line,
)


@dataclass(frozen=True)
class GroupContext:
    group: t.BillingGroup
    org: t.Organization
    tz: ZoneInfo
    schedule: Schedule
    prices: dict[str, MetricPrice]
    plan: t.Plan | None
    project_keys: dict[int, str] = field(default_factory=dict)

    def included(self, period: Period, metric: str) -> Decimal:
        if self.plan is None or not self.schedule.is_subscribed(period):
            return ZERO
        return Decimal(self.plan.included.get(metric, "0"))


def metric_price(row: t.MetricPriceRow) -> MetricPrice:
    tiers = tuple(
        Tier(None if up is None else Decimal(up), Decimal(str(price))) for up, price in row.tiers
    )
    if row.aggregation == "max":
        return MetricPrice(row.metric, row.category, "max", tiers)
    return MetricPrice(row.metric, row.category, "sum", tiers)


def group_context(session: Session, group: t.BillingGroup) -> GroupContext:
    org = session.get_one(t.Organization, group.organization_id)
    tz = zone(org.timezone)
    plan = session.get(t.Plan, group.plan_id) if group.plan_id else None
    price_list = session.get_one(t.PriceList, group.price_list_id)
    return GroupContext(
        group=group,
        org=org,
        tz=tz,
        schedule=Schedule(tz, group.created_at, group.subscription_start if plan else None),
        prices={m.metric: metric_price(m) for m in price_list.metrics},
        plan=plan,
    )


Aggregates = dict[str, dict[int, Decimal]]  # metric -> project id -> quantity
LateEvents = dict[str, dict[int, list[Decimal]]]  # metric -> project id -> late quantities


def _aggregate(session: Session, ctx: GroupContext, where: ColumnElement[bool]) -> Aggregates:
    rows = session.execute(
        select(
            t.UsageEvent.metric,
            t.UsageEvent.project_id,
            dec_sum(t.UsageEvent.quantity),
            dec_max(t.UsageEvent.quantity),
        )
        .where(where)
        .group_by(t.UsageEvent.metric, t.UsageEvent.project_id)
    ).all()
    result: Aggregates = defaultdict(dict)
    for metric, project_id, total, peak in rows:
        price = price_of(ctx, metric)
        result[metric][project_id] = peak if price.aggregation == "max" else total
    return result


def price_of(ctx: GroupContext, metric: str) -> MetricPrice:
    price = ctx.prices.get(metric)
    if price is None:
        raise BillingError(
            f"metric {metric!r} has usage but no price in group {ctx.group.key!r}'s price list"
        )
    return price


def _named(
    session: Session, ctx: GroupContext, quantities: dict[int, Decimal]
) -> dict[str, Decimal]:
    """Quantities by project key; keys are fetched once per group context, not per metric."""
    missing = [pid for pid in quantities if pid not in ctx.project_keys]
    if missing:
        rows = session.execute(
            select(t.Project.id, t.Project.key).where(t.Project.id.in_(missing))
        ).all()
        ctx.project_keys.update((pid, key) for pid, key in rows)
    return {ctx.project_keys[pid]: q for pid, q in quantities.items()}


def _period_range(ctx: GroupContext, period: Period) -> ColumnElement[bool]:
    """Events of ``period``; the first period also holds anything stamped before it began."""
    before_end = t.UsageEvent.ts < period.end
    if period.start == ctx.group.created_at:
        return before_end
    return and_(t.UsageEvent.ts >= period.start, before_end)


def current_lines(
    session: Session, ctx: GroupContext, period: Period, current: Aggregates
) -> list[Line]:
    """The subscription and the usage lines of ``period`` itself, from its aggregates."""
    currency = ctx.group.currency
    lines: list[Line] = []
    if ctx.plan is not None and ctx.schedule.is_subscribed(period):
        lines.append(subscription_line(ctx.plan.name, Money(ctx.plan.monthly_fee, currency)))
    for metric in sorted(current, key=lambda m: (price_of(ctx, m).category, m)):
        lines.append(
            rate_usage(
                price_of(ctx, metric),
                _named(session, ctx, current[metric]),
                included=ctx.included(period, metric),
                currency=currency,
            )
        )
    return lines


def rate_period(
    session: Session,
    ctx: GroupContext,
    period: Period,
    *,
    new: ColumnElement[bool],
    settled: ColumnElement[bool],
) -> list[Line]:
    """The lines for ``period``: its subscription, its usage, and usage of earlier periods
    that arrived after those were invoiced (``new`` selects the events not yet billed,
    ``settled`` those billed before, whatever their group)."""
    group = ctx.group
    current = _aggregate(session, ctx, and_(new, _period_range(ctx, period)))
    lines = current_lines(session, ctx, period, current)
    if period.start == group.created_at:
        return lines
    late_rows = session.execute(
        select(
            t.UsageEvent.metric, t.UsageEvent.project_id, t.UsageEvent.quantity, t.UsageEvent.ts
        ).where(new, t.UsageEvent.ts < period.start)
    ).all()
    late: dict[Period, LateEvents] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for metric, project_id, quantity, ts in late_rows:
        late[ctx.schedule.containing(ts)][metric][project_id].append(quantity)
    for late_period in sorted(late, key=lambda p: p.start):
        billed = _aggregate(
            session,
            ctx,
            and_(
                t.UsageEvent.billing_group_id == group.id,
                settled,
                _period_range(ctx, late_period),
                t.UsageEvent.metric.in_(late[late_period]),
            ),
        )
        lines += _late_lines(session, ctx, late_period, late[late_period], billed)
    return lines


def _late_lines(
    session: Session,
    ctx: GroupContext,
    late_period: Period,
    by_metric: LateEvents,
    billed: Aggregates,
) -> list[Line]:
    """What the late events ``by_metric`` of ``late_period`` add to what was ``billed`` of it."""
    currency = ctx.group.currency
    lines: list[Line] = []
    for metric in sorted(by_metric, key=lambda m: (price_of(ctx, m).category, m)):
        price = price_of(ctx, metric)
        before = billed.get(metric, {})
        after = dict(before)
        for project_id, quantities in by_metric[metric].items():
            extra = max(quantities) if price.aggregation == "max" else sum(quantities, ZERO)
            known = before.get(project_id)
            if known is None:
                after[project_id] = extra
            elif price.aggregation == "max":
                after[project_id] = max(known, extra)
            else:
                after[project_id] = known + extra
        line = rate_late_usage(
            price,
            billed=_named(session, ctx, before) if before else {},
            now_known=_named(session, ctx, after),
            included=ctx.included(late_period, metric),
            currency=currency,
            period=late_period,
        )
        if line is not None:
            lines.append(line)
    return lines


def active_redemptions(session: Session, group_id: int) -> list[tuple[ActiveRedemption, str]]:
    return active_redemptions_of(session, [group_id]).get(group_id, [])


# Built once (their ids are bound at execution): a read answers with a few of these.
_REDEMPTIONS = (
    select(
        t.Redemption.billing_group_id,
        t.Redemption.id,
        t.Redemption.redeemed_at,
        t.Redemption.uses,
        t.CouponRow.code,
        t.CouponRow.duration,
        t.CouponRow.percent_off,
        t.CouponRow.amount_off,
        t.CouponRow.currency,
        t.CouponRow.duration_periods,
        t.CouponRow.max_redemptions,
        t.CouponRow.redeem_by,
    )
    .join(t.CouponRow, t.CouponRow.id == t.Redemption.coupon_id)
    .where(t.Redemption.billing_group_id.in_(ids_param("groups")))
    .order_by(t.Redemption.billing_group_id, t.Redemption.redeemed_at, t.Redemption.id)
)


def active_redemptions_of(
    session: Session, group_ids: Sequence[int]
) -> dict[int, list[tuple[ActiveRedemption, str]]]:
    """Each group's redemptions with uses left, in redemption order, in one query."""
    result: dict[int, list[tuple[ActiveRedemption, str]]] = defaultdict(list)
    if not group_ids:
        return result
    for group_id, redemption_id, redeemed_at, uses, code, *terms in session.execute(
        _REDEMPTIONS, {"groups": list(group_ids)}
    ):
        coupon = _coupon(code, *terms)
        allowed = coupon.periods_allowed()
        uses_left = None if allowed is None else allowed - uses
        if uses_left is None or uses_left > 0:
            active = ActiveRedemption(redemption_id, coupon, redeemed_at, uses_left)
            result[group_id].append((active, code))
    return result


def coupon_from_row(row: t.CouponRow) -> Coupon:
    return _coupon(
        row.code,
        row.duration,
        row.percent_off,
        row.amount_off,
        row.currency,
        row.duration_periods,
        row.max_redemptions,
        row.redeem_by,
    )


def _coupon(
    code: str,
    duration: str,
    percent_off: Decimal | None,
    amount_off: Decimal | None,
    currency: str | None,
    duration_periods: int | None,
    max_redemptions: int | None,
    redeem_by: datetime | None,
) -> Coupon:
    return Coupon(
        code=code,
        duration={"once": "once", "repeating": "repeating"}.get(duration, "forever"),  # type: ignore[arg-type]
        percent_off=percent_off,
        amount_off=Money(amount_off, currency) if amount_off and currency else None,
        duration_periods=duration_periods,
        max_redemptions=max_redemptions,
        redeem_by=redeem_by,
    )


def available_credits(session: Session, group_id: int, currency: str) -> list[AvailableCredit]:
    return available_credits_of(session, {group_id: currency}).get(group_id, [])


_CREDITS = (
    select(
        t.Credit.id,
        t.Credit.billing_group_id,
        t.Credit.remaining,
        t.Credit.expires_at,
        t.Credit.granted_at,
    )
    .where(t.Credit.billing_group_id.in_(ids_param("groups")))
    .order_by(t.Credit.id)
)


def available_credits_of(
    session: Session, currencies: dict[int, str]
) -> dict[int, list[AvailableCredit]]:
    """Each group's credits with something left, oldest first; ``currencies``: group -> its."""
    rows = session.execute(_CREDITS, {"groups": list(currencies)}).all() if currencies else []
    result: dict[int, list[AvailableCredit]] = defaultdict(list)
    # Filtered here, not in SQL: SQLite stores decimals as text, where '0.00' > 0 is true.
    for credit_id, group_id, remaining, expires_at, granted_at in rows:
        if remaining > 0:
            credit = AvailableCredit(
                credit_id, Money(remaining, currencies[group_id]), expires_at, granted_at
            )
            result[group_id].append(credit)
    return result


def price_period(
    session: Session, ctx: GroupContext, period: Period, lines: Sequence[Line]
) -> tuple[Totals, list[tuple[ActiveRedemption, str]]]:
    """Coupons, tax and credits for ``lines`` as they apply when ``period`` ends."""
    return totals_for(
        ctx,
        period,
        lines,
        active_redemptions(session, ctx.group.id),
        available_credits(session, ctx.group.id, ctx.group.currency),
    )


def totals_for(
    ctx: GroupContext,
    period: Period,
    lines: Sequence[Line],
    redemptions: Sequence[tuple[ActiveRedemption, str]],
    credits: Sequence[AvailableCredit],
) -> tuple[Totals, list[tuple[ActiveRedemption, str]]]:
    """``price_period`` on redemptions and credits loaded already (the group's active ones)."""
    applied = [(r, code) for r, code in redemptions if r.applies_to(period)]
    totals = compute_totals(
        lines=lines,
        currency=ctx.group.currency,
        redemptions=[r for r, _ in applied],
        tax_rate=ctx.group.tax_rate,
        credits=credits,
        credits_at=period.end,
    )
    return totals, applied


@dataclass(frozen=True)
class Closed:
    group_id: int
    period: Period
    invoice_number: str | None


def close_period(
    session: Session, *, group_id: int, period: Period, at: datetime, prefix: str
) -> Closed | None:
    """Close one period of one group and issue its invoice; None if it was closed already."""
    group = lock_group(session, group_id)
    claims.take_gate(session, group_id)  # imports into the group in flight commit first
    ctx = group_context(session, group)
    before = claims.mark(session, group_id)
    if period.start != (before.end or group.created_at):
        return None  # another run closed it (or an earlier period is still open)
    upto = claims.watermark(session)
    close_id = session.execute(
        dialect_insert(session, t.PeriodClose)
        .values(
            billing_group_id=group_id,
            period_start=period.start,
            period_end=period.end,
            closed_at=at,
            usage_upto=upto,
        )
        .on_conflict_do_nothing(index_elements=["billing_group_id", "period_start"])
        .returning(t.PeriodClose.id)
    ).scalar_one_or_none()
    if close_id is None:
        return None
    # The close settles the group's events up to the watermark that earlier closes had not;
    # an import waiting on the gate takes ids above it, so its events go to the next period.
    lines = rate_period(
        session,
        ctx,
        period,
        new=claims.settled_by(group_id, before, claims.Mark(upto, period.end)),
        settled=and_(t.UsageEvent.billing_group_id == group_id, claims.settled(before)),
    )
    if not any(line.amount.amount > 0 for line in lines):
        return Closed(group_id, period, None)
    totals, redemptions = price_period(session, ctx, period, lines)
    invoice_date = local_date(period.end, ctx.tz)
    sequence = next_in_sequence(session, "invoice", invoice_date.year)
    number = f"{prefix}-{invoice_date.year}-{sequence:06d}"
    invoice = t.Invoice(
        number=number,
        organization_id=ctx.org.id,
        billing_group_id=group_id,
        close_id=close_id,
        currency=group.currency,
        period_start=period.start,
        period_end=period.end,
        invoice_date=invoice_date,
        due_date=invoice_date + timedelta(days=group.payment_terms_days),
        subtotal=totals.subtotal.amount,
        discount=totals.discount.amount,
        tax_rate=group.tax_rate,
        tax=totals.tax.amount,
        total=totals.total.amount,
        credits_applied=totals.credits_applied.amount,
        amount_due=totals.amount_due.amount,
        amount_paid=Decimal(0),
        status="paid" if totals.amount_due.is_zero() else "open",
        issued_at=at,
        checksum="",
    )
    session.add(invoice)
    session.flush()
    _store_lines(session, invoice, lines)
    codes = dict(redemptions)
    by_id = {r.id: code for r, code in codes.items()}
    for redemption_id, cut in totals.discounts:
        if cut.amount > 0:
            session.add(
                t.InvoiceDiscount(
                    invoice_id=invoice.id,
                    redemption_id=redemption_id,
                    code=by_id[redemption_id],
                    amount=cut.amount,
                )
            )
            session.execute(
                update(t.Redemption)
                .where(t.Redemption.id == redemption_id)
                .values(uses=t.Redemption.uses + 1)
            )
    for credit_id, used in totals.credits:
        session.add(
            t.CreditApplication(invoice_id=invoice.id, credit_id=credit_id, amount=used.amount)
        )
        # In Python, not SQL: SQLite would subtract the stored decimal text as floats.
        credit = session.get_one(t.Credit, credit_id)
        credit.remaining = credit.remaining - used.amount
    session.flush()
    session.refresh(invoice, ["lines"])
    invoice.checksum = checksum(
        invoice_document(invoice, organization=ctx.org.key, group=group.key, tz=ctx.tz)
    )
    return Closed(group_id, period, number)


def _store_lines(session: Session, invoice: t.Invoice, lines: Sequence[Line]) -> None:
    """Lines and their project shares, written with the invoice's next flush."""
    invoice.lines = [
        t.InvoiceLine(
            position=position,
            kind=line.kind,
            metric=line.metric,
            category=line.category,
            quantity=line.quantity,
            billable_quantity=line.billable_quantity,
            amount=line.amount.amount,
            late_period_start=line.late_period.start if line.late_period else None,
            late_period_end=line.late_period.end if line.late_period else None,
            projects=[
                t.InvoiceLineProject(
                    project_key=share.project, quantity=share.quantity, amount=share.amount.amount
                )
                for share in line.projects
            ],
        )
        for position, line in enumerate(lines)
    ]


DUE_CHUNK = 1000  # groups fetched per round trip while listing due periods


def due_periods(session: Session, at: datetime) -> list[tuple[int, Period]]:
    """Every (group, period) that ended at or before ``at`` and is not closed, oldest first."""
    # Plain columns in chunks (a server-side cursor on PostgreSQL), the last close joined in
    # SQL: every group as an ORM object at once cost ~2.5 KB a group, the run's peak memory from
    # ~10,000 groups on; the due list itself is what the run has to keep.
    ends = (
        select(
            t.PeriodClose.billing_group_id.label("group_id"),
            func.max(t.PeriodClose.period_end).label("end"),
        )
        .group_by(t.PeriodClose.billing_group_id)
        .subquery()
    )
    g = t.BillingGroup
    rows = session.execute(
        select(
            g.id, g.created_at, g.subscription_start, g.plan_id, t.Organization.timezone, ends.c.end
        )
        .join(t.Organization, t.Organization.id == g.organization_id)
        .outerjoin(ends, ends.c.group_id == g.id)
        .order_by(g.id)
        .execution_options(yield_per=DUE_CHUNK)
    )
    due: list[tuple[datetime, int, Period]] = []
    for group_id, created_at, subscription_start, plan_id, tz_name, last_end in rows:
        schedule = Schedule(zone(tz_name), created_at, subscription_start if plan_id else None)
        start = last_end or created_at
        while True:
            period = Period(start, schedule.next_boundary(start))
            if period.end > at:
                break
            due.append((period.end, group_id, period))
            start = period.end
    due.sort(key=lambda item: (item[0], item[1]))
    return [(group_id, period) for _, group_id, period in due]


def draft_lines(session: Session, ctx: GroupContext, at: datetime) -> tuple[Period, list[Line]]:
    """The open period at ``at`` and its charges so far, late usage included."""
    period = ctx.schedule.containing(at)
    mark = claims.mark(session, ctx.group.id)
    closed_until = mark.end
    unbilled = and_(
        t.UsageEvent.billing_group_id == ctx.group.id,
        claims.unsettled(mark),
        t.UsageEvent.ts < period.end,
    )
    if period.start != ctx.group.created_at:
        # Periods that ended but are not closed yet bill their own usage; leave it to them.
        belongs = t.UsageEvent.ts >= period.start
        if closed_until is not None:
            belongs = or_(belongs, t.UsageEvent.ts < closed_until)
        unbilled = and_(unbilled, belongs)
    settled = and_(t.UsageEvent.billing_group_id == ctx.group.id, claims.settled(mark))
    return period, rate_period(session, ctx, period, new=unbilled, settled=settled)


def daily_charges(
    session: Session, ctx: GroupContext, at: datetime
) -> tuple[Period, list[date], dict[str, list[Money]]]:
    """What each day of the open period added, by category (usage only, before coupons/tax)."""
    period = ctx.schedule.containing(at)
    window = and_(
        t.UsageEvent.billing_group_id == ctx.group.id,
        claims.unsettled(claims.mark(session, ctx.group.id)),
        _period_range(ctx, period),
        t.UsageEvent.ts < at,
    )
    rows = session.execute(
        select(t.UsageEvent.metric, t.UsageEvent.project_id, t.UsageEvent.quantity, t.UsageEvent.ts)
        .where(window)
        .order_by(t.UsageEvent.ts)
    ).all()
    days: list[date] = []
    first = local_date(period.start, ctx.tz)
    last = local_date(min(at, period.end - timedelta(microseconds=1)), ctx.tz)
    while first <= last:
        days.append(first)
        first += timedelta(days=1)
    currency = ctx.group.currency
    seen: dict[str, dict[int, list[Decimal]]] = defaultdict(lambda: defaultdict(list))
    by_category: dict[str, list[Money]] = defaultdict(lambda: [Money.zero(currency)] * len(days))
    previous: dict[str, Money] = {}
    index = 0
    for i, day in enumerate(days):
        day_end = local_midnight(day + timedelta(days=1), ctx.tz)
        while index < len(rows) and rows[index][3] < day_end:
            metric, project_id, quantity, _ = rows[index]
            seen[metric][project_id].append(quantity)
            index += 1
        so_far: dict[str, Money] = defaultdict(lambda: Money.zero(currency))
        for metric, projects in seen.items():
            price = price_of(ctx, metric)
            quantities = {str(p): aggregate(price.aggregation, q) for p, q in projects.items()}
            line = rate_usage(
                price, quantities, included=ctx.included(period, metric), currency=currency
            )
            so_far[price.category] = so_far[price.category] + line.amount
        for category, amount in so_far.items():
            by_category[category][i] = amount - previous.get(category, Money.zero(currency))
        previous = dict(so_far)
    return period, days, dict(by_category)


@dataclass(frozen=True)
class Draft:
    """A group's open period at some moment, priced as if it were invoiced then."""

    ctx: GroupContext
    period: Period
    lines: list[Line]
    totals: Totals
    redemptions: list[tuple[ActiveRedemption, str]]  # those that apply, with their codes


def drafts(session: Session, contexts: Sequence[GroupContext], at: datetime) -> list[Draft]:
    """:func:`draft_lines` then :func:`price_period` for each of ``contexts``, in order.

    The same figures, in a fixed number of queries whatever the number of groups (usage totals,
    late events, what was billed of their periods when there are any, redemptions, credits)
    instead of about six per group; the rating is the same pure functions'.
    """
    if not contexts:
        return []
    ev = t.UsageEvent
    by_id = {ctx.group.id: ctx for ctx in contexts}
    periods = {ctx.group.id: ctx.schedule.containing(at) for ctx in contexts}
    marks = claims.marks(session, list(by_id))
    project_keys: dict[int, str] = {}  # filled from the usage queries, which look the keys up
    # draft_lines' unbilled events of the open period itself (rate_period's "current").
    windows: dict[int, tuple[datetime | None, datetime]] = {}
    for g, ctx in by_id.items():
        period = periods[g]
        first = period.start == ctx.group.created_at  # see _period_range
        windows[g] = (None if first else period.start, period.end)
    # An open period usually starts where the group's last close ended; then "not settled"
    # adds nothing to its range but close_id IS NULL (settled events lie before the close's
    # end), and the groups sharing a window are asked for together: a short statement for an
    # organization of many groups instead of a clause of six comparisons per group.
    together: dict[tuple[datetime, datetime], list[int]] = defaultdict(list)
    unbilled: list[ColumnElement[bool]] = []
    for g, (start, end) in windows.items():
        mark = marks[g]
        if start is not None and (mark.upto is None or mark.end is None or start >= mark.end):
            together[(start, end)].append(g)
            continue
        unbilled.append(
            and_(
                ev.billing_group_id == g,
                claims.unsettled(mark),
                ev.ts < end if start is None else and_(ev.ts >= start, ev.ts < end),
            )
        )
    if not unbilled and len(together) == 1:  # the usual case, in a statement built once
        [((start, end), ids)] = together.items()
        sums = session.execute(_SUMS_IN_ONE_WINDOW, {"groups": ids, "start": start, "end": end})
    else:
        unbilled += [_open_in(ids, start, end) for (start, end), ids in together.items()]
        sums = session.execute(_sums(or_(*unbilled)))
    current: dict[int, list[tuple[str, int, Decimal, Decimal]]] = defaultdict(list)
    for group_id, metric, project_id, key, total, peak in sums:
        project_keys[project_id] = key
        current[group_id].append((metric, project_id, total, peak))
    # ... and the unbilled events of closed periods (they arrived after the close): before the
    # open period and before the group's last close; those between belong to periods that
    # ended but are not closed yet, and are left to them.
    # Below the last close's end, "not settled" is close_id IS NULL and an id above the close's
    # watermark; groups closed together share that watermark and end, and are asked together.
    late_together: dict[tuple[int | None, datetime], list[int]] = defaultdict(list)
    for g, (start, _end) in windows.items():
        end_of_last = marks[g].end
        if start is not None and end_of_last is not None:
            late_together[(marks[g].upto, min(start, end_of_last))].append(g)
    late: dict[int, dict[Period, LateEvents]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    )
    late_rows: Iterable[tuple[int, str, int, str, Decimal, datetime]] = ()
    if len(late_together) == 1 and next(iter(late_together))[0] is not None:
        [((upto, before), ids)] = late_together.items()  # usual, in a statement built once
        late_rows = session.execute(
            _LATE_IN_ONE_WINDOW, {"groups": ids, "before": before, "upto": upto}
        )
    elif late_together:
        late_windows = [
            _late_in(ids, before, upto) for (upto, before), ids in late_together.items()
        ]
        late_rows = session.execute(_late(or_(*late_windows)))
    for group_id, metric, project_id, key, quantity, ts in late_rows:
        project_keys[project_id] = key
        late_period = by_id[group_id].schedule.containing(ts)
        late[group_id][late_period][metric][project_id].append(quantity)
    billed = _billed_before(session, by_id, marks, late, project_keys)
    redemptions = active_redemptions_of(session, list(by_id))
    credits = available_credits_of(session, {g: ctx.group.currency for g, ctx in by_id.items()})
    result = []
    for ctx in contexts:
        group_id, period = ctx.group.id, periods[ctx.group.id]
        ctx.project_keys.update(project_keys)
        aggregates: Aggregates = defaultdict(dict)
        for metric, project_id, total, peak in current[group_id]:
            price = price_of(ctx, metric)
            aggregates[metric][project_id] = peak if price.aggregation == "max" else total
        lines = current_lines(session, ctx, period, aggregates)
        for late_period in sorted(late.get(group_id, {}), key=lambda p: p.start):
            lines += _late_lines(
                session,
                ctx,
                late_period,
                late[group_id][late_period],
                billed[(group_id, late_period)],
            )
        totals, applied = totals_for(
            ctx, period, lines, redemptions.get(group_id, []), credits.get(group_id, [])
        )
        result.append(Draft(ctx, period, lines, totals, applied))
    return result


def _project_key(project_id: ColumnElement[int] | InstrumentedAttribute[int]) -> ScalarSelect[str]:
    """A project's key, looked up row by row through the primary key. A join would let the
    planner hash every project of every organization whenever it overestimates the rows."""
    return select(t.Project.key).where(t.Project.id == project_id).scalar_subquery()


def _open_in(ids: Any, start: Any, end: Any) -> ColumnElement[bool]:
    """Unbilled events of groups ``ids`` in [start, end): values, or bind parameters."""
    ev = t.UsageEvent
    return and_(ev.close_id.is_(None), ev.billing_group_id.in_(ids), ev.ts >= start, ev.ts < end)


def _late_in(ids: Any, before: Any, upto: Any) -> ColumnElement[bool]:
    """Unbilled events of groups ``ids`` stamped before ``before`` with an id above ``upto``
    (their last close's watermark; None: no watermark)."""
    ev = t.UsageEvent
    above = true() if upto is None else ev.id > upto
    return and_(ev.close_id.is_(None), ev.billing_group_id.in_(ids), ev.ts < before, above)


def _sums(where: ColumnElement[bool]) -> Select[int, str, int, str, Decimal, Decimal]:
    """Per group, metric and project: the sum and the peak of the events ``where`` selects,
    with the project's key."""
    ev = t.UsageEvent
    keys = (ev.billing_group_id, ev.metric, ev.project_id)
    sums = (
        select(*keys, dec_sum(ev.quantity).label("total"), dec_max(ev.quantity).label("peak"))
        .where(where)
        .group_by(*keys)
        .subquery()
    )
    return select(
        sums.c.billing_group_id,
        sums.c.metric,
        sums.c.project_id,
        _project_key(sums.c.project_id),
        sums.c.total,
        sums.c.peak,
    )


def _late(where: ColumnElement[bool]) -> Select[int, str, int, str, Decimal, datetime]:
    """The events ``where`` selects, one by one, with their project's key."""
    ev = t.UsageEvent
    return select(
        ev.billing_group_id,
        ev.metric,
        ev.project_id,
        _project_key(ev.project_id),
        ev.quantity,
        ev.ts,
    ).where(where)


# drafts' usual statements, built once: every group of the organization opened its period
# where its last close ended, at the same moment, and they were closed by the same run.
_SUMS_IN_ONE_WINDOW = _sums(
    _open_in(bindparam("groups", expanding=True), bindparam("start"), bindparam("end"))
)
_LATE_IN_ONE_WINDOW = _late(
    _late_in(bindparam("groups", expanding=True), bindparam("before"), bindparam("upto"))
)


def _billed_before(
    session: Session,
    contexts: dict[int, GroupContext],
    marks: dict[int, claims.Mark],
    late: dict[int, dict[Period, LateEvents]],
    project_keys: dict[int, str],
) -> dict[tuple[int, Period], Aggregates]:
    """For each (group, closed period) with late events: what its closes billed of the late
    events' metrics (``rate_period``'s ``billed`` for a draft), in one query; adds the keys of
    the projects met to ``project_keys``."""
    ev = t.UsageEvent
    wanted = [(g, p) for g, by_period in late.items() for p in by_period]
    result: dict[tuple[int, Period], Aggregates] = {key: defaultdict(dict) for key in wanted}
    if not wanted:
        return result
    # The windows do not overlap (other groups, or other periods of one group): each event
    # falls in one at most, numbered by the CASE.
    windows = [
        and_(
            ev.billing_group_id == g,
            claims.settled(marks[g]),
            _period_range(contexts[g], p),
            ev.metric.in_(late[g][p]),
        )
        for g, p in wanted
    ]
    which = case(*((w, i) for i, w in enumerate(windows)))
    events = (
        select(which.label("which"), ev.metric, ev.project_id, ev.quantity)
        .where(or_(*windows))
        .subquery()
    )
    keys = (events.c.which, events.c.metric, events.c.project_id)
    sums = (
        select(
            *keys,
            dec_sum(events.c.quantity).label("total"),
            dec_max(events.c.quantity).label("peak"),
        )
        .group_by(*keys)
        .subquery()
    )
    rows = session.execute(
        select(
            sums.c.which,
            sums.c.metric,
            sums.c.project_id,
            _project_key(sums.c.project_id),
            sums.c.total,
            sums.c.peak,
        )
    )
    for index, metric, project_id, key, total, peak in rows:
        project_keys[project_id] = key
        g, p = wanted[index]
        price = price_of(contexts[g], metric)
        result[(g, p)][metric][project_id] = peak if price.aggregation == "max" else total
    return result
