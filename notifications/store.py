"""The outbox table: planning writes, claiming rows for delivery, recording outcomes.

Row states: ``pending`` -> ``sending`` -> ``sent`` | ``pending`` (retry) | ``failed``, and
``pending`` -> ``skipped``. A row is marked ``sending`` (its attempt counted) and committed
*before* the post, with ``next_attempt_at`` as a lease; a ``sending`` row whose lease ran out
was in flight when its process died (or its post timed out), so it is "in doubt": the next
attempt first looks for its key in the conversation's history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session

from billing_core import ledger
from billing_core.db import tables as t
from billing_core.db.engine import dialect_insert
from billing_core.money import Money
from billing_core.periods import Period, zone
from notifications.plan import (
    NOTICE_HORIZON,
    Action,
    InvoiceState,
    Known,
    NewRow,
    alert_step,
    is_alert,
    is_reminder,
    outbox_key,
    parse_alert_step,
    plan_invoice,
)
from notifications.render import GiveUp, InvoiceNote

LEASE = timedelta(minutes=10)
MAX_ATTEMPTS = 8
BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(minutes=30)
# pg_advisory_xact_lock key serializing planners (any constant unique to this use).
PLAN_LOCK_KEY = 0x62696C6C_706C616E  # "billplan"
ERROR_CHARS = 500
THROTTLED_PER_BATCH = 1  # the sender spaces a rate-limited recipient's posts anyway
PLAN_CHUNK = 500  # new outbox rows per INSERT (11 parameters each)


def recipient_of(contact: t.Contact) -> str:
    if contact.slack_user_id:
        return f"user:{contact.slack_user_id}"
    return f"channel:{contact.slack_channel_id}"


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, ... capped at 30 min, after the ``attempts``-th failed try."""
    return min(BACKOFF_FIRST * (1 << max(0, min(attempts, 20) - 1)), BACKOFF_MAX)


# -- planning ------------------------------------------------------------------------------


def plan(session: Session, *, now: datetime, offsets: Sequence[int]) -> list[Action]:
    """What the outbox should gain and drop at ``now`` (reads only)."""
    if session.get_bind().dialect.name == "postgresql":
        # Planners take turns, so two replicas never plan the same invoice at once.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLAN_LOCK_KEY})
    invoices = _invoice_states(session, now)
    known = _known_rows(session, [i.invoice_id for i in invoices])
    actions: list[Action] = []
    for invoice in invoices:
        actions += plan_invoice(
            invoice, known.get(invoice.invoice_id, {}), offsets=offsets, now=now
        )
    return actions


def _invoice_states(session: Session, now: datetime) -> list[InvoiceState]:
    in_flight = select(t.OutboxMessage.invoice_id).where(
        t.OutboxMessage.state.in_(("pending", "sending"))
    )
    rows = session.execute(
        select(
            t.Invoice.id,
            t.Invoice.number,
            t.Invoice.status,
            t.Invoice.issued_at,
            t.Invoice.due_date,
            t.Invoice.billing_group_id,
            t.Organization.timezone,
        )
        .join(t.Organization, t.Organization.id == t.Invoice.organization_id)
        .where(
            t.Invoice.issued_at <= now,
            or_(
                t.Invoice.status == "open",
                t.Invoice.issued_at >= now - NOTICE_HORIZON,
                t.Invoice.id.in_(in_flight),
            ),
        )
        .order_by(t.Invoice.id)
    ).all()
    contacts: dict[int, list[str]] = defaultdict(list)
    group_ids = {r.billing_group_id for r in rows}
    if group_ids:
        for contact in session.scalars(
            select(t.Contact)
            .where(t.Contact.billing_group_id.in_(group_ids))
            .order_by(t.Contact.id)
        ):
            contacts[contact.billing_group_id].append(recipient_of(contact))
    return [
        InvoiceState(
            invoice_id=r.id,
            number=r.number,
            is_open=r.status == "open",
            issued_at=r.issued_at,
            due_date=r.due_date,
            tz=zone(r.timezone),
            recipients=tuple(contacts[r.billing_group_id]),
        )
        for r in rows
    ]


