"""What ``POST /slack/events`` checks before Bolt sees a request: signature, freshness, replay,
and the shape of the payload.

Bolt verifies signatures itself, but only after it has parsed the body (its request object
parses in its constructor), and slack_sdk's verifier raises on a timestamp that is not a number:
an unsigned or malformed body would reach code that was never meant for it. Here the order is
the one an attacker cannot change: size (in ``bot.server``), then a signature over the exact
bytes with a fresh timestamp, then "not seen before", then a body that parses into the shapes
Bolt dereferences. Only then does Bolt run (and verify once more).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_bolt.request.internals import parse_body
from sqlalchemy import create_engine, delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from billing_core.db import tables as t
from billing_core.db.engine import POOL_SIZE

log = logging.getLogger("billing_bot.replay")

WINDOW = timedelta(minutes=5)  # Slack's freshness window (SPEC 6: stale over 5 minutes)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
Now = Callable[[], datetime]


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


def verify(
    secret: str, body: bytes, timestamp: str | None, signature: str | None, *, now: datetime
) -> Refusal | None:
    """None when ``signature`` is Slack's signature of ``body`` at a fresh ``timestamp``."""
    if timestamp is None or signature is None:
        return Refusal(401, "unsigned")
    if not _TIMESTAMP.fullmatch(timestamp) or not _SIGNATURE.fullmatch(signature):
        return Refusal(401, "malformed signature headers")
    if abs(now.timestamp() - int(timestamp)) > WINDOW.total_seconds():
        return Refusal(401, "stale")
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return Refusal(401, "bad signature")
    return None


class SeenRequests:
    """Signatures taken in the last five minutes: the same signed request twice is a replay.

    The database row is what every replica sees; a small in-process set answers first (and is
    the only guard while the database cannot be written, logged as a warning: the request is
    then still served, since refusing every command while the database blinks would be worse,
    and every change is guarded by the domain's own unique keys anyway).
    """

    PURGE_EVERY = 500
    WAIT = 0.5  # seconds the database may take before the in-process set decides alone

    @classmethod
    def for_url(cls, url: str) -> SeenRequests:
        """A guard on its own small engine whose waits are bounded by WAIT.

        The record is written before Slack gets its ack, so it must never wait behind a
        billing run's lock (SQLite's single writer) or a stuck server: past WAIT seconds the
        request goes on, guarded by this process's memory (and the warning says so).
        """
        millis = int(cls.WAIT * 1000)
        if url.startswith("sqlite"):
            engine = create_engine(
                url, connect_args={"timeout": cls.WAIT}, isolation_level="AUTOCOMMIT"
            )
        else:
            engine = create_engine(
                url,
                pool_pre_ping=True,
                # Sized like the billing pool (see engine.POOL_SIZE): requests at once each
                # hold one for their insert, and one past the pool is opened and closed anew.
                pool_size=POOL_SIZE,
                isolation_level="AUTOCOMMIT",
                connect_args={
                    "connect_timeout": 2,
                    # A record lost to a crash in the last moments before it is only a replay
                    # window of that instant (the domain's keys still hold): no WAL flush wait.
                    "options": f"-c statement_timeout={millis} -c lock_timeout={millis} "
                    "-c synchronous_commit=off",
                },
            )
        return cls(engine)

    def __init__(self, engine: Engine, *, now: Now | None = None) -> None:
        self.engine = engine
        self.now = now or (lambda: datetime.now(UTC))
        self._local: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._taken = 0

    def close(self) -> None:
        self.engine.dispose()

    def first_time(self, signature: str, timestamp: str) -> bool:
        """Record ``signature``; False when it was seen before (a replay)."""
        now = self.now()
        expires = datetime.fromtimestamp(int(timestamp), UTC) + WINDOW + timedelta(seconds=5)
        with self._lock:
            if signature in self._local:
                return False
            self._local[signature] = expires
            self._taken += 1
            purge = self._taken % self.PURGE_EVERY == 0
            if purge:
                self._local = {s: e for s, e in self._local.items() if e > now}
        try:
            with self.engine.begin() as connection:
                if purge:
                    connection.execute(
                        delete(t.SeenSlackRequest).where(t.SeenSlackRequest.expires_at <= now)
                    )
                statement = (
                    _insert(connection.dialect.name)
                    .values(signature=signature, expires_at=expires)
                    .on_conflict_do_nothing()
                    .returning(t.SeenSlackRequest.signature)
                )
                # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT.
                return connection.execute(statement).first() is not None
        except SQLAlchemyError as exc:
            log.warning(
                "replay guard: the database could not record a request (%s); "
                "only this process's memory guards it",
                type(exc).__name__,
            )
            return True


def _insert(dialect: str) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite  # noqa: PLC0415

    return (postgresql if dialect == "postgresql" else sqlite).insert(t.SeenSlackRequest)


# The keys Bolt reads as objects (or, for some, as a plain id string) while it builds its
# context and matches listeners. A signed payload with another type there is malformed.
_OBJECT_OR_ID = ("team", "enterprise", "user", "channel")
_OBJECT = ("event", "view", "container", "message", "state", "authed_user")
_LIST_OF_OBJECTS = ("actions", "authorizations")


def malformed(body: bytes, content_type: str | None) -> str | None:
    """Why ``body`` is not a Slack payload Bolt can take, or None when it is one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    if not text:
        return None
    try:
        payload: object = parse_body(text, content_type)  # Bolt's own parser: same payload
    except (ValueError, RecursionError):
        return "the body is not a Slack payload"
    if not isinstance(payload, dict):
        return "the payload is not an object"
    return _shape(payload) or (
        _shape(payload["event"]) if isinstance(payload.get("event"), dict) else None
    )


def _shape(payload: dict[str, Any]) -> str | None:
    for key in _OBJECT_OR_ID:
        value = payload.get(key)
        if value is not None and not isinstance(value, dict | str):
            return f"`{key}` is neither an object nor an id"
    for key in _OBJECT:
        value = payload.get(key)
        if value is not None and not isinstance(value, dict):
            return f"`{key}` is not an object"
    for key in _LIST_OF_OBJECTS:
        value = payload.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(item, dict) for item in value)
        ):
            return f"`{key}` is not a list of objects"
    return None
