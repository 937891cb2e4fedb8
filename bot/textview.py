"""Block Kit as readable plain text: what the console and the demo print.

It reads the same block dictionaries Slack receives, so the console shows exactly what a Slack
user would see, minus the styling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from babel import Locale

from billing_core.model import Actor
from billing_core.services import BillingService
from bot import views
from bot.views import Reply

EMOJI = {":white_check_mark:": "✓", ":no_entry_sign:": "✗", ":warning:": "!"}
_MENTION = re.compile(r"<([@#!])([^>|]+)(?:\|([^>]*))?>")
_LINK = re.compile(r"<(https?://[^>|]+)(?:\|([^>]*))?>")
_BOLD = re.compile(r"\*([^*\n]+)\*")
_ITALIC = re.compile(r"(?<!\w)_([^_\n]+)_(?!\w)")


def mrkdwn_to_text(text: str) -> str:
    """Slack mrkdwn as plain text: links spelled out, mentions as @id, no bold markers."""
    text = _LINK.sub(lambda m: f"{m[2]} ({m[1]})" if m[2] else m[1], text)
    text = _MENTION.sub(lambda m: f"{m[1] if m[1] != '!' else '@'}{m[3] or m[2]}", text)
    text = _BOLD.sub(r"\1", text)
    text = _ITALIC.sub(r"\1", text)
    for code, sign in EMOJI.items():
        text = text.replace(code, sign)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text(obj: Mapping[str, Any] | None) -> str:
    if not obj:
        return ""
    text = str(obj.get("text", ""))
    return mrkdwn_to_text(text) if obj.get("type") == "mrkdwn" else text


def button_label(element: Mapping[str, Any]) -> str:
    """``[confirm]`` for a button you answer by typing ``confirm``; links show their URL."""
    label = _text(element.get("text"))
    if element.get("url"):
        return f"[{label}: {element['url']}]"
    return f"[{label.lower()}]"


def render_blocks(blocks: Iterable[Mapping[str, Any]]) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            title = _text(block.get("text"))
            out += [title, "=" * len(title)]
        elif kind == "section":
            if block.get("text"):
                out.append(_text(block["text"]))
            out += [_text(f) for f in block.get("fields", [])]
            accessory = block.get("accessory")
            if accessory and accessory.get("type") == "button":
                out.append(button_label(accessory))
        elif kind == "context":
            out.append(" ".join(_text(e) for e in block.get("elements", []) if "text" in e))
        elif kind == "divider":
            out.append("")
        elif kind == "actions":
            out.append(
                " ".join(
                    button_label(e) for e in block.get("elements", []) if e.get("type") == "button"
                )
            )
    return "\n".join(out).strip()


def render(reply: Reply) -> str:
    """A reply as the console prints it: its blocks, or its text when it has none."""
    if not reply.blocks:
        return mrkdwn_to_text(reply.text)
    return render_blocks(b.to_dict() for b in reply.blocks)


def render_summary(service: BillingService, actor: Actor, *, now: datetime, locale: Locale) -> str:
    """Balance, owed and invoices of ``actor``'s organization, as ``/billing`` would answer."""
    replies = [
        ("balance", views.balance_reply(service.balance(actor, at=now), locale)),
        ("owed", views.owed_reply(service.owed(actor, at=now), locale)),
        ("invoices", views.invoices_reply(service.invoices(actor), locale)),
    ]
    return "\n\n".join(f"/billing {name}\n{render(reply)}" for name, reply in replies)
