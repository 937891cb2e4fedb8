"""``billing-bot check``: audit the whole database against the billing invariants.

Each check re-derives what the database should hold from first principles (the usage a close
claimed, the rule order of SPEC 5.4, the allocations) and reports every difference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from billing_core import claims
from billing_core.db import tables as t
from billing_core.export import checksum, invoice_document
from billing_core.issuing import group_context, rate_period
from billing_core.money import round_to_minor_unit
from billing_core.periods import Period

ZERO = Decimal(0)


def _sums(
    session: Session, key: InstrumentedAttribute[Any], amount: InstrumentedAttribute[Decimal]
) -> defaultdict[int, Decimal]:
    """Exact totals of ``amount`` by ``key``, added in Python (SQLite stores decimals as text)."""
    totals: defaultdict[int, Decimal] = defaultdict(Decimal)
    for owner, value in session.execute(select(key, amount).where(key.is_not(None))):
        totals[owner] += value
    return totals


def violations(session: Session) -> Iterator[str]:
    """Every violated invariant, one sentence each."""
    yield from _documents(session)
    yield from _usage(session)
    yield from _payments(session)
    yield from _credits(session)
    yield from _numbers(session)


def _documents(session: Session) -> Iterator[str]:
    orgs = {o.id: o for o in session.scalars(select(t.Organization))}
    groups = {g.id: g for g in session.scalars(select(t.BillingGroup))}
    discounts = _sums(session, t.InvoiceDiscount.invoice_id, t.InvoiceDiscount.amount)
    applied = _sums(session, t.CreditApplication.invoice_id, t.CreditApplication.amount)
    for inv in session.scalars(select(t.Invoice).order_by(t.Invoice.id)):
        n, cur = inv.number, inv.currency
        lines = sum((line.amount for line in inv.lines), ZERO)
        taxable = inv.subtotal - inv.discount
        expected_tax = round_to_minor_unit(taxable * (inv.tax_rate or 0), cur)
        checks = [
            (inv.subtotal == lines, f"subtotal {inv.subtotal} is not the sum of its lines {lines}"),
            (inv.discount == discounts[inv.id], "discount is not the sum of its coupons"),
            (ZERO <= inv.discount <= inv.subtotal, "discount is negative or above the subtotal"),
            (inv.tax == expected_tax, f"tax {inv.tax} is not {expected_tax} on {taxable}"),
            (inv.total == taxable + inv.tax, "total is not subtotal - discount + tax"),
            (inv.credits_applied == applied[inv.id], "credits applied differ from the credits"),
            (ZERO <= inv.credits_applied <= inv.total, "credits are negative or above the total"),
            (
                inv.amount_due == inv.total - inv.credits_applied,
                "amount due is not total - credits",
            ),
            (ZERO <= inv.amount_paid <= inv.amount_due, "amount paid is outside 0..amount due"),
            (
                (inv.status == "paid") == (inv.amount_paid >= inv.amount_due),
                f"status {inv.status} does not match {inv.amount_paid} paid of {inv.amount_due}",
            ),
        ]
        for line in inv.lines:
            shares = sum((p.amount for p in line.projects), ZERO)
            if line.projects and shares != line.amount:
                checks.append((False, f"line {line.position}: project shares {shares} != amount"))
            if line.amount < 0:
                checks.append((False, f"line {line.position} is negative"))
        for ok, problem in checks:
            if not ok:
                yield f"invoice {n}: {problem}"
        group = groups[inv.billing_group_id]
        org = orgs[inv.organization_id]
        ctx = group_context(session, group)
        document = invoice_document(inv, organization=org.key, group=group.key, tz=ctx.tz)
        if checksum(document) != inv.checksum:
            yield f"invoice {n}: changed since issue (checksum differs)"


def _usage(session: Session) -> Iterator[str]:
    """Re-rate every close from the usage it settled; it must match what was invoiced."""
    invoices = {i.close_id: i for i in session.scalars(select(t.Invoice))}
    before: dict[int, claims.Mark] = {}  # group -> its closes so far
    for close in session.scalars(
        select(t.PeriodClose).order_by(t.PeriodClose.billing_group_id, t.PeriodClose.period_end)
    ):
        g = close.billing_group_id
        group = session.get_one(t.BillingGroup, g)
        ctx = group_context(session, group)
        period = Period(close.period_start, close.period_end)
        previous = before.get(g, claims.NOTHING)
        if close.usage_upto is None:  # made before migration 0004: its events carry its id
            new = claims.legacy_settled_by(g, close.id)
            settled = and_(t.UsageEvent.billing_group_id == g, t.UsageEvent.close_id < close.id)
            before[g] = claims.Mark(None, close.period_end)
        else:
            here = claims.Mark(close.usage_upto, close.period_end)
            new = claims.settled_by(g, previous, here)
            settled = and_(t.UsageEvent.billing_group_id == g, claims.settled(previous))
            if previous.upto is not None and previous.upto > close.usage_upto:
                yield (
                    f"group {group.key}: the close of {close.period_start.isoformat()} has a "
                    "lower usage watermark than the close before it"
                )
            before[g] = here
        lines = rate_period(session, ctx, period, new=new, settled=settled)
        expected = [
            (
                ln.metric,
                ln.quantity,
                ln.billable_quantity,
                ln.amount.amount,
                ln.late_period.start if ln.late_period else None,
                sorted((p.project, p.quantity, p.amount.amount) for p in ln.projects),
            )
            for ln in lines
        ]
        invoice = invoices.get(close.id)
        where = f"group {group.key} period from {close.period_start.isoformat()}"
        if invoice is None:
            if any(amount > 0 for _, _, _, amount, _, _ in expected):
                yield f"{where}: usage worth charging was settled without an invoice"
            continue
        stored = [
            (
                ln.metric,
                ln.quantity,
                ln.billable_quantity,
                ln.amount,
                ln.late_period_start,
                sorted((p.project_key, p.quantity, p.amount) for p in ln.projects),
            )
            for ln in invoice.lines
        ]
        if expected != stored:
            yield f"invoice {invoice.number}: lines differ from the usage it settled ({where})"
    outside = session.scalar(  # legacy marks (migration 0004) that contradict their close
        select(func.count())
        .select_from(t.UsageEvent)
        .join(t.PeriodClose, t.PeriodClose.id == t.UsageEvent.close_id)
        .where(
            (t.PeriodClose.billing_group_id != t.UsageEvent.billing_group_id)
            | (t.UsageEvent.ts >= t.PeriodClose.period_end)
        )
    )
    if outside:
        yield f"{outside} usage events were settled by a close of another group or a later period"


def _payments(session: Session) -> Iterator[str]:
    allocated = _sums(session, t.PaymentAllocation.payment_id, t.PaymentAllocation.amount)
    to_credit = _sums(session, t.Credit.payment_id, t.Credit.amount)
    for p in session.scalars(select(t.Payment)):
        if allocated[p.id] + to_credit[p.id] != p.amount:
            yield (
                f"payment {p.reference}: {allocated[p.id]} allocated + {to_credit[p.id]} credited "
                f"!= {p.amount} received"
            )
    paid = _sums(session, t.PaymentAllocation.invoice_id, t.PaymentAllocation.amount)
    for inv in session.scalars(select(t.Invoice)):
        if paid[inv.id] != inv.amount_paid:
            yield f"invoice {inv.number}: paid {inv.amount_paid} != allocations {paid[inv.id]}"


def _credits(session: Session) -> Iterator[str]:
    used = _sums(session, t.CreditApplication.credit_id, t.CreditApplication.amount)
    for c in session.scalars(select(t.Credit)):
        if c.remaining < 0:
            yield f"credit {c.id}: remaining {c.remaining} is negative"
        if c.remaining != c.amount - used[c.id]:
            yield f"credit {c.id}: {c.remaining} left != {c.amount} granted - {used[c.id]} used"


def _numbers(session: Session) -> Iterator[str]:
    counters = {(c.name, c.year): c.value for c in session.scalars(select(t.Counter))}
    for name, column in (("invoice", t.Invoice.number), ("receipt", t.Payment.receipt_number)):
        by_year: dict[int, list[int]] = defaultdict(list)
        for (number,) in session.execute(select(column)):
            _, year_text, sequence = number.rsplit("-", 2)
            by_year[int(year_text)].append(int(sequence))
        for year in sorted(set(by_year) | {y for (n, y) in counters if n == name}):
            seen = sorted(by_year.get(year, []))
            top = counters.get((name, year), 0)
            if seen != list(range(1, top + 1)):
                missing = sorted(set(range(1, top + 1)) - set(seen))[:10]
                yield f"{name} numbers of {year} are not gapless 1..{top} (missing {missing})"
