"""``balance``: the open period's charges so far, as they would be invoiced now."""

from __future__ import annotations

from collections.abc import Sequence

from babel import Locale
from slack_sdk.models.blocks import Block

from billing_core.model import Balance
from billing_core.money import Money
from billing_core.rating import Line
from bot import format as fmt
from bot.views.base import Reply, capped, divider, escape, fallback, key, note, section


def by_category(lines: Sequence[Line]) -> list[tuple[str, Money]]:
    """Line amounts added up per category (late usage of an earlier period kept apart)."""
    totals: dict[tuple[str, object], Money] = {}
    labels: dict[tuple[str, object], str] = {}
    for line in lines:
        slot = (line.category, line.late_period)
        totals[slot] = totals[slot] + line.amount if slot in totals else line.amount
        labels[slot] = line.category if line.late_period is None else f"{line.category} (late)"
    return [(labels[slot], totals[slot]) for slot in totals]


def balance_lines(b: Balance, locale: Locale) -> list[str]:
    """The rows of one group's balance, as mrkdwn lines."""
    t = b.totals
    rows = [f"{escape(label)}: {fmt.money(value, locale)}" for label, value in by_category(b.lines)]
    if not b.lines:
        rows.append("_No charges so far this period._")
    rows.append(f"Subtotal: {fmt.money(t.subtotal, locale)}")
    if not t.discount.is_zero():
        codes = ", ".join(b.coupon_codes)
        rows.append(f"Coupons ({escape(codes)}): {fmt.minus(t.discount, locale)}")
    if b.tax_rate:
        rows.append(f"Tax {fmt.rate(b.tax_rate, locale)}: {fmt.money(t.tax, locale)}")
    if not t.credits_applied.is_zero():
        rows.append(f"Credits: {fmt.minus(t.credits_applied, locale)}")
    rows.append(f"*Due if invoiced now: {fmt.money(t.amount_due, locale)}*")
    return rows


def balance_reply(balances: Sequence[Balance], locale: Locale) -> Reply:
    """Each group's open period so far: categories, coupons, tax and credits as they apply now."""
    if not balances:
        return Reply("Your organization has no billing groups yet.")
    blocks: list[Block] = []
    summary = []
    for i, b in enumerate(balances):
        if i:
            blocks.append(divider())
        title = f"*{escape(b.group.name)}* ({key(b.group.key)})"
        blocks.append(section(f"{title} — {fmt.period(b.period, locale)}, so far"))
        blocks.append(section("\n".join(balance_lines(b, locale))))
        summary.append(
            f"{escape(b.group.name)}: {fmt.money(b.totals.amount_due, locale)} due if invoiced now"
        )
    blocks.append(note("Charges of the current period so far; they are invoiced when it ends."))
    return Reply(
        fallback(["Balance so far:", *summary]),
        capped(blocks, more="Ask for one group: `balance GROUP`."),
    )
