"""Block Kit for invoice notices, payment reminders and give-up alerts: pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from babel import Locale
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    MarkdownTextObject,
    SectionBlock,
)

from billing_core.money import Money
from billing_core.periods import Period
from bot import format as fmt
from bot.views.base import Reply, escape, fallback, header, note, section
from bot.views.invoices import PAY_ACTION, payment_link


@dataclass(frozen=True, slots=True)
class InvoiceNote:
    """What a notice or reminder says about one invoice, in the organization's time zone."""

    number: str
    organization: str
    group: str
    period: Period
    total: Money
    outstanding: Money
    due_date: date

    @property
    def settled(self) -> bool:
        return self.outstanding.amount <= 0


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A message the bot stopped trying to deliver, for the audit channel."""

    number: str
    group: str
    step: str
    recipient: str
    attempts: int
    error: str


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def headline(invoice: InvoiceNote, *, reminder: bool, today: date) -> str:
    """The one line that says why this message came: a new invoice, or how close the due date is."""
    number = invoice.number
    if invoice.settled:
        return f"Invoice {number} is paid" if reminder else f"New invoice {number} (paid)"
    days = (invoice.due_date - today).days
    if not reminder:
        return f"New invoice {number}"
    if days > 0:
        return f"Reminder: invoice {number} is due in {_days(days)}"
    if days == 0:
        return f"Reminder: invoice {number} is due today"
    return f"Reminder: invoice {number} is {_days(-days)} overdue"


def invoice_message(
    invoice: InvoiceNote,
    *,
    reminder: bool,
    locale: Locale,
    today: date,
    payment_url: str | None,
) -> Reply:
    """An invoice notice or reminder: number, period, total, amount due, due date, Pay button."""
    title = headline(invoice, reminder=reminder, today=today)
    period = fmt.period(invoice.period, locale)
    total = fmt.money(invoice.total, locale)
    outstanding = fmt.money(invoice.outstanding, locale)
    due = fmt.day(invoice.due_date, locale)
    overdue = not invoice.settled and invoice.due_date < today
    link = None if invoice.settled else payment_link(payment_url, invoice.number)
    fields = [
        ("Invoice", escape(invoice.number)),
        ("Period", period),
        ("Total", total),
        ("Amount due", outstanding),
        ("Due date", due + (" (overdue)" if overdue else "")),
    ]
    blocks: list[Block] = [
        header(title),
        section(
            f"*{escape(invoice.organization)}* · {escape(invoice.group)}: invoice for {period}."
        ),
        SectionBlock(fields=[MarkdownTextObject(text=f"*{k}*\n{v}") for k, v in fields]),
    ]
    if link is not None:
        button = ButtonElement(text="Pay now", url=link, action_id=PAY_ACTION, style="primary")
        blocks.append(ActionsBlock(elements=[button]))
    blocks.append(note(f"You get this as a billing contact of {escape(invoice.group)}."))
    text = fallback(
        [
            f"{title}: {invoice.group}, period {period}, total {total}, amount due "
            f"{outstanding}, due {due}." + (f" Pay: {link}" if link else "")
        ]
    )
    return Reply(text=text, blocks=tuple(blocks))


def mention(recipient: str) -> str:
    """``user:U1`` -> ``<@U1>``, ``channel:C1`` -> ``<#C1>``."""
    kind, _, ident = recipient.partition(":")
    return f"<@{ident}>" if kind == "user" else f"<#{ident}>"


def alert_message(give_up: GiveUp) -> Reply:
    """The line posted to AUDIT_CHANNEL when a message is given up on."""
    what = "the invoice notice" if give_up.step == "issued" else f"reminder {give_up.step}"
    tries = "1 try" if give_up.attempts == 1 else f"{give_up.attempts} tries"
    who = mention(give_up.recipient)
    text = (
        f"Gave up delivering {what} of invoice {give_up.number} ({give_up.group}) to {who} "
        f"after {tries}: {give_up.error}"
    )
    body = (
        f":warning: Gave up delivering {what} of invoice *{escape(give_up.number)}* "
        f"({escape(give_up.group)}) to {who} after {tries}: `{escape(give_up.error)}`"
    )
    return Reply(text=fallback([text]), blocks=(section(body),))
