"""Many messages in one run: a cursor over the outbox, several senders, per-channel 429s."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from billing_core.services import BillingService
from billing_core.settings import Settings
from notifications import jobs
from notifications.jobs import remind
from tests.factories import event as usage_event
from tests.notifications.conftest import CHANNEL, acme, berlin, keys, states
from tests.slack_emulator import SlackEmulator

ISSUED_AT = berlin("2026-11-01T00:05:00+01:00")
GROUPS = 6


def users() -> list[str]:
    return [f"U0GRP{i}" for i in range(GROUPS)]


@pytest.fixture
def fanned(service: BillingService, emu: SlackEmulator) -> BillingService:
    """Six groups billed at once: each notifies its own user and the shared CHANNEL."""
    doc = acme()
    o = doc["organizations"][0]
    template = o["billing_groups"][0]
    o["billing_groups"], o["projects"] = [], []
    for i, user in enumerate(users()):
        emu.add_user(user, locale="en-US")
        group = copy.deepcopy(template)
        group.update(
            key=f"g{i}",
            name=f"Group {i}",
            contacts=[{"slack_channel_id": CHANNEL}, {"slack_user_id": user}],
        )
        o["billing_groups"].append(group)
        o["projects"].append({"key": f"p{i}", "name": f"Project {i}", "billing_group": f"g{i}"})
    service.load(doc, at=berlin("2026-10-01T00:00:00+02:00"))
    service.import_usage(
        [
            usage_event(
                f"evt-{i}", "requests.GET", "10000000", "2026-10-10T12:00:00+00:00", f"acme/p{i}"
            )
            for i in range(GROUPS)
        ]
    )
    report = service.run_billing(at=ISSUED_AT)
    assert len(report.issued) == GROUPS
    return service


def expected() -> Counter[str]:
    numbers = [f"INV-2026-{n:06d}" for n in range(1, GROUPS + 1)]
    return Counter(
        [f"{n}/issued/channel:{CHANNEL}" for n in numbers]
        + [f"{n}/issued/user:{u}" for n, u in zip(numbers, users(), strict=True)]
    )


def delivered(emu: SlackEmulator) -> Counter[str]:
    return Counter(keys(emu, CHANNEL) + [k for u in users() for k in keys(emu, "D" + u)])


@pytest.fixture
def statements(fanned: BillingService) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement (and its parameters) the database receives."""
    seen: list[tuple[str, Any]] = []

    def note(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append((sql, params))

    event.listen(fanned.db.engine, "before_cursor_execute", note)
    yield seen
    event.remove(fanned.db.engine, "before_cursor_execute", note)


def test_a_run_sweeps_the_outbox_with_a_cursor_in_a_few_statements(
    fanned: BillingService,
    settings: Settings,
    emu: SlackEmulator,
    statements: list[tuple[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jobs, "BATCH", 3)
    rows = sum(expected().values())  # 6 to the channel, 6 DMs
    report = remind(fanned, settings, ISSUED_AT)
    assert len(report.sent) == rows
    assert delivered(emu) == expected() and set(states(fanned).values()) == {"sent"}
    claims = [
        params
        for sql, params in statements
        if "FROM notification_outbox" in sql and "notification_outbox.id >" in sql
    ]
    # One claim per batch of 3 and one that finds nothing more; each the same size however
    # many rows the run has handled (no list of them in the query).
    assert len(claims) == rows // 3 + 1
    assert len({len(p) for p in claims}) == 1
    # Claims, records and loads by batch, not by row: the per-row design needed ~9 a row.
    assert len(statements) <= 12 * len(claims) + 12


def test_a_rate_limited_channel_waits_while_the_others_go_on(
    fanned: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    emu.set_channel_rate_limit(1.0)  # 429 with Retry-After beyond one post a second
    started = time.monotonic()
    report = remind(fanned, settings, ISSUED_AT)  # one run: it waits for the short holds
    took = time.monotonic() - started
    assert delivered(emu) == expected()  # everything, once
    assert set(states(fanned).values()) == {"sent"} and report.stopped is None
    assert report.retrying == [] and len(report.sent) == sum(expected().values())
    posts = emu.calls_to("chat.postMessage")
    limited = [i for i, c in enumerate(posts) if c.status == 429]
    assert limited and all(posts[i].params["channel"] == CHANNEL for i in limited)
    to_channel = [
        i for i, c in enumerate(posts) if c.params["channel"] == CHANNEL and c.status == 200
    ]
    to_users = [i for i, c in enumerate(posts) if c.params["channel"] != CHANNEL]
    # The DMs did not wait behind the channel: all went out before its second message.
    assert max(to_users) < to_channel[1]
    # The channel got its notices in invoice order, at the pace Slack allowed (1 a second).
    assert keys(emu, CHANNEL) == sorted(keys(emu, CHANNEL))
    assert GROUPS - 1 <= took < 2 * (GROUPS - 1) + 5  # generous: a shared, loaded machine


def test_a_long_retry_after_leaves_the_channel_to_a_later_run(
    fanned: BillingService, settings: Settings, emu: SlackEmulator
) -> None:
    emu.fail_next("chat.postMessage", status=429, retry_after=60)
    report = remind(fanned, settings, ISSUED_AT)
    [limited] = report.retrying
    waiting = limited.key.split("/")[-1]
    # Nothing else went to that conversation in this run (Slack asked it to wait), the
    # others all got theirs, and nothing was given up.
    assert report.stopped is None and report.failed == []
    left = {k for k, s in states(fanned).items() if s != "sent"}
    assert left and all(k.endswith("/" + waiting) for k in left)
    assert {s.key for s in report.sent} == set(expected()) - left
    # After Retry-After the next run sends the rest, in order, each once.
    again = remind(fanned, settings, ISSUED_AT + jobs.timedelta(seconds=60))
    assert {s.key for s in again.sent} == left
    assert delivered(emu) == expected()
