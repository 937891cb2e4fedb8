"""Admin changes: the assign question, the outcome of a change, and the audit channel line."""

from __future__ import annotations

from slack_sdk.models.blocks import ActionsBlock, ButtonElement

from billing_core.services import Change
from bot.views.base import Reply, escape_keeping_mentions, fallback, key, note, plain, section

CONFIRM_ACTION = "assign_confirm"
CANCEL_ACTION = "assign_cancel"


def assign_question(*, project: str, current: str, target: str, value: str) -> Reply:
    """Ask before moving a project; the buttons carry what was asked (see bot.handlers)."""
    question = (
        f"Move project {key(project)} from {key(current)} to {key(target)}? "
        "Its usage from now on is billed to the new group; issued invoices stay as they are."
    )
    buttons = ActionsBlock(
        block_id="assign",
        elements=[
            ButtonElement(text="Confirm", action_id=CONFIRM_ACTION, value=value, style="primary"),
            ButtonElement(text="Cancel", action_id=CANCEL_ACTION, value=value),
        ],
    )
    return Reply(fallback([plain(question)]), (section(question), buttons))


def change_done(change: Change) -> Reply:
    """The answer to the admin who made a change."""
    text = escape_keeping_mentions(change.message)
    return Reply(
        fallback([plain(text)]),
        (section(f":white_check_mark: {text}"), note("Written to the audit log.")),
    )


def assign_cancelled(*, project: str, current: str) -> Reply:
    text = f"Cancelled: project {key(project)} stays in {key(current)}. Nothing was changed."
    return Reply(fallback([plain(text)]), (section(text),))


def audit_line(change: Change) -> Reply:
    """The line posted to AUDIT_CHANNEL for every admin change."""
    text = escape_keeping_mentions(change.message)
    when = change.at.isoformat(timespec="seconds")
    context = f"by <@{change.actor}> · {when} · {change.action} · {key(change.subject)}"
    return Reply(
        fallback([f"{plain(text)} By <@{change.actor}> at {when}."]),
        (
            section(text),
            note(context),
        ),
    )