def _known_rows(
    session: Session, invoice_ids: Sequence[int]
) -> dict[int, dict[tuple[str, str], Known]]:
    known: dict[int, dict[tuple[str, str], Known]] = defaultdict(dict)
    for start in range(0, len(invoice_ids), 500):
        chunk = invoice_ids[start : start + 500]
        for row in session.execute(
            select(
                t.OutboxMessage.id,
                t.OutboxMessage.invoice_id,
                t.OutboxMessage.step,
                t.OutboxMessage.recipient,
                t.OutboxMessage.state,
            ).where(t.OutboxMessage.invoice_id.in_(chunk))
        ):
            if not is_alert(row.step):
                known[row.invoice_id][(row.step, row.recipient)] = Known(row.id, row.state)
    return known


def apply_plan(session: Session, actions: Iterable[Action], *, now: datetime) -> None:
    """Write a plan: new rows (a row that exists already is left alone), dropped rows."""
    new: list[dict[str, object]] = []
    for action in actions:
        if isinstance(action, NewRow):
            done = action.state != "pending"
            new.append(
                {
                    "invoice_id": action.invoice_id,
                    "step": action.step,
                    "recipient": action.recipient,
                    "state": action.state,
                    "due_at": action.due_at,
                    "next_attempt_at": None if done else now,
                    "note": action.note,
                    "finished_at": now if done else None,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        else:
            _skip(session, action.row_id, action.note, now=now)
    for start in range(0, len(new), PLAN_CHUNK):  # one INSERT per chunk, not one per row
        insert = dialect_insert(session, t.OutboxMessage).values(new[start : start + PLAN_CHUNK])
        session.execute(
            insert.on_conflict_do_nothing(index_elements=["invoice_id", "step", "recipient"])
        )


def _add_row(session: Session, *, now: datetime, **values: object) -> None:
    """Insert an outbox row unless its (invoice, step, recipient) exists already."""
    insert = dialect_insert(session, t.OutboxMessage).values(
        attempts=0, created_at=now, updated_at=now, **values
    )
    session.execute(
        insert.on_conflict_do_nothing(index_elements=["invoice_id", "step", "recipient"])
    )


def _skip(session: Session, row_id: int, note: str, *, now: datetime) -> None:
    session.execute(
        update(t.OutboxMessage)
        .where(t.OutboxMessage.id == row_id, t.OutboxMessage.state == "pending")
        .values(state="skipped", note=note, next_attempt_at=None, updated_at=now, finished_at=now)
    )


# -- what a row says -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """Everything needed to deliver one outbox row."""

    row_id: int
    key: str
    step: str
    recipient: str
    number: str
    org_locale: str | None
    local_now: datetime  # ``now`` in the organization's time zone
    note: InvoiceNote
    give_up: GiveUp | None  # set for audit-channel alerts

    @property
    def event_type(self) -> str:
        if self.give_up is not None:
            return "billing_delivery_failed"
        return "billing_reminder" if is_reminder(self.step) else "billing_invoice"


def unsaved_row(action: NewRow) -> t.OutboxMessage:
    """The row a plan would add, not added to any session (for dry runs)."""
    return t.OutboxMessage(
        invoice_id=action.invoice_id,
        step=action.step,
        recipient=action.recipient,
        state=action.state,
        due_at=action.due_at,
        attempts=0,
    )


def message_of(session: Session, row: t.OutboxMessage, *, now: datetime) -> Message:
    """What ``row`` says at ``now``: the invoice as it stands, or the give-up report."""
    invoice_id, step, recipient = row.invoice_id, row.step, row.recipient
    invoice = session.get_one(t.Invoice, invoice_id)
    org = session.get_one(t.Organization, invoice.organization_id)
    group = session.get_one(t.BillingGroup, invoice.billing_group_id)
    tz = zone(org.timezone)
    note = InvoiceNote(
        number=invoice.number,
        organization=org.name,
        group=group.name,
        period=Period(invoice.period_start.astimezone(tz), invoice.period_end.astimezone(tz)),
        total=Money(invoice.total, invoice.currency),
        outstanding=Money(invoice.amount_due - invoice.amount_paid, invoice.currency),
        due_date=invoice.due_date,
    )
    give_up = None
    if is_alert(step):
        failed_step, failed_recipient = parse_alert_step(step)
        failed = session.scalars(
            select(t.OutboxMessage).filter_by(
                invoice_id=invoice_id, step=failed_step, recipient=failed_recipient
            )
        ).one()
        give_up = GiveUp(
            number=invoice.number,
            group=group.name,
            step=failed_step,
            recipient=failed_recipient,
            attempts=failed.attempts,
            error=failed.last_error or "unknown error",
        )
    return Message(
        row_id=row.id or 0,
        key=outbox_key(invoice.number, step, recipient),
        step=step,
        recipient=recipient,
        number=invoice.number,
        org_locale=org.locale,
        local_now=now.astimezone(tz),
        note=note,
        give_up=give_up,
    )


def ready_rows(
    session: Session, *, now: datetime, exclude: Collection[int] = ()
) -> list[t.OutboxMessage]:
    """Rows whose next attempt is due, oldest first (for dry runs; no locks)."""
    return list(
        session.scalars(
            select(t.OutboxMessage)
            .where(
                t.OutboxMessage.state.in_(("pending", "sending")),
                t.OutboxMessage.next_attempt_at <= now,
                t.OutboxMessage.id.not_in(exclude),
            )
            .order_by(t.OutboxMessage.next_attempt_at, t.OutboxMessage.id)
        )
    )


# -- claiming and recording ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    message: Message
    attempts: int
    in_doubt: bool  # it may have been posted already: look in the history first


@dataclass(frozen=True, slots=True)
class Settled:
    """A row that reached a final state (or a retry) during this run."""

    key: str
    state: Literal["sent", "skipped", "failed", "pending", "sending"]
    detail: str | None = None


def claim_batch(
    session: Session,
    *,
    now: datetime,
    after: int,
    limit: int,
    skip_recipients: Collection[str] = (),
    throttled: Collection[str] = (),
    only_recipients: Collection[str] = (),
) -> tuple[list[Claim | Settled], int | None, bool]:
    """Take up to ``limit`` due rows with ids above ``after`` (the caller commits, then posts).

    Rows come in id order, so a run sweeps the due rows with a cursor (``after`` = the last id
    returned, the second element; None when nothing was left) instead of listing what it has
    handled, and a recipient's rows come in the order they were planned. ``skip_recipients``
    (recipients Slack asked to wait) are left alone, and of a ``throttled`` recipient (one
    Slack rate-limited earlier) at most THROTTLED_PER_BATCH rows are taken: the third element
    says whether rows were left for another sweep that way. ``only_recipients``, if given,
    limits the claim to those recipients. PostgreSQL: ``FOR UPDATE SKIP LOCKED``
    lets concurrent senders take different rows; SQLite: the engine's BEGIN IMMEDIATE lets one
    writer in at a time.
    """
    query = select(t.OutboxMessage).where(
        t.OutboxMessage.state.in_(("pending", "sending")),
        t.OutboxMessage.next_attempt_at <= now,
        t.OutboxMessage.id > after,
    )
    if skip_recipients:
        query = query.where(t.OutboxMessage.recipient.not_in(sorted(skip_recipients)))
    if only_recipients:
        query = query.where(t.OutboxMessage.recipient.in_(sorted(only_recipients)))
    rows = session.scalars(
        query.order_by(t.OutboxMessage.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return [], None, False
    last = rows[-1].id
    counts: dict[str, int] = {}
    kept = []
    for row in rows:
        if row.recipient in throttled:
            counts[row.recipient] = counts.get(row.recipient, 0) + 1
            if counts[row.recipient] > THROTTLED_PER_BATCH:
                continue  # locked until this transaction ends, untouched
        kept.append(row)
    contacts, loaded = _preload(session, kept)
    taken: list[Claim | Settled] = []
    for row in kept:
        message = message_of(session, row, now=now)
        reason = _not_wanted(session, row, contacts) if row.state == "pending" else None
        if reason is not None:
            _skip(session, row.id, reason, now=now)
            taken.append(Settled(message.key, "skipped", reason))
            continue
        in_doubt = row.state == "sending"
        row.state = "sending"
        row.attempts += 1
        row.next_attempt_at = now + LEASE
        row.updated_at = now
        taken.append(Claim(message, row.attempts, in_doubt))
    del loaded
    return taken, last, len(kept) < len(rows)


def _preload(
    session: Session, rows: Sequence[t.OutboxMessage]
) -> tuple[dict[int, set[str]], list[object]]:
    """Load the rows' invoices, organizations and groups in a few queries, so ``message_of``
    finds them in the session (which holds them only while the returned list lives); also
    each group's contacts as recipients."""
    invoices = session.scalars(
        select(t.Invoice).where(t.Invoice.id.in_(sorted({r.invoice_id for r in rows})))
    ).all()
    group_ids = sorted({i.billing_group_id for i in invoices})
    org_ids = sorted({i.organization_id for i in invoices})
    loaded: list[object] = [*invoices]
    loaded += session.scalars(select(t.Organization).where(t.Organization.id.in_(org_ids))).all()
    loaded += session.scalars(select(t.BillingGroup).where(t.BillingGroup.id.in_(group_ids))).all()
    contacts: dict[int, set[str]] = {group_id: set() for group_id in group_ids}
    for contact in session.scalars(
        select(t.Contact).where(t.Contact.billing_group_id.in_(group_ids))
    ):
        contacts[contact.billing_group_id].add(recipient_of(contact))
    return contacts, loaded


def _not_wanted(
    session: Session, row: t.OutboxMessage, contacts: dict[int, set[str]] | None = None
) -> str | None:
    """Why a pending row should not go out after all (a payment or a contact change raced)."""
    if is_alert(row.step):
        return None
    invoice = session.get_one(t.Invoice, row.invoice_id)
    if is_reminder(row.step) and invoice.status != "open":
        return "invoice paid"
    if contacts is not None and invoice.billing_group_id in contacts:
        recipients = contacts[invoice.billing_group_id]
    else:
        recipients = {
            recipient_of(c)
            for c in session.scalars(
                select(t.Contact).where(t.Contact.billing_group_id == invoice.billing_group_id)
            )
        }
    if row.recipient not in recipients:
        return "no longer a billing contact"
    return None


@dataclass(frozen=True, slots=True)
class Delivered:
    channel: str
    ts: str
    found_in_history: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """A try that did not deliver. ``retry_after`` set: rate limited (the try is given back)."""

    error: str
    permanent: bool
    in_doubt: bool  # the post may have reached Slack (timeout, dropped connection)
    retry_after: timedelta | None = None


Outcome = Delivered | Failed


def record(
    session: Session,
    claim: Claim,
    outcome: Outcome,
    *,
    now: datetime,
    audit_channel: str | None,
) -> Settled:
    """Store what happened to a claimed row; a row given up on is reported."""
    [settled] = record_all(session, [(claim, outcome)], now=now, audit_channel=audit_channel)
    return settled


def record_all(
    session: Session,
    tries: Sequence[tuple[Claim, Outcome]],
    *,
    now: datetime,
    audit_channel: str | None,
) -> list[Settled]:
    """Store what happened to claimed rows (one transaction for a batch), in order."""
    rows = _own_rows(session, [claim for claim, _ in tries])
    return [
        _record_one(
            session,
            rows.get(claim.message.row_id),
            claim,
            outcome,
            now=now,
            audit_channel=audit_channel,
        )
        for claim, outcome in tries
    ]


def release(session: Session, untried: Sequence[tuple[Claim, datetime]], *, now: datetime) -> None:
    """Give back claimed rows that were not tried (their recipient was asked to wait, or the
    run stopped): the attempt is uncounted and each row is due again at its given time."""
    rows = _own_rows(session, [claim for claim, _ in untried])
    for claim, due in untried:
        row = rows.get(claim.message.row_id)
        if row is None:
            continue
        row.attempts -= 1
        row.state = "sending" if claim.in_doubt else "pending"
        row.next_attempt_at = due
        row.updated_at = now


def _own_rows(session: Session, claims: Sequence[Claim]) -> dict[int, t.OutboxMessage]:
    """The claimed rows still ours: ``sending`` with the attempt we counted (a row whose lease
    ran out may have been taken over by another process)."""
    if not claims:
        return {}
    wanted = {claim.message.row_id: claim.attempts for claim in claims}
    rows = session.scalars(
        select(t.OutboxMessage)
        .where(t.OutboxMessage.id.in_(sorted(wanted)))
        .order_by(t.OutboxMessage.id)
        .with_for_update()
    ).all()
    return {
        row.id: row for row in rows if row.state == "sending" and row.attempts == wanted[row.id]
    }


def _record_one(
    session: Session,
    row: t.OutboxMessage | None,
    claim: Claim,
    outcome: Outcome,
    *,
    now: datetime,
    audit_channel: str | None,
) -> Settled:
    message = claim.message
    if row is None:  # our lease ran out and another process took the row over
        return Settled(message.key, "sending", "taken over by another process")
    row.updated_at = now
    if isinstance(outcome, Delivered):
        row.state = "sent"
        row.slack_channel, row.slack_ts = outcome.channel, outcome.ts
        row.next_attempt_at, row.last_error, row.finished_at = None, None, now
        if outcome.found_in_history:
            row.note = "found in the conversation's history after an interrupted try"
        return Settled(message.key, "sent", row.note)
    row.last_error = outcome.error[:ERROR_CHARS]
    if outcome.retry_after is not None:
        row.attempts -= 1  # Slack asked us to wait; the message itself did not fail
        row.state = "sending" if outcome.in_doubt else "pending"
        row.next_attempt_at = now + outcome.retry_after
        return Settled(message.key, "pending", outcome.error)
    if outcome.permanent or row.attempts >= MAX_ATTEMPTS:
        _give_up(session, row, message, now=now, audit_channel=audit_channel)
        return Settled(message.key, "failed", outcome.error)
    row.state = "sending" if outcome.in_doubt else "pending"
    row.next_attempt_at = now + backoff(row.attempts)
    return Settled(message.key, "pending", outcome.error)


def _give_up(
    session: Session,
    row: t.OutboxMessage,
    message: Message,
    *,
    now: datetime,
    audit_channel: str | None,
) -> None:
    row.state = "failed"
    row.next_attempt_at, row.finished_at = None, now
    invoice = session.get_one(t.Invoice, row.invoice_id)
    ledger.audit(
        session,
        at=now,
        organization_id=invoice.organization_id,
        actor="billing-bot",
        action="notification.failed",
        subject=message.key,
        before=None,
        after={"attempts": row.attempts, "error": row.last_error},
    )
    if audit_channel and not is_alert(row.step):
        _add_row(
            session,
            invoice_id=row.invoice_id,
            step=alert_step(row.step, row.recipient),
            recipient=f"channel:{audit_channel}",
            state="pending",
            due_at=now,
            next_attempt_at=now,
            now=now,
        )
