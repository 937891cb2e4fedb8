"""``payments`` and ``credits``: money received, and money held for later invoices."""

from __future__ import annotations

from collections.abc import Sequence

from babel import Locale

from billing_core.model import CreditView, PaymentView
from bot import format as fmt
from bot.views.base import Reply, capped, escape, fallback, key, note, sections


def payment_rows(p: PaymentView, locale: Locale) -> list[str]:
    rows = [
        f"*Receipt {escape(p.receipt_number)}* · {fmt.money(p.amount, locale)} by "
        f"{escape(p.method.replace('_', ' '))} on {fmt.day(p.received_at.date(), locale)} · "
        f"{escape(p.group.name)} · ref {key(p.reference)}"
    ]
    for number, paid in p.allocations:
        rows.append(f"      ↳ paid {key(number)}: {fmt.money(paid, locale)}")
    if not p.to_credit.is_zero():
        rows.append(f"      ↳ kept as credit: {fmt.money(p.to_credit, locale)}")
    return rows


def payments_reply(payments: Sequence[PaymentView], locale: Locale) -> Reply:
    """Recent payments with receipt numbers and the invoices they paid."""
    if not payments:
        return Reply("No payments yet.")
    lines: list[str] = []
    for p in payments:
        lines += payment_rows(p, locale)
    summary = [
        f"{p.receipt_number}: {fmt.money(p.amount, locale)} "
        f"on {fmt.day(p.received_at.date(), locale)}"
        for p in payments
    ]
    return Reply(fallback([f"{len(payments)} recent payments:", *summary]), capped(sections(lines)))


def credits_reply(credits: Sequence[CreditView], locale: Locale) -> Reply:
    """Remaining credits per group and when they expire."""
    # Spent credits are not "remaining" (and SQLite compares the stored text, so the query
    # can return a credit with 0.00 left: see the issue note).
    credits = [c for c in credits if c.remaining.amount > 0]
    if not credits:
        return Reply("No credits left.")
    lines = []
    for c in credits:
        expiry = f"expires {fmt.day(c.expires_at.date(), locale)}" if c.expires_at else "no expiry"
        why = f" ({escape(c.reason)})" if c.reason else ""
        lines.append(
            f"*{escape(c.group.name)}* ({key(c.group.key)}): {fmt.money(c.remaining, locale)} left "
            f"of {fmt.money(c.granted, locale)}{why} · {expiry}"
        )
    blocks = [*sections(lines), note("Credits pay invoices when they are issued.")]
    summary = [f"{escape(c.group.name)}: {fmt.money(c.remaining, locale)} left" for c in credits]
    return Reply(fallback(["Credits:", *summary]), capped(blocks))
