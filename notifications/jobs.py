"""Jobs as plain functions of (services, now): the CLI and the scheduler call the same ones."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from billing_core.periods import require_aware
from billing_core.services import BillingService, RunReport
from billing_core.settings import Settings
from notifications import store
from notifications.plan import Action, NewRow, Supersede
from notifications.slack import Deliverer, make_client, render_message, stop_reason
from notifications.store import Claim, Delivered, Failed, Message, Outcome, Settled

log = logging.getLogger(__name__)

MAX_ROWS_PER_RUN = 10_000  # tries per run (429s, whose try is given back, do not count)
MAX_TRANSIENT_IN_A_ROW = 3  # Slack looks down: leave the rest for the next run
WORKERS = 4  # threads posting at once (each call is its own HTTP request)
BATCH = 200  # rows claimed, then recorded, per transaction
# A recipient Slack rate-limits (429) is held for its Retry-After while the run goes on with
# the others; the run waits for holds of at most MAX_HOLD, and for none ending after MAX_RUN
# from its start: longer waits are left to the next run.
MAX_HOLD = timedelta(seconds=10)
MAX_RUN = timedelta(minutes=2)
FREED_MARGIN = 0.002  # seconds: a hold counts as ended a little late (clock rounding)
EARLY = 0.1  # seconds: a held recipient's next rows are claimed this long before its end


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
    # The first run after a billing run plans a message per contact of every new invoice;
    # the claims that follow are planned on the outbox's statistics.
    planned = sum(1 for action in actions if isinstance(action, NewRow))
    service.db.refresh_statistics({"notification_outbox": planned})
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


class _Run:
    """What the sender threads of one run share: holds, the stop reason, counters, the clock.

    ``clock()`` is the run's ``now`` until a hold first ends; from then on it follows the real
    time elapsed since the run began, so rows keep being judged due against the moment they
    are claimed.
    """

    def __init__(self, now: datetime, *, max_hold: timedelta, max_run: timedelta) -> None:
        self.now = now
        self.started = time.monotonic()
        self.max_hold = max_hold.total_seconds()
        self.max_run = max_run.total_seconds()
        self.waited = False
        self.lock = threading.Lock()
        # recipient -> (monotonic end of Slack's Retry-After, whether this run waits for it,
        # the run's time at which the recipient's rows are due again)
        self.holds: dict[str, tuple[float, bool, datetime]] = {}
        self.claimed_early: set[str] = set()  # held recipients whose next rows are claimed
        # recipients Slack rate-limited in this run -> the Retry-After they got (seconds): the
        # run then spaces their posts that far apart instead of meeting a 429 after each
        self.limited: dict[str, float] = {}
        self.again = False  # a sweep left rows of such recipients for the next one
        self.stopped: str | None = None
        self.tries = 0
        self.transient_in_a_row = 0

    def clock(self) -> datetime:
        if not self.waited:
            return self.now
        return self.now + timedelta(seconds=time.monotonic() - self.started)

    def held(self) -> set[str]:
        """Recipients Slack asked to wait, right now."""
        moment = time.monotonic()
        with self.lock:
            return {r for r, (until, _, _) in self.holds.items() if until > moment}

    def hold_end(self, recipient: str) -> float | None:
        """The monotonic end of a recipient's hold (None: not held)."""
        with self.lock:
            hold = self.holds.get(recipient)
        return hold[0] if hold is not None and hold[0] > time.monotonic() else None

    def throttled(self) -> set[str]:
        """Recipients Slack rate-limited during this run."""
        with self.lock:
            return set(self.limited)

    def hold_due(self, recipient: str) -> datetime | None:
        """When a held recipient's rows are due again (None: not held)."""
        with self.lock:
            hold = self.holds.get(recipient)
        return hold[2] if hold is not None and hold[0] > time.monotonic() else None

    def may_send(self) -> bool:
        with self.lock:
            return self.stopped is None and self.tries < MAX_ROWS_PER_RUN

    def note(self, recipient: str, outcome: Outcome, at: datetime) -> None:
        """Count a try made at ``at``; a 429 holds its recipient, a bad token or an outage
        stops the run."""
        with self.lock:
            if isinstance(outcome, Failed) and outcome.retry_after is not None:
                wait = outcome.retry_after.total_seconds()
                until = time.monotonic() + wait
                waits = wait <= self.max_hold and until - self.started <= self.max_run
                self.holds[recipient] = (until, waits, at + outcome.retry_after)
                self.claimed_early.discard(recipient)
                self.limited[recipient] = wait
                return
            pace = self.limited.get(recipient)
            if isinstance(outcome, Delivered) and pace is not None and pace <= self.max_hold:
                until = time.monotonic() + pace
                waits = until - self.started <= self.max_run
                self.holds[recipient] = (until, waits, at + timedelta(seconds=pace))
                self.claimed_early.discard(recipient)
            self.tries += 1
            transient = isinstance(outcome, Failed) and not outcome.permanent
            self.transient_in_a_row = self.transient_in_a_row + 1 if transient else 0
            reason = stop_reason(outcome)
            if reason is None and self.transient_in_a_row >= MAX_TRANSIENT_IN_A_ROW:
                error = outcome.error if isinstance(outcome, Failed) else ""
                reason = f"{self.transient_in_a_row} tries in a row failed, the last with {error}"
            if reason is not None and self.stopped is None:
                self.stopped = reason

    def next_pass(self) -> float | None:
        """When to sweep again for recipients that were held (None: the run is over).

        Holds that ended before the new sweep starts are forgotten (the sweep covers them)."""
        with self.lock:
            if self.stopped is not None or self.tries >= MAX_ROWS_PER_RUN:
                return None
            if self.again:
                return time.monotonic()
            waits = [
                until
                for r, (until, waited, _) in self.holds.items()
                if waited and r not in self.claimed_early
            ]
            return min(waits) - EARLY if waits else None

    def take_freed(self) -> set[str]:
        """Recipients whose hold ends within EARLY seconds and whose rows were not claimed
        since: the caller claims them now (their senders wait for the hold's end)."""
        moment = time.monotonic() + EARLY
        with self.lock:
            freed = {
                r
                for r, (until, _, _) in self.holds.items()
                if until <= moment and r not in self.claimed_early
            }
            self.claimed_early |= freed
        return freed

    def begin_pass(self) -> None:
        moment = time.monotonic()
        self.again = False
        with self.lock:
            self.holds = {r: h for r, h in self.holds.items() if h[0] > moment}
            self.claimed_early &= set(self.holds)


