"""Plain-text renderings for the terminal (the demo and the console)."""

from __future__ import annotations

from datetime import datetime

from babel import Locale

from billing_core.model import Actor, Balance, InvoiceView, Owed
from billing_core.services import BillingService
from bot import format as fmt


def balance_text(balances: list[Balance], locale: Locale) -> str:
    out = []
    for b in balances:
        out.append(f"{b.group.name} ({b.group.key}), {fmt.period(b.period, locale)} so far")
        for line in b.lines:
            label = line.category if line.metric is None else f"{line.category} · {line.metric}"
            out.append(f"  {label:<40} {fmt.money(line.amount, locale):>16}")
        t = b.totals
        out.append(f"  {'Subtotal':<40} {fmt.money(t.subtotal, locale):>16}")
        if not t.discount.is_zero():
            codes = ", ".join(b.coupon_codes)
            out.append(f"  {'Discount ' + codes:<40} {fmt.money(-t.discount, locale):>16}")
        out.append(f"  {'Tax':<40} {fmt.money(t.tax, locale):>16}")
        if not t.credits_applied.is_zero():
            out.append(f"  {'Credits':<40} {fmt.money(-t.credits_applied, locale):>16}")
        out.append(f"  {'Due if invoiced now':<40} {fmt.money(t.amount_due, locale):>16}")
    return "\n".join(out)


def owed_text(owed: list[Owed], locale: Locale) -> str:
    out = []
    for o in owed:
        line = f"{o.group.name} ({o.group.key}): {fmt.money(o.outstanding, locale)} unpaid"
        if o.overdue:
            line += f", overdue: {', '.join(o.overdue)}"
        out.append(line)
    return "\n".join(out)


def invoices_text(invoices: list[InvoiceView], locale: Locale) -> str:
    out = []
    for i in invoices:
        total = fmt.money(i.totals.total, locale)
        due = fmt.day(i.due_date, locale)
        out.append(
            f"{i.number}  {fmt.period(i.period, locale):<30} {total:>14}  {i.status:<5} due {due}"
        )
    return "\n".join(out) or "No invoices yet."


def render_summary(service: BillingService, actor: Actor, *, now: datetime, locale: Locale) -> str:
    return "\n\n".join(
        [
            "/billing balance\n" + balance_text(service.balance(actor, at=now), locale),
            "/billing owed\n" + owed_text(service.owed(actor, at=now), locale),
            "/billing invoices\n" + invoices_text(service.invoices(actor), locale),
        ]
    )
