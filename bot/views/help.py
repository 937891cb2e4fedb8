"""``help``: what each subcommand does."""

from __future__ import annotations

from bot.commands import USAGES, usage_line
from bot.views.base import Reply, header, note, section


def help_reply(command: str) -> Reply:
    """Every subcommand with one line on what it does; admin-only ones marked."""
    lines = [
        f"{usage_line(u, command)} — {u.does}{' _(admins)_' if u.admin else ''}" for u in USAGES
    ]
    blocks = (
        header("Billing commands"),
        section("\n".join(lines)),
        note(
            "GROUP is a billing group key (see `groups`). The same words work in a direct "
            "message to me or after an @mention; I always answer you privately."
        ),
    )
    names = ", ".join(u.name for u in USAGES)
    return Reply(f"Billing commands: {names}. Try `{command} balance`.", blocks)
