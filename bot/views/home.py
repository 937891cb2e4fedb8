"""The App Home tab: the asker's billing groups with their balance and what they owe."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from babel import Locale
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from billing_core.model import Balance, Owed
from bot import format as fmt
from bot.views.base import Reply, capped, divider, escape, fallback, header, key, note, section

HOME_BLOCKS = 100


def home_reply(
    balances: Sequence[Balance],
    owed: Sequence[Owed],
    locale: Locale,
    *,
    now: datetime,
    command: str,
) -> Reply:
    """One section per group: balance so far and unpaid invoices."""
    unpaid = {o.group.key: o for o in owed}
    blocks: list[Block] = [header("Billing")]
    summary = []
    for b in balances:
        o = unpaid.get(b.group.key)
        rows = [
            f"*{escape(b.group.name)}* ({key(b.group.key)})",
            f"Balance {fmt.period(b.period, locale)}: *{fmt.money(b.totals.amount_due, locale)}* "
            "due if invoiced now",
        ]
        if o is not None and o.open_invoices:
            overdue = f" — *{len(o.overdue)} overdue*" if o.overdue else ""
            rows.append(
                f"Unpaid: *{fmt.money(o.outstanding, locale)}* in {len(o.open_invoices)} "
                f"invoices{overdue}"
            )
        else:
            rows.append("Unpaid: nothing")
        blocks += [section("\n".join(rows)), divider()]
        summary.append(f"{escape(b.group.name)}: {fmt.money(b.totals.amount_due, locale)}")
    if not balances:
        blocks.append(section("Your organization has no billing groups yet."))
    blocks.append(
        note(
            f"As of {fmt.moment(now, locale)}. `{command} help` lists what you can ask; "
            "answers are private to you."
        )
    )
    return Reply(fallback(["Billing:", *summary]), capped(blocks, limit=HOME_BLOCKS))


def home_view(reply: Reply) -> View:
    """Any reply (including a refusal) as the Home tab."""
    return View(type="home", blocks=list(reply.blocks) or [section(reply.text)])
