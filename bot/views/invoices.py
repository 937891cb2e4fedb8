"""``invoices`` (the recent ones) and ``invoice NUMBER`` (one, with its lines and Pay button)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from babel import Locale
from slack_sdk.models.blocks import ActionsBlock, ButtonElement

from billing_core.model import InvoiceSummary, InvoiceView
from billing_core.rating import Line
from bot import format as fmt
from bot.views.base import (
    Reply,
    capped,
    divider,
    escape,
    fallback,
    header,
    key,
    note,
    section,
    sections,
)

PAY_ACTION = "pay_invoice"
PDF_ACTION = "invoice_pdf"  # value: the invoice number


def invoices_reply(invoices: Sequence[InvoiceSummary], locale: Locale) -> Reply:
    """Recent invoices, newest first: number, period, total, status and due date."""
    if not invoices:
        return Reply(
            "No invoices yet.",
            (section("No invoices yet: the first one is issued when a billing period ends."),),
        )
    lines = [
        f"{key(i.number)} · {escape(i.group.name)} · {fmt.period(i.period, locale)} · "
        f"{fmt.money(i.total, locale)} · *{i.status}* · due {fmt.day(i.due_date, locale)}"
        for i in invoices
    ]
    blocks = [
        *sections(lines),
        note("`invoice NUMBER` shows one invoice with its lines."),
    ]
    summary = [
        f"{i.number}: {fmt.money(i.total, locale)}, {i.status}, due {fmt.day(i.due_date, locale)}"
        for i in invoices
    ]
    return Reply(fallback([f"{len(invoices)} recent invoices:", *summary]), capped(blocks))


def payment_link(template: str | None, number: str) -> str | None:
    """PAYMENT_URL with the invoice number filled in (by plain replacement: other braces stay)."""
    if not template:
        return None
    return template.replace("{number}", quote(number, safe=""))


def line_rows(line: Line, locale: Locale) -> list[str]:
    """One invoice line and its share per project."""
    label = f"*{escape(line.category)}*"
    if line.metric:
        label += f" · {escape(line.metric)}"
    if line.late_period is not None:
        label += f" (usage of {fmt.period(line.late_period, locale)})"
    qty = fmt.quantity(line.quantity, locale)
    if line.billable_quantity != line.quantity:
        qty += f", {fmt.quantity(line.billable_quantity, locale)} billable"
    rows = [f"{label} — {qty}: {fmt.money(line.amount, locale)}"]
    rows += [
        f"      ↳ {key(share.project)}: {fmt.money(share.amount, locale)} "
        f"({fmt.quantity(share.quantity, locale)})"
        for share in line.projects
    ]
    return rows


def totals_rows(inv: InvoiceView, locale: Locale) -> list[str]:
    t = inv.totals
    rows = [f"Subtotal: {fmt.money(t.subtotal, locale)}"]
    if not t.discount.is_zero():
        rows.append(f"Coupons: {fmt.minus(t.discount, locale)}")
    tax_label = f"Tax {fmt.rate(inv.tax_rate, locale)}" if inv.tax_rate else "Tax"
    rows.append(f"{tax_label}: {fmt.money(t.tax, locale)}")
    rows.append(f"*Total: {fmt.money(t.total, locale)}*")
    if not t.credits_applied.is_zero():
        rows.append(f"Credits applied: {fmt.minus(t.credits_applied, locale)}")
    rows.append(f"Amount due: {fmt.money(t.amount_due, locale)}")
    if not inv.amount_paid.is_zero():
        rows.append(f"Paid: {fmt.minus(inv.amount_paid, locale)}")
    rows.append(f"*Outstanding: {fmt.money(inv.outstanding, locale)}*")
    return rows


def invoice_reply(inv: InvoiceView, locale: Locale, *, payment_url: str | None) -> Reply:
    """One invoice: its lines by category and project, totals, Download PDF, Pay while unpaid."""
    facts = (
        f"*{escape(inv.group.name)}* ({key(inv.group.key)}) · {fmt.period(inv.period, locale)}\n"
        f"Invoice date {fmt.day(inv.invoice_date, locale)} · due "
        f"{fmt.day(inv.due_date, locale)} · *{inv.status}*"
    )
    line_text: list[str] = []
    for line in sorted(inv.lines, key=lambda x: (x.category, x.metric or "")):
        line_text += line_rows(line, locale)
    blocks = [header(f"Invoice {inv.number}"), section(facts), divider()]
    blocks += sections(line_text or ["_No lines._"])
    blocks += [divider(), section("\n".join(totals_rows(inv, locale)))]
    link = payment_link(payment_url, inv.number)
    unpaid = inv.status == "open" and inv.outstanding.amount > 0
    buttons = [ButtonElement(text="Download PDF", action_id=PDF_ACTION, value=inv.number)]
    if unpaid and link:
        buttons.append(
            ButtonElement(
                text=f"Pay {fmt.money(inv.outstanding, locale)}",
                url=link,
                action_id=PAY_ACTION,
                style="primary",
            )
        )
    blocks.append(ActionsBlock(elements=buttons))
    text = (
        f"Invoice {inv.number} ({escape(inv.group.name)}): total "
        f"{fmt.money(inv.totals.total, locale)}, {inv.status}, outstanding "
        f"{fmt.money(inv.outstanding, locale)}, due {fmt.day(inv.due_date, locale)}"
    )
    if unpaid and link:
        text += f". Pay: {link}"
    # Keep the buttons: when lines are cut, they are cut before the totals and the buttons.
    tail = blocks[-2:]
    head = capped(blocks[: len(blocks) - len(tail)], limit=50 - len(tail))
    return Reply(fallback([text]), (*head, *tail))
