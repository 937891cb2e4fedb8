"""The ``/billing`` grammar: text in, one command object out (or an InvalidInput saying why).

The same grammar serves the slash command, direct messages, @mentions and the console, so
every surface refuses the same mistakes with the same words.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from billing_core.errors import InvalidInput

# Keys follow the loader's rule (letters, digits, '-', '_', '.'; at most 64 characters), so a
# name we echo back can never carry Slack markup such as <!channel>.
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
INVOICE_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
COUPON_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Leading "<@U123>" or "<@U123|name>" of an @mention; Slack puts it in the event text.
MENTION = re.compile(r"^\s*<@[A-Z0-9]+(?:\|[^>]*)?>[\s:,]*")


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Balance:
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Owed:
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Invoices:
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Invoice:
    number: str


@dataclass(frozen=True, slots=True)
class Payments:
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Credits:
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Groups:
    pass


@dataclass(frozen=True, slots=True)
class UsageChart:
    """``usage [GROUP]``: the open period's charges per day, as a chart file per group."""

    group: str | None = None


@dataclass(frozen=True, slots=True)
class Export:
    """``export [GROUP]``: the invoices as the CSV of SPEC 4.4, as a file (admins)."""

    group: str | None = None


@dataclass(frozen=True, slots=True)
class Redeem:
    code: str
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Assign:
    project: str
    group: str


Command = (
    Help
    | Balance
    | Owed
    | Invoices
    | Invoice
    | Payments
    | Credits
    | Groups
    | UsageChart
    | Export
    | Redeem
    | Assign
)


_GROUP_COMMANDS: dict[str, Callable[[str | None], Command]] = {
    "balance": Balance,
    "owed": Owed,
    "invoices": Invoices,
    "payments": Payments,
    "credits": Credits,
    "usage": UsageChart,
    "export": Export,
}


@dataclass(frozen=True, slots=True)
class Usage:
    """One subcommand as ``help`` lists it."""

    name: str
    args: str
    does: str
    admin: bool = False

    @property
    def synopsis(self) -> str:
        return f"{self.name} {self.args}".strip()


USAGES: tuple[Usage, ...] = (
    Usage("help", "", "what each subcommand does"),
    Usage("balance", "[GROUP]", "the open period's charges so far, by category, as billed now"),
    Usage("owed", "[GROUP]", "what is unpaid per group, overdue invoices marked"),
    Usage("invoices", "[GROUP]", "recent invoices: number, period, total, status, due date"),
    Usage(
        "invoice",
        "NUMBER",
        "one invoice with its lines, a Download PDF button, and a Pay button while unpaid",
    ),
    Usage("payments", "[GROUP]", "recent payments with receipt numbers and what they paid"),
    Usage("credits", "[GROUP]", "remaining credits and when they expire"),
    Usage("groups", "", "billing groups with their projects, payment method and contacts"),
    Usage("usage", "[GROUP]", "a chart of this period's charges per day by category, as a file"),
    Usage("export", "[GROUP]", "the invoices as a CSV file, one row per line item", admin=True),
    Usage("redeem", "CODE [GROUP]", "redeem a coupon for a group", admin=True),
    Usage("assign", "PROJECT GROUP", "move a project to another billing group", admin=True),
)
_BY_NAME = {u.name: u for u in USAGES}
ADMIN_COMMANDS = frozenset(u.name for u in USAGES if u.admin)


def strip_invocation(text: str, *, command: str = "/billing") -> str:
    """The subcommand text of a DM, an @mention or a console line.

    Drops a leading @mention of the bot and a leading ``/billing``; undoes Slack's escaping of
    ``&``, ``<`` and ``>`` in message text.
    """
    text = MENTION.sub("", text, count=1).strip()
    first, _, rest = text.partition(" ")
    if first.casefold() in (command.casefold(), command.lstrip("/").casefold()):
        text = rest.strip()
    return html.unescape(text)


def parse(text: str, *, command: str = "/billing") -> Command:
    """Parse the text after ``/billing``; refuse with what was wrong and what would work."""
    words = text.split()
    if not words:
        return Help()
    name, args = words[0].casefold(), words[1:]
    if name in ("help", "?", "-h", "--help"):
        return Help()
    usage = _BY_NAME.get(name)
    if usage is None:
        raise _unknown(words[0], command)
    if name in _GROUP_COMMANDS:
        group = _optional(usage, args, "GROUP", KEY, command)
        kind: Callable[[str | None], Command] = _GROUP_COMMANDS[name]
        return kind(group)
    if name == "groups":
        _count(usage, args, 0, 0, command)
        return Groups()
    if name == "invoice":
        _count(usage, args, 1, 1, command)
        return Invoice(_checked(usage, "NUMBER", args[0], INVOICE_NUMBER, command).upper())
    if name == "redeem":
        _count(usage, args, 1, 2, command)
        code = _checked(usage, "CODE", args[0], COUPON_CODE, command)
        group = _checked(usage, "GROUP", args[1], KEY, command) if len(args) > 1 else None
        return Redeem(code, group)
    _count(usage, args, 2, 2, command)
    return Assign(
        _checked(usage, "PROJECT", args[0], KEY, command),
        _checked(usage, "GROUP", args[1], KEY, command),
    )


def usage_line(usage: Usage, command: str) -> str:
    return f"`{command} {usage.synopsis}`"


def _unknown(word: str, command: str) -> InvalidInput:
    shown = _shown(word)
    close = difflib.get_close_matches(word.casefold(), list(_BY_NAME), n=1, cutoff=0.6)
    if close:
        hint = f"Did you mean {usage_line(_BY_NAME[close[0]], command)}?"
    else:
        hint = f"`{command} help` lists what I can do."
    return InvalidInput(f"I don't know the subcommand `{shown}`.", hint=hint)


def _optional(
    usage: Usage, args: list[str], what: str, pattern: re.Pattern[str], command: str
) -> str | None:
    _count(usage, args, 0, 1, command)
    return _checked(usage, what, args[0], pattern, command) if args else None


def _count(usage: Usage, args: list[str], low: int, high: int, command: str) -> None:
    if low <= len(args) <= high:
        return
    if len(args) < low:
        missing = usage.args.split()[len(args)]
        problem = f"`{usage.name}` needs {missing}."
    elif high == 0:
        problem = f"`{usage.name}` takes no arguments."
    else:
        extra = " ".join(_shown(a) for a in args[high:])
        problem = f"`{usage.name}` got more than it takes: `{extra}`."
    raise InvalidInput(problem, hint=f"Use {usage_line(usage, command)}.")


def _checked(usage: Usage, what: str, value: str, pattern: re.Pattern[str], command: str) -> str:
    if pattern.fullmatch(value):
        return value
    raise InvalidInput(
        f"`{_shown(value)}` is not a valid {what.lower()}: use letters, digits, "
        "'-', '_' or '.' (at most 64).",
        hint=f"Use {usage_line(usage, command)}.",
    )


def _shown(value: str) -> str:
    """User text made safe to echo inside backticks: short, no markup, no backticks."""
    cleaned = value.replace("`", "'").replace("<", "‹").replace(">", "›").replace("&", "+")
    return cleaned if len(cleaned) <= 40 else cleaned[:39] + "…"
