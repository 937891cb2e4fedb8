"""Which messages an invoice owes its contacts at a given moment: pure rules, no database.

Steps of one invoice, for each billing contact (``recipient``):

* ``issued`` — the invoice notice, due when the invoice is issued (its ``issued_at``).
* ``due-3``, ``due+0``, ... — one per REMINDER_OFFSETS entry, due at 09:00 organization time
  on ``due_date + offset`` days, while the invoice is open.

Rules (see the package docstring for why):

* Only the latest step that came due is sent; earlier ones never sent are recorded as skipped.
* A step that came due at or before the invoice was issued is skipped: the notice covers it.
* If a reminder step is due before the notice went out (downtime), the notice is merged into
  that reminder: one message, which shows the whole invoice; the notice is recorded as skipped.
* Paid invoices get no more reminders; a paid invoice's notice is still sent (it is the
  document), but only within NOTICE_HORIZON of its issue, so history loaded before the bot ran
  is not announced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

NOTICE = "issued"
ALERT_PREFIX = "alert:"
REMINDER_TIME = time(9, 0)
NOTICE_HORIZON = timedelta(days=35)


def reminder_step(offset: int) -> str:
    return f"due{offset:+d}"


def is_reminder(step: str) -> bool:
    return step.startswith("due")


def is_alert(step: str) -> bool:
    return step.startswith(ALERT_PREFIX)


def alert_step(step: str, recipient: str) -> str:
    """The audit-channel report of giving up on ``step`` to ``recipient``."""
    return f"{ALERT_PREFIX}{step}:{recipient}"


def parse_alert_step(step: str) -> tuple[str, str]:
    """``alert:due+3:user:U1`` -> (``due+3``, ``user:U1``)."""
    failed_step, _, recipient = step.removeprefix(ALERT_PREFIX).partition(":")
    return failed_step, recipient


def step_due_at(due_date: date, offset: int, tz: ZoneInfo) -> datetime:
    """09:00 organization time on ``due_date + offset`` days."""
    day = due_date + timedelta(days=offset)
    return datetime.combine(day, REMINDER_TIME, tzinfo=tz)


def outbox_key(number: str, step: str, recipient: str) -> str:
    """The idempotency key carried in the Slack message's metadata."""
    return f"{number}/{step}/{recipient}"


@dataclass(frozen=True, slots=True)
class InvoiceState:
    invoice_id: int
    number: str
    is_open: bool
    issued_at: datetime
    due_date: date
    tz: ZoneInfo
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Known:
    """An outbox row that already exists."""

    row_id: int
    state: str


@dataclass(frozen=True, slots=True)
class NewRow:
    invoice_id: int
    number: str
    step: str
    recipient: str
    state: str  # "pending" or "skipped"
    due_at: datetime
    note: str | None = None

    @property
    def key(self) -> str:
        return outbox_key(self.number, self.step, self.recipient)


@dataclass(frozen=True, slots=True)
class Supersede:
    """A pending row that will not be sent after all."""

    row_id: int
    invoice_id: int
    number: str
    step: str
    recipient: str
    note: str

    @property
    def key(self) -> str:
        return outbox_key(self.number, self.step, self.recipient)


Action = NewRow | Supersede


def plan_invoice(
    invoice: InvoiceState,
    known: Mapping[tuple[str, str], Known],
    *,
    offsets: Sequence[int],
    now: datetime,
) -> list[Action]:
    """The rows to add and the pending rows to drop for one invoice at ``now``."""
    steps = [(reminder_step(o), step_due_at(invoice.due_date, o, invoice.tz)) for o in offsets]
    steps.sort(key=lambda pair: pair[1])
    before_issue = [(s, at) for s, at in steps if at <= invoice.issued_at]
    came_due = [(s, at) for s, at in steps if invoice.issued_at < at <= now]
    actions: list[Action] = []
    for recipient in invoice.recipients:
        mine = {step: row for (step, rec), row in known.items() if rec == recipient}
        actions += _plan_recipient(invoice, recipient, mine, before_issue, came_due, now)
    listed = set(invoice.recipients)
    for (step, recipient), row in sorted(known.items()):
        if row.state == "pending" and recipient not in listed and not is_alert(step):
            actions.append(
                Supersede(
                    row.row_id,
                    invoice.invoice_id,
                    invoice.number,
                    step,
                    recipient,
                    "no longer a billing contact",
                )
            )
    return actions


def _plan_recipient(
    invoice: InvoiceState,
    recipient: str,
    mine: Mapping[str, Known],
    before_issue: Sequence[tuple[str, datetime]],
    came_due: Sequence[tuple[str, datetime]],
    now: datetime,
) -> list[Action]:
    inv, number = invoice.invoice_id, invoice.number

    def new(step: str, state: str, due_at: datetime, note: str | None = None) -> NewRow:
        return NewRow(inv, number, step, recipient, state, due_at, note)

    def drop(step: str, note: str) -> Supersede:
        return Supersede(mine[step].row_id, inv, number, step, recipient, note)

    actions: list[Action] = []
    if not invoice.is_open:
        for step, row in sorted(mine.items()):
            if is_reminder(step) and row.state == "pending":
                actions.append(drop(step, "invoice paid"))
        if NOTICE not in mine and now - invoice.issued_at <= NOTICE_HORIZON:
            actions.append(new(NOTICE, "pending", invoice.issued_at))
        return actions
    for step, at in before_issue:
        if step not in mine:
            actions.append(new(step, "skipped", at, "came due before the invoice was issued"))
    if not came_due:
        if NOTICE not in mine:
            actions.append(new(NOTICE, "pending", invoice.issued_at))
        return actions
    latest, latest_at = came_due[-1]
    if latest not in mine:
        actions.append(new(latest, "pending", latest_at))
    for step, at in came_due[:-1]:
        if step not in mine:
            actions.append(
                new(step, "skipped", at, f"missed; only the latest step {latest} is sent")
            )
        elif mine[step].state == "pending":
            actions.append(drop(step, f"superseded by {latest}"))
    if NOTICE not in mine:
        actions.append(new(NOTICE, "skipped", invoice.issued_at, f"merged into {latest}"))
    elif mine[NOTICE].state == "pending":
        actions.append(drop(NOTICE, f"merged into {latest}"))
    return actions
