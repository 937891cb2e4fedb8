"""``owed``: unpaid totals per group, open invoices listed, overdue ones marked."""

from __future__ import annotations

from collections.abc import Sequence

from babel import Locale
from slack_sdk.models.blocks import Block

from billing_core.model import Owed
from bot import format as fmt
from bot.views.base import Reply, capped, escape, fallback, key, note, sections


def owed_lines(o: Owed, locale: Locale) -> list[str]:
    title = f"*{escape(o.group.name)}* ({key(o.group.key)})"
    if not o.open_invoices:
        return [f"{title}: nothing unpaid"]
    rows = [f"{title}: *{fmt.money(o.outstanding, locale)}* unpaid"]
    for inv in o.open_invoices:
        late = " — *overdue*" if inv.number in o.overdue else ""
        rows.append(
            f"• {key(inv.number)}: {fmt.money(inv.outstanding, locale)}, "
            f"due {fmt.day(inv.due_date, locale)}{late}"
        )
    return rows


def owed_reply(owed: Sequence[Owed], locale: Locale) -> Reply:
    """What is unpaid per group, in the group's currency; overdue invoices marked."""
    if not owed:
        return Reply("Your organization has no billing groups yet.")
    lines: list[str] = []
    summary = []
    for o in owed:
        lines += owed_lines(o, locale)
        overdue = f" ({len(o.overdue)} overdue)" if o.overdue else ""
        summary.append(
            f"{escape(o.group.name)}: {fmt.money(o.outstanding, locale)} unpaid{overdue}"
        )
    blocks: list[Block] = [*sections(lines)]
    if any(o.overdue for o in owed):
        blocks.append(note("Overdue invoices are past their due date. `invoice NUMBER` shows one."))
    return Reply(fallback(["Unpaid:", *summary]), capped(blocks))
