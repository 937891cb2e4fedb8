"""Shared pieces of the Block Kit builders: the Reply type, escaping, size limits.

Slack refuses a whole message when one block is too long or there are too many blocks, so the
limits are enforced here, once, by truncating with a visible note instead of failing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

MAX_BLOCKS = 50  # a message; a Home tab allows 100
SECTION_CHARS = 3000
HEADER_CHARS = 150
TEXT_CHARS = 3000  # the fallback ``text``: Slack allows more, notifications show far less
# Slack's own markup that our messages insert on purpose (mentions of users and channels).
_SLACK_TOKEN = re.compile(r"<[@#!][A-Za-z0-9^|_.-]+>")


@dataclass(frozen=True)
class Reply:
    """A message: Block Kit blocks plus the plain ``text`` Slack shows where blocks can't go."""

    text: str
    blocks: tuple[Block, ...] = field(default=())

    def message(self) -> dict[str, Any]:
        """Keyword arguments for chat.postMessage, chat.postEphemeral and response_url."""
        return {"text": self.text, "blocks": [b.to_dict() for b in self.blocks]}

    def buttons(self) -> list[ButtonElement]:
        """The buttons that answer back (not links), in order."""
        found = []
        for block in self.blocks:
            if isinstance(block, ActionsBlock):
                found += [e for e in block.elements if isinstance(e, ButtonElement) and not e.url]
        return found


def escape(text: str) -> str:
    """Text from the database shown in mrkdwn: Slack's three escapes, nothing else."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_keeping_mentions(text: str) -> str:
    """Escape a message that may hold our own ``<@U…>`` / ``<#C…>`` mentions, keeping them."""
    out, last = [], 0
    for match in _SLACK_TOKEN.finditer(text):
        out.append(escape(text[last : match.start()]))
        out.append(match.group(0))
        last = match.end()
    out.append(escape(text[last:]))
    return "".join(out)


def key(value: str) -> str:
    """A key the user can type back, shown as code."""
    return f"`{value}`"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def header(text: str) -> HeaderBlock:
    return HeaderBlock(text=PlainTextObject(text=clip(text, HEADER_CHARS), emoji=False))


def section(text: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=clip(text, SECTION_CHARS)))


def note(text: str) -> ContextBlock:
    return ContextBlock(elements=[MarkdownTextObject(text=clip(text, SECTION_CHARS))])


def divider() -> DividerBlock:
    return DividerBlock()


def sections(lines: Iterable[str]) -> list[SectionBlock]:
    """Lines packed into as few sections as the 3,000-character limit allows."""
    out: list[SectionBlock] = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        line = clip(line, SECTION_CHARS)
        if chunk and size + 1 + len(line) > SECTION_CHARS:
            out.append(section("\n".join(chunk)))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        out.append(section("\n".join(chunk)))
    return out


def capped(
    blocks: Sequence[Block], *, limit: int = MAX_BLOCKS, more: str = ""
) -> tuple[Block, ...]:
    """At most ``limit`` blocks; what is cut is announced in a last context line."""
    if len(blocks) <= limit:
        return tuple(blocks)
    hidden = len(blocks) - (limit - 1)
    text = f"… {hidden} more blocks not shown.{(' ' + more) if more else ''}"
    return (*blocks[: limit - 1], note(text))


def fallback(lines: Iterable[str]) -> str:
    """The plain ``text`` of a reply: no markup, within a notification-friendly size."""
    text = "\n".join(line for line in lines if line)
    return clip(text, TEXT_CHARS) or "Billing"


def plain(text: str) -> str:
    """Mrkdwn made plain for a ``text`` fallback (bold markers and code ticks dropped)."""
    return re.sub(r"[*`]", "", text)
