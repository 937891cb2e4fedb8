"""``groups``: billing groups with their projects, payment method and contacts."""

from __future__ import annotations

from collections.abc import Sequence

from billing_core.model import ContactView, GroupView
from bot.views.base import Reply, capped, escape, fallback, key, note, sections


def contact(c: ContactView) -> str:
    if c.slack_user_id:
        return f"<@{c.slack_user_id}>"
    if c.slack_channel_id:
        return f"<#{c.slack_channel_id}>"
    return escape(c.email or "?")


def group_rows(g: GroupView) -> list[str]:
    plan = f" · plan {escape(g.plan)}" if g.plan else ""
    projects = ", ".join(key(p) for p in g.projects) or "_none_"
    contacts = ", ".join(contact(c) for c in g.contacts) or "_none_"
    return [
        f"*{escape(g.group.name)}* ({key(g.group.key)}) · {g.group.currency} · "
        f"{escape(g.payment_method.replace('_', ' '))} · {g.payment_terms_days} days to pay{plan}",
        f"      Projects: {projects}",
        f"      Contacts: {contacts}",
    ]


def groups_reply(groups: Sequence[GroupView]) -> Reply:
    """The organization's billing groups."""
    if not groups:
        return Reply("Your organization has no billing groups yet.")
    lines: list[str] = []
    for g in groups:
        lines += group_rows(g)
    blocks = [*sections(lines), note("Admins move a project with `assign PROJECT GROUP`.")]
    summary = [
        f"{escape(g.group.name)} ({g.group.key}): {len(g.projects)} projects" for g in groups
    ]
    return Reply(fallback(["Billing groups:", *summary]), capped(blocks))
