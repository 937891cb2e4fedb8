"""The door of ``POST /slack/events`` (bot.replay), piece by piece.

The end-to-end behaviour (401/400 over real HTTP, nothing run) is in test_hostile_slack.py;
these pin the rules themselves: what a valid signature is, when a signature counts as seen,
and which payload shapes are malformed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from billing_core.db import tables as t
from billing_core.db.engine import Database
from bot.replay import SeenRequests, malformed, verify

SECRET = "replay-guard-secret"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TS = str(int(NOW.timestamp()))


def sign(body: bytes, timestamp: str, secret: str = SECRET) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


BODY = b"command=/billing&text=owed&team_id=T0ACME&user_id=U0DEV"


def test_a_fresh_correct_signature_passes() -> None:
    assert verify(SECRET, BODY, TS, sign(BODY, TS), now=NOW) is None


@pytest.mark.parametrize(
    ("timestamp", "signature", "reason"),
    [
        (None, sign(BODY, TS), "unsigned"),
        (TS, None, "unsigned"),
        ("abc", sign(BODY, TS), "malformed signature headers"),
        ("1e9", sign(BODY, TS), "malformed signature headers"),
        (" ", sign(BODY, TS), "malformed signature headers"),
        ("", sign(BODY, TS), "malformed signature headers"),
        ("١٧٩٥٣٦٠٠٠٠", sign(BODY, TS), "malformed signature headers"),  # int() would take it
        (TS, "v1=" + "0" * 64, "malformed signature headers"),
        (TS, sign(BODY, TS).upper(), "malformed signature headers"),
        (TS, sign(BODY, TS, "another secret"), "bad signature"),
        (TS, sign(BODY + b"&x=1", TS), "bad signature"),
        (str(int(NOW.timestamp()) - 301), sign(BODY, str(int(NOW.timestamp()) - 301)), "stale"),
        (str(int(NOW.timestamp()) + 301), sign(BODY, str(int(NOW.timestamp()) + 301)), "stale"),
    ],
)
def test_anything_else_is_refused_401(
    timestamp: str | None, signature: str | None, reason: str
) -> None:
    refusal = verify(SECRET, BODY, timestamp, signature, now=NOW)
    assert refusal is not None and (refusal.status, refusal.reason) == (401, reason)


def test_the_edges_of_the_five_minute_window() -> None:
    for offset in (-300, 300):
        timestamp = str(int(NOW.timestamp()) + offset)
        assert verify(SECRET, BODY, timestamp, sign(BODY, timestamp), now=NOW) is None


def test_each_signature_is_taken_once_and_survives_a_restart(db: Database) -> None:
    first = SeenRequests(db.engine, now=lambda: NOW)
    assert first.first_time(sign(BODY, TS), TS)
    assert not first.first_time(sign(BODY, TS), TS)
    other = sign(BODY + b"&y=1", TS)
    assert first.first_time(other, TS)
    # Another process (a restart, another replica) shares only the database.
    second = SeenRequests(db.engine, now=lambda: NOW)
    assert not second.first_time(sign(BODY, TS), TS)
    assert not second.first_time(other, TS)


def test_concurrent_copies_of_one_request_are_taken_once(db: Database) -> None:
    replicas = [SeenRequests(db.engine, now=lambda: NOW) for _ in range(8)]
    taken: list[bool] = []
    barrier = threading.Barrier(len(replicas))

    def take(guard: SeenRequests) -> None:
        barrier.wait()
        taken.append(guard.first_time(sign(BODY, TS), TS))

    threads = [threading.Thread(target=take, args=(guard,)) for guard in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == [False] * 7 + [True]


def test_expired_signatures_are_purged(db: Database) -> None:
    clock = [NOW]
    guard = SeenRequests(db.engine, now=lambda: clock[0])
    guard.PURGE_EVERY = 3
    assert guard.first_time(sign(BODY, TS), TS)
    clock[0] = NOW + timedelta(minutes=6)
    later = str(int(clock[0].timestamp()))
    assert guard.first_time(sign(BODY, later), later)
    assert guard.first_time(sign(BODY + b"&z=1", later), later)  # the third: purges
    with db.engine.connect() as connection:
        kept = connection.execute(sa.select(t.SeenSlackRequest.signature)).scalars().all()
    assert sorted(kept) == sorted([sign(BODY, later), sign(BODY + b"&z=1", later)])


def test_without_the_database_the_process_still_refuses_what_it_saw(db: Database) -> None:
    broken = sa.create_engine("sqlite:////nonexistent-dir/none.db")
    guard = SeenRequests(broken, now=lambda: NOW)
    assert guard.first_time(sign(BODY, TS), TS)
    assert not guard.first_time(sign(BODY, TS), TS)


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", FORM),
        (BODY, FORM),
        (json.dumps({"type": "url_verification", "challenge": "c"}).encode(), "application/json"),
        (
            json.dumps(
                {"type": "event_callback", "team_id": "T1", "event": {"type": "app_mention"}}
            ).encode(),
            "application/json",
        ),
        (
            b"payload="
            + json.dumps(
                {
                    "type": "block_actions",
                    "user": {"id": "U1"},
                    "team": {"id": "T1"},
                    "actions": [{"action_id": "a"}],
                }
            ).encode(),
            FORM,
        ),
    ],
)
def test_slack_payloads_are_well_formed(body: bytes, content_type: str) -> None:
    assert malformed(body, content_type) is None


@pytest.mark.parametrize(
    ("body", "content_type", "why"),
    [
        (b"\xff\xfe", "application/json", "not UTF-8"),
        (b"[" * 100_000, "application/json", "not a Slack payload"),
        (b"{nope", "application/json", "not a Slack payload"),
        (b"[1]", "application/json", "not an object"),
        (b"payload=[1]", FORM, "not an object"),
        (b"payload={bad", FORM, "not a Slack payload"),
        (json.dumps({"event": "x"}).encode(), "application/json", "`event` is not an object"),
        (json.dumps({"user": 5}).encode(), "application/json", "`user` is neither"),
        (
            json.dumps({"event": {"channel": ["C1"]}}).encode(),
            "application/json",
            "`channel` is neither",
        ),
        (
            b"payload=" + json.dumps({"actions": "x"}).encode(),
            FORM,
            "`actions` is not a list of objects",
        ),
        (
            b"payload=" + json.dumps({"actions": [1]}).encode(),
            FORM,
            "`actions` is not a list of objects",
        ),
    ],
)
def test_other_bodies_are_malformed(body: bytes, content_type: str, why: str) -> None:
    reason = malformed(body, content_type)
    assert reason is not None and why in reason
