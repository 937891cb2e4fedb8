"""The two ways a request can fail: a refusal the user can act on, or our own fault."""

from __future__ import annotations

from slack_sdk.models.blocks import Block

from billing_core.errors import BillingError
from bot.views.base import Reply, escape_keeping_mentions, fallback, note, plain, section


def refusal(error: BillingError) -> Reply:
    """A BillingError: what was wrong and, when known, what would work."""
    message = escape_keeping_mentions(error.message)
    blocks: list[Block] = [section(f":no_entry_sign: {message}")]
    text = [plain(message)]
    if error.hint:
        hint = escape_keeping_mentions(error.hint)
        blocks.append(note(hint))
        text.append(plain(hint))
    return Reply(fallback([" ".join(text)]), tuple(blocks))


def apology(reference: str) -> Reply:
    """An unexpected failure: no details, a reference an operator can find in the logs."""
    text = (
        "Sorry, something went wrong on our side and your request was not completed. "
        f"If it keeps happening, give an operator the reference `{reference}`."
    )
    return Reply(fallback([plain(text)]), (section(f":warning: {text}"),))
