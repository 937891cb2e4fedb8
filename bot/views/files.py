"""Answers that come with files: an invoice PDF, usage charts, the invoice export.

The handler says *what* the files are (``Files``); each surface delivers them its own way
(Slack: uploaded to the asker's DM; the console: saved to disk) and then says *where*
(``delivered``), or that they could not be sent (``upload_failed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from babel import Locale
from slack_sdk.models.blocks import Block

from billing_core.model import DailyCharges, InvoiceView
from billing_core.money import Money, total
from bot import format as fmt
from bot.views.base import (
    MAX_BLOCKS,
    Reply,
    capped,
    escape,
    fallback,
    key,
    note,
    plain,
    section,
    sections,
)


@dataclass(frozen=True, slots=True)
class Upload:
    """One file for the asker."""

    filename: str
    title: str
    content: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Files:
    """Files for the asker and the short message (mrkdwn) that goes with them."""

    uploads: tuple[Upload, ...]
    comment: str


def invoice_pdf_reply(inv: InvoiceView, upload: Upload) -> Reply:
    """The answer to Download PDF."""
    text = f"Invoice {key(inv.number)} as a PDF: {key(upload.filename)}."
    return Reply(fallback([plain(text)]), (section(text),))


def invoice_pdf_comment(inv: InvoiceView, locale: Locale) -> str:
    return (
        f"Invoice {inv.number} · {escape(inv.group.name)} · total "
        f"{fmt.money(inv.totals.total, locale)} · {inv.status}, due {fmt.day(inv.due_date, locale)}"
    )


def usage_reply(dailies: Sequence[DailyCharges], locale: Locale) -> Reply:
    """What the usage charts show: each group's period and its charges so far."""
    if not dailies:
        return Reply("Your organization has no billing groups yet.")
    rows = [
        f"*{escape(d.group.name)}* ({key(d.group.key)}) · {fmt.period(d.period, locale)}: "
        f"{fmt.money(_so_far(d), locale)} so far"
        for d in dailies
    ]
    charts = "one chart" if len(dailies) == 1 else f"{len(dailies)} charts, one per group"
    blocks: list[Block] = [
        section(f"Charges per day this period, by category ({charts}):"),
        *sections(rows),
        note("Before coupons, tax and credits; `balance` shows what would be due now."),
    ]
    summary = [
        f"{d.group.name}: {fmt.money(_so_far(d), locale)} so far this period" for d in dailies
    ]
    return Reply(fallback(["Charges per day, by category:", *summary]), capped(blocks))


def usage_comment(dailies: Sequence[DailyCharges], locale: Locale) -> str:
    periods = sorted({fmt.period(d.period, locale) for d in dailies})
    return f"Charges per day by category · {', '.join(periods)}"


def _so_far(daily: DailyCharges) -> Money:
    return total(
        (m for amounts in daily.by_category.values() for m in amounts), daily.group.currency
    )


def export_reply(documents: Sequence[dict[str, Any]], upload: Upload | None) -> Reply:
    """The answer to ``export``; ``documents`` are the SPEC 4.4 invoices in ``upload``."""
    if not documents or upload is None:
        text = "There are no invoices to export yet: the first one is issued when a period ends."
        return Reply(text, (section(text),))
    rows = sum(len(doc["lines"]) for doc in documents)
    text = (
        f"{key(upload.filename)}: {_count(len(documents), 'invoice')}, {_count(rows, 'row')} "
        "(one per line item, with its invoice's fields)."
    )
    return Reply(fallback([plain(text)]), (section(text),))


def export_comment(organization: str, count: int) -> str:
    return f"Invoice export of {key(organization)}: {_count(count, 'invoice')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def delivered(reply: Reply, where: str) -> Reply:
    """``reply`` with a last line saying where its files went."""
    body = reply.blocks or (section(escape(reply.text)),)
    kept = capped(body, limit=MAX_BLOCKS - 1)
    return Reply(fallback([reply.text, plain(where)]), (*kept, note(where)))


def upload_failed(reference: str, *, count: int = 1) -> Reply:
    """The files were made, but the surface could not hand them over."""
    what = "the file" if count == 1 else "the files"
    text = (
        f"Sorry, I could not send you {what}: Slack did not accept the upload, so nothing "
        "was sent. Please try again in a minute; if it keeps failing, give an operator the "
        f"reference `{reference}`."
    )
    return Reply(fallback([plain(text)]), (section(f":warning: {text}"),))