def _deliver_due(
    service: BillingService,
    settings: Settings,
    deliverer: Deliverer,
    now: datetime,
    report: RemindReport,
    after_post: Callable[[str], None] | None,
) -> None:
    """Sweep the due rows in batches; each batch is sent by a few threads, one recipient per
    thread at a time (in row order), and recorded in one transaction. A recipient Slack asked
    to wait (429) is held for its Retry-After while the others go on; when the sweep is done
    the run waits for holds that end soon (at most MAX_HOLD each, none ending beyond MAX_RUN
    from its start) and sweeps again."""
    run = _Run(now, max_hold=MAX_HOLD, max_run=MAX_RUN)
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="remind") as pool:
        while True:
            run.begin_pass()
            _sweep(service, settings, deliverer, run, report, after_post, pool, BATCH)
            wake = run.next_pass()
            if wake is None:
                break
            time.sleep(max(0.0, wake - time.monotonic()) + 0.001)
            run.waited = True
    report.stopped = run.stopped
    if run.stopped is not None:
        log.warning("reminders paused until the next run: %s", run.stopped)
    done = {s.key for s in report.sent + report.failed + report.skipped}
    latest = {s.key: s for s in report.retrying if s.key not in done}
    report.retrying = list(latest.values())


def _sweep(
    service: BillingService,
    settings: Settings,
    deliverer: Deliverer,
    run: _Run,
    report: RemindReport,
    after_post: Callable[[str], None] | None,
    pool: ThreadPoolExecutor,
    batch: int,
) -> None:
    cursor = 0
    while run.may_send():
        # Recipients whose hold ended during this sweep first (the cursor may have passed
        # their rows), then the next rows after the cursor.
        freed = run.take_freed()
        if freed:
            run.waited = True  # the run's clock follows real time from the first hold's end
        with service.db.transaction() as session:  # the claim commits before the posts
            taken, last, left = store.claim_batch(
                session,
                # Rows of a hold ending within EARLY are claimed that much early (and sent
                # only once it ended), so the claim's round trip is not added to the wait.
                now=run.clock() + timedelta(seconds=EARLY + FREED_MARGIN if freed else 0),
                after=0 if freed else cursor,
                limit=batch,
                skip_recipients=set() if freed else run.held(),
                throttled=run.throttled(),
                only_recipients=freed,
            )
        run.again = run.again or left or (bool(freed) and last is None)
        if not freed:
            if last is None:
                return
            cursor = last
        lanes: dict[str, list[Claim]] = {}
        for item in taken:
            if isinstance(item, Settled):
                report.add(item)
            else:
                lanes.setdefault(item.message.recipient, []).append(item)
        tried: list[tuple[Claim, Outcome, datetime]] = []
        untried: list[tuple[Claim, datetime | None]] = []
        futures = [
            pool.submit(_lane, lane, deliverer, run, after_post, tried, untried)
            for lane in lanes.values()
        ]
        wait(futures)
        tried.sort(key=lambda one: one[0].message.row_id)  # report in row order
        with service.db.transaction() as session:
            at = run.clock()
            settled = store.record_all(
                session,
                [(claim, _since(outcome, at - tried_at)) for claim, outcome, tried_at in tried],
                now=at,
                audit_channel=settings.audit_channel,
            )
            store.release(session, [(c, due or at) for c, due in untried], now=at)
        for one, (claim, _, _) in zip(settled, tried, strict=True):
            _log(one, claim)
            report.add(one)
        for future in futures:
            future.result()  # an exception in a sender (after what could be recorded was)


