"""Jobs as plain functions of (services, now): the CLI and the scheduler call the same ones."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from billing_core.periods import require_aware
from billing_core.services import BillingService, RunReport
from billing_core.settings import Settings
from notifications import store
from notifications.plan import Action, NewRow, Supersede
from notifications.slack import Deliverer, make_client, render_message, stop_reason
from notifications.store import Claim, Failed, Message, Settled

log = logging.getLogger(__name__)

MAX_ROWS_PER_RUN = 10_000
MAX_TRANSIENT_IN_A_ROW = 3  # Slack looks down: leave the rest for the next run


def run_billing_job(service: BillingService, now: datetime) -> RunReport:
    """Issue every invoice whose period ended at or before ``now``."""
    report = service.run_billing(at=now)
    if report.issued or report.failed:
        log.info("billing run at %s: %s", now.isoformat(), report.describe())
    for group, reason in report.failed:
        log.error("billing run at %s: group %s failed: %s", now.isoformat(), group, reason)
    return report


@dataclass(frozen=True, slots=True)
class Preview:
    """A message a dry run would send, exactly as it would be sent."""

    key: str
    recipient: str
    locale: str
    text: str
    blocks: list[dict[str, Any]]
    in_doubt: bool  # a real run would first look for it in the conversation's history


@dataclass
class RemindReport:
    sent: list[Settled] = field(default_factory=list)
    skipped: list[Settled] = field(default_factory=list)
    failed: list[Settled] = field(default_factory=list)
    retrying: list[Settled] = field(default_factory=list)
    previews: list[Preview] = field(default_factory=list)
    stopped: str | None = None

    def add(self, settled: Settled) -> None:
        buckets = {"sent": self.sent, "skipped": self.skipped, "failed": self.failed}
        buckets.get(settled.state, self.retrying).append(settled)

    def describe(self) -> str:
        text = (
            f"{len(self.sent)} sent, {len(self.skipped)} skipped, {len(self.failed)} given up, "
            f"{len(self.retrying)} waiting to retry"
        )
        return text + (f"; paused until the next run: {self.stopped}" if self.stopped else "")


def remind(
    service: BillingService,
    settings: Settings,
    now: datetime,
    *,
    dry_run: bool = False,
    client: WebClient | None = None,
    after_post: Callable[[str], None] | None = None,
) -> RemindReport:
    """Send the notices and reminders due at ``now`` (section 7); safe to repeat.

    ``dry_run`` works out and renders the same messages but sends and records nothing.
    ``after_post`` is called with the outbox key right after a post succeeded and before it
    is recorded (tests use it to kill the run at the worst moment).
    """
    require_aware(now, "--at")
    if dry_run:
        return _dry_run(service, settings, now, client)
    settings.require("slack_bot_token")
    report = RemindReport()
    with service.db.transaction() as session:
        actions = store.plan(session, now=now, offsets=settings.reminder_offsets)
        store.apply_plan(session, actions, now=now)
    report.skipped += _skips(actions)
    deliverer = Deliverer(client or make_client(settings), settings)
    _deliver_due(service, settings, deliverer, now, report, after_post)
    return report


def _skips(actions: list[Action]) -> list[Settled]:
    return [
        Settled(a.key, "skipped", a.note)
        for a in actions
        if isinstance(a, Supersede) or a.state == "skipped"
    ]


def _deliver_due(
    service: BillingService,
    settings: Settings,
    deliverer: Deliverer,
    now: datetime,
    report: RemindReport,
    after_post: Callable[[str], None] | None,
) -> None:
    seen: set[int] = set()
    transient_in_a_row = 0
    while len(seen) < MAX_ROWS_PER_RUN:
        with service.db.transaction() as session:  # the claim commits before the post
            claim = store.claim_next(session, now=now, exclude=seen)
        if claim is None:
            return
        if isinstance(claim, Settled):
            report.add(claim)
            continue
        seen.add(claim.message.row_id)
        outcome = deliverer.deliver(claim.message, in_doubt=claim.in_doubt)
        if after_post is not None and not isinstance(outcome, Failed):
            after_post(claim.message.key)
        with service.db.transaction() as session:
            settled = store.record(
                session, claim, outcome, now=now, audit_channel=settings.audit_channel
            )
        _log(settled, claim)
        report.add(settled)
        reason = stop_reason(outcome)
        transient = isinstance(outcome, Failed) and not outcome.permanent
        transient_in_a_row = transient_in_a_row + 1 if transient else 0
        if reason is None and transient_in_a_row >= MAX_TRANSIENT_IN_A_ROW:
            reason = f"{transient_in_a_row} tries in a row failed, the last with {settled.detail}"
        if reason is not None:
            report.stopped = reason
            log.warning("reminders paused until the next run: %s", reason)
            return


def _log(settled: Settled, claim: Claim) -> None:
    if settled.state == "failed":
        log.error("gave up on %s after %d tries: %s", settled.key, claim.attempts, settled.detail)
    elif settled.state in ("pending", "sending"):
        log.warning("will retry %s: %s", settled.key, settled.detail)
    else:
        log.info("%s %s", settled.state, settled.key)


def _dry_run(
    service: BillingService, settings: Settings, now: datetime, client: WebClient | None
) -> RemindReport:
    report = RemindReport()
    with service.db.transaction() as session:
        actions = store.plan(session, now=now, offsets=settings.reminder_offsets)
        dropped = {a.row_id for a in actions if isinstance(a, Supersede)}
        due: list[tuple[Message, bool]] = [
            (store.message_of(session, row, now=now), row.state == "sending")
            for row in store.ready_rows(session, now=now, exclude=dropped)
        ]
        for action in actions:
            if isinstance(action, NewRow) and action.state == "pending":
                row = store.unsaved_row(action)
                due.append((store.message_of(session, row, now=now), False))
    report.skipped += _skips(actions)
    if client is None and settings.slack_bot_token:
        client = make_client(settings)
    deliverer = Deliverer(client, settings)
    for message, in_doubt in due:
        try:
            locale = deliverer.locale_for(message.recipient, message.org_locale)
        except (SlackApiError, OSError) as exc:
            log.warning(
                "users.info failed for %s, showing the fallback locale: %s", message.key, exc
            )
            locale = Deliverer(None, settings).locale_for(message.recipient, message.org_locale)
        reply = render_message(message, locale, payment_url=settings.payment_url).message()
        report.previews.append(
            Preview(
                key=message.key,
                recipient=message.recipient,
                locale=str(locale),
                text=reply["text"],
                blocks=reply["blocks"],
                in_doubt=in_doubt,
            )
        )
    return report