def _since(outcome: Outcome, elapsed: timedelta) -> Outcome:
    """A 429 as recorded ``elapsed`` after it came: Retry-After counts from its answer."""
    if not isinstance(outcome, Failed) or outcome.retry_after is None or not elapsed:
        return outcome
    return replace(outcome, retry_after=max(timedelta(0), outcome.retry_after - elapsed))


def _lane(
    claims: list[Claim],
    deliverer: Deliverer,
    run: _Run,
    after_post: Callable[[str], None] | None,
    tried: list[tuple[Claim, Outcome, datetime]],
    untried: list[tuple[Claim, datetime | None]],
) -> None:
    """Send one recipient's claimed rows in order; give back what it must not send now."""
    for index, claim in enumerate(claims):
        until = run.hold_end(claim.message.recipient)
        if until is not None and until - time.monotonic() <= 2 * EARLY:
            # Claimed early (see _sweep): wait for the end of the hold.
            time.sleep(max(0.0, until - time.monotonic()) + FREED_MARGIN)
            until = None
        due = run.hold_due(claim.message.recipient) if until is not None else None
        if due is not None or not run.may_send():
            untried.extend((c, due) for c in claims[index:])
            return
        try:
            outcome = deliverer.deliver(claim.message, in_doubt=claim.in_doubt)
            if after_post is not None and not isinstance(outcome, Failed):
                after_post(claim.message.key)
        except BaseException:
            untried.extend((c, None) for c in claims[index + 1 :])
            raise
        at = run.clock()
        tried.append((claim, outcome, at))
        run.note(claim.message.recipient, outcome, at)


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
