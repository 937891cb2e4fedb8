"""A loopback emulator of the Slack Web API for tests.

Point ``slack_sdk.WebClient(token=..., base_url=emu.api_url)`` (or Bolt's ``App(client=...)``)
at a running :class:`SlackEmulator` and the client talks real HTTP to a standard-library server
that answers the way Slack does, as far as a client can tell: same envelopes (``{"ok": ...}``),
same error codes, HTTP 429 with ``Retry-After``, 5xx, dropped connections, and so on.

Example::

    with SlackEmulator() as emu:
        emu.add_user("U1", locale="de-DE", tz="Europe/Berlin")
        client = WebClient(token=emu.bot_token, base_url=emu.api_url)
        dm = client.conversations_open(users="U1")["channel"]["id"]   # "DU1"
        client.chat_postMessage(channel=dm, text="hi")
        assert emu.messages(dm)[0]["text"] == "hi"

Conventions a user must know:

* DM channel ids are ``"D" + user_id`` (``conversations.open(users="U1")`` -> ``"DU1"``);
  group DMs are ``"G" + "-".join(sorted(user_ids))``. Posting to a user id (``channel="U1"``)
  lands in that DM, which counts as opened afterwards.
* Users and channels must be registered (:meth:`add_user`, :meth:`add_channel`) before use,
  otherwise Slack's ``user_not_found`` / ``channel_not_found`` comes back.
* Message timestamps follow the wall clock, are unique and strictly increasing.
* ``Call.headers`` keys are lower-cased. Dropped connections are recorded with ``status == 0``
  and ``response is None``; text (non-JSON) answers have ``response is None`` too.
* The channel rate limiter reads :attr:`SlackEmulator.clock` (``time.monotonic`` by default);
  tests can replace it with a fake clock.
* File uploads follow Slack's external flow (what ``WebClient.files_upload_v2`` does):
  ``files.getUploadURLExternal`` hands out ``{base_url}/upload/{file_id}``, a POST of the bytes
  there (raw or multipart) stores them (recorded as method ``"upload"``), and
  ``files.completeUploadExternal`` shares them into ``channel_id`` / ``channels`` with a file
  message carrying ``initial_comment``. :meth:`SlackEmulator.uploads` lists completed files;
  ``fail_next("upload", ...)`` scripts failures of the upload POST itself.
"""

from __future__ import annotations

import base64
import copy
import email.parser
import email.policy
import hashlib
import json
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from zoneinfo import ZoneInfo

__all__ = ["Call", "SlackEmulator"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_TEXT_CHARS = 40_000
FAULT_KINDS = ("429", "500", "ok_false", "drop")
BLOCKS_FALLBACK_TEXT = "This content can't be displayed."

# Methods that Slack serves over GET as well as POST.
READ_METHODS = frozenset(
    {
        "api.test",
        "auth.test",
        "users.info",
        "conversations.info",
        "conversations.history",
        "conversations.replies",
        "files.getUploadURLExternal",
    }
)
# Fields that slack_sdk (and other clients) send as JSON strings inside form bodies.
JSON_STRING_FIELDS = ("blocks", "attachments", "metadata", "view")


@dataclass(frozen=True)
class Call:
    """One request the emulator received (``method == "response_url"`` for response_url posts)."""

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    status: int
    response: dict[str, Any] | None
    at: float


@dataclass
class _Failure:
    status: int
    error: str | None
    retry_after: int | None
    drop: bool
    remaining: int


@dataclass
class _Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False

    def payload(self) -> tuple[bytes, str]:
        if self.body is not None:
            return json.dumps(self.body).encode("utf-8"), JSON_CONTENT_TYPE
        return (self.text or "").encode("utf-8"), "text/plain; charset=utf-8"


@dataclass
class _User:
    id: str
    name: str
    locale: str
    tz: str
    is_restricted: bool
    is_ultra_restricted: bool
    is_bot: bool = False


@dataclass
class _File:
    """A file between files.getUploadURLExternal and files.completeUploadExternal (and after)."""

    id: str
    filename: str
    length: int
    alt_txt: str | None
    snippet_type: str | None
    content: bytes | None = None
    completed: bool = False


class _SlackError(Exception):
    def __init__(self, error: str, messages: list[str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.messages = messages or []


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes"}


def _ts_to_micros(value: Any, error: str) -> int:
    try:
        return int(Decimal(str(value)) * 1_000_000)
    except (InvalidOperation, ValueError) as exc:
        raise _SlackError(error) from exc


def _micros_to_ts(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _error_body(error: str, messages: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error": error}
    if messages:
        body["response_metadata"] = {"messages": messages}
    return body


def _text_len(obj: Any) -> int:
    if isinstance(obj, dict):
        text = obj.get("text")
        return len(text) if isinstance(text, str) else 0
    return 0


def _validate_blocks(blocks: Any, limit: int, pointer: str = "/blocks") -> list[dict[str, Any]]:
    """Check blocks roughly like Slack's block-kit validator; return them or raise."""
    if isinstance(blocks, str):
        raise _SlackError("invalid_blocks_format")
    if not isinstance(blocks, list):
        raise _SlackError("invalid_blocks", [f"[ERROR] must be an array [json-pointer:{pointer}]"])
    problems: list[str] = []
    if len(blocks) > limit:
        problems.append(f"[ERROR] no more than {limit} items allowed [json-pointer:{pointer}]")
    seen_ids: set[str] = set()
    for i, block in enumerate(blocks):
        here = f"{pointer}/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(f"[ERROR] missing required field: type [json-pointer:{here}]")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or len(block_id) > 255:
                problems.append(f"[ERROR] must be less than 256 characters [json-pointer:{here}]")
            elif block_id in seen_ids:
                problems.append(f"[ERROR] duplicate block_id [json-pointer:{here}/block_id]")
            else:
                seen_ids.add(block_id)
        kind = block["type"]
        if kind == "section":
            if _text_len(block.get("text")) > 3000:
                problems.append(
                    f"[ERROR] must be less than 3001 characters [json-pointer:{here}/text/text]"
                )
            fields = block.get("fields")
            if isinstance(fields, list) and len(fields) > 10:
                problems.append(
                    f"[ERROR] no more than 10 items allowed [json-pointer:{here}/fields]"
                )
            if block.get("text") is None and not fields:
                problems.append(f"[ERROR] must provide text or fields [json-pointer:{here}]")
        elif kind == "header" and _text_len(block.get("text")) > 150:
            problems.append(
                f"[ERROR] must be less than 151 characters [json-pointer:{here}/text/text]"
            )
        elif kind in ("actions", "context"):
            elements = block.get("elements")
            cap = 25 if kind == "actions" else 10
            if not isinstance(elements, list) or not elements:
                problems.append(f"[ERROR] missing required field: elements [json-pointer:{here}]")
            elif len(elements) > cap:
                problems.append(
                    f"[ERROR] no more than {cap} items allowed [json-pointer:{here}/elements]"
                )
    if problems:
        raise _SlackError("invalid_blocks", problems)
    return blocks


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # joined by server_close() all the same (block_on_close)
    # socketserver's default backlog is 5: concurrent senders then see refused connects and
    # retry after a second, which is the emulator's doing, not Slack's.
    request_queue_size = 128

    def __init__(self, emulator: SlackEmulator) -> None:
        self.emulator = emulator
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-exchange is normal in fault tests; stay quiet about it.
        return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SlackEmulator/1.0"
    sys_version = ""
    timeout = 5  # an idle client can hold a handler thread (and stop()) at most this long
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, verb: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.emulator._handle(verb, self.path, headers, raw)
        if reply.drop:
            # Close the socket without answering, like a load balancer resetting the connection.
            self.close_connection = True
            return
        payload, content_type = reply.payload()
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class SlackEmulator:
    """A Slack Web API lookalike on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test-token",  # noqa: S107 - a fake token for tests
        team_id: str = "T0ACME",
        bot_user_id: str = "UBOT",
    ) -> None:
        self.bot_token = bot_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = "B" + (bot_user_id[1:] if bot_user_id[:1] in "UW" else bot_user_id)
        self.app_id = "A0EMULATOR"
        self.team_name = f"Team {team_id}"
        self.team_url = f"https://{team_id.lower()}.slack.com/"
        #: Monotonic clock used by the channel rate limiter; replace it to fake time in tests.
        self.clock: Callable[[], float] = time.monotonic
        #: Every request, in order of handling.
        self.calls: list[Call] = []
        #: Exceptions raised inside the emulator itself (answered as HTTP 500); should stay empty.
        self.errors: list[BaseException] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._users: dict[str, _User] = {}
        self._channels: set[str] = set()
        self._opened: set[str] = set()
        self._view_ids: dict[str, str] = {}
        self._last_ts = 0
        self._messages: list[dict[str, Any]] = []
        self._ephemerals: list[dict[str, Any]] = []
        self._views: list[dict[str, Any]] = []
        self._responses: list[tuple[str, dict[str, Any]]] = []
        self._files: dict[str, _File] = {}
        self._uploads: list[dict[str, Any]] = []
        self._file_seq = 0
        self._failures: dict[str, deque[_Failure]] = {}
        self._random_faults: tuple[random.Random, float, tuple[str, ...]] | None = None
        self._rate_per_second: float | None = None
        self._next_post_at: dict[str, float] = {}
        self._add_bot_user()
        self._clear_state()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SlackEmulator:
        with self._lock:
            if self._server is not None:
                return self
            server = _Server(self)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name="slack-emulator",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> SlackEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        server = self._server
        if server is None:
            raise RuntimeError("SlackEmulator is not running; call start() first")
        host, port = server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def response_url(self, key: str = "default") -> str:
        return f"{self.base_url}/response/{quote(key, safe='')}"

    # ------------------------------------------------------------------ setup and scripting

    def add_user(
        self,
        user_id: str,
        *,
        locale: str = "en-US",
        tz: str = "UTC",
        is_restricted: bool = False,
        is_ultra_restricted: bool = False,
        name: str | None = None,
    ) -> None:
        ZoneInfo(tz)  # fail fast on a bad zone name
        with self._lock:
            self._users[user_id] = _User(
                id=user_id,
                name=name or user_id.lower(),
                locale=locale,
                tz=tz,
                is_restricted=is_restricted,
                is_ultra_restricted=is_ultra_restricted,
            )

    def add_channel(self, channel_id: str) -> None:
        with self._lock:
            self._channels.add(channel_id)

    def fail_next(
        self,
        method: str,
        *,
        status: int = 200,
        error: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
        drop_connection: bool = False,
    ) -> None:
        """Queue ``times`` scripted failures for ``method`` (first in, first out).

        * ``status=429``: ``{"ok": false, "error": "ratelimited"}`` + ``Retry-After``
          (``retry_after`` or 1).
        * ``status`` 5xx: 500 answers ``{"ok": false, "error": error or "internal_error"}``;
          502/503/504 answer a plain-text body unless ``error`` is given (then JSON).
        * ``status=200`` with ``error``: ``{"ok": false, "error": error}``.
        * ``drop_connection=True``: the socket is closed without any answer.

        ``method="response_url"`` scripts failures of response_url posts (all keys), and
        ``method="upload"`` failures of the POST of a file's bytes to its upload URL.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        if not drop_connection and status == 200 and error is None:
            raise ValueError(
                "a 200 failure needs error=...; or pass status=429/5xx/drop_connection"
            )
        with self._lock:
            self._failures.setdefault(method, deque()).append(
                _Failure(status, error, retry_after, drop_connection, times)
            )

    def set_random_faults(
        self, *, seed: int, rate: float, kinds: tuple[str, ...] = FAULT_KINDS
    ) -> None:
        """Fail a seeded-random share ``rate`` of API calls (never ``auth.test``).

        The same seed and the same sequence of calls give the same faults. ``rate=0`` disables.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {FAULT_KINDS}")
        with self._lock:
            self._random_faults = (random.Random(seed), rate, tuple(kinds)) if rate > 0 else None

    def set_channel_rate_limit(self, per_second: float | None) -> None:
        """Limit chat.postMessage per channel (Slack allows about 1/s); ``None`` disables."""
        if per_second is not None and per_second <= 0:
            raise ValueError("per_second must be positive or None")
        with self._lock:
            self._rate_per_second = per_second
            self._next_post_at.clear()

    def reset(self) -> None:
        """Forget calls, messages, ephemerals, views, responses, files, faults and the rate limit.

        Users, channels, opened DMs and tokens are kept; timestamps keep increasing.
        """
        with self._lock:
            self._clear_state()

    # ------------------------------------------------------------------ inspection

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            wanted = self._resolve_channel(channel) if channel is not None else None
            return [
                copy.deepcopy(m) for m in self._messages if wanted is None or m["channel"] == wanted
            ]

    def ephemerals(self, user: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(e) for e in self._ephemerals if user is None or e["user"] == user]

    def published_views(self, user: str | None = None) -> list[dict[str, Any]]:
        """Entries ``{"user_id": ..., "view": {...}}`` in publishing order."""
        with self._lock:
            return [copy.deepcopy(v) for v in self._views if user is None or v["user_id"] == user]

    def responses(self, key: str | None = None) -> list[dict[str, Any]]:
        """What the asker of command ``key`` was shown: answers in the ack and through its
        response_url, in the order Slack received them."""
        with self._lock:
            return [copy.deepcopy(body) for k, body in self._responses if key is None or k == key]

    def answered_in_ack(self, key: str, body: dict[str, Any]) -> None:
        """Slack shows a slash command's non-empty ack body as the answer, like a response_url
        post; the test's sender hands it here (recorded as a call to ``ack``)."""
        with self._lock:
            self._responses.append((key, copy.deepcopy(body)))
            self._record("ack", body, {}, _Reply(200, text="ok"))

    def upload_url(self, file_id: str) -> str:
        return f"{self.base_url}/upload/{quote(file_id, safe='')}"

    def uploads(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Completed uploads, in order: one entry per file and channel it was shared to.

        Each is ``{file_id, filename, title, bytes, channel, initial_comment}``; ``channel`` is
        None for a file completed without any channel (it stays private).
        """
        with self._lock:
            wanted = self._resolve_channel(channel) if channel is not None else None
            return [dict(u) for u in self._uploads if wanted is None or u["channel"] == wanted]

    # ------------------------------------------------------------------ internals: state

    def _add_bot_user(self) -> None:
        self._users[self.bot_user_id] = _User(
            id=self.bot_user_id,
            name="billing-bot",
            locale="en-US",
            tz="UTC",
            is_restricted=False,
            is_ultra_restricted=False,
            is_bot=True,
        )

    def _clear_state(self) -> None:
        self.calls.clear()
        self.errors.clear()
        self._messages = []
        self._ephemerals = []
        self._views = []
        self._responses = []
        self._files = {}
        self._uploads = []
        self._failures = {}
        self._random_faults = None
        self._rate_per_second = None
        self._next_post_at = {}

    def _next_ts(self) -> str:
        self._last_ts = max(self._last_ts + 1, time.time_ns() // 1000)
        return _micros_to_ts(self._last_ts)

    def _resolve_channel(self, channel: str) -> str:
        if channel in self._users and channel[:1] in ("U", "W"):
            return "D" + channel
        return channel

    def _known_channel(self, channel: str) -> bool:
        return channel in self._channels or channel in self._opened

    # ------------------------------------------------------------------ internals: HTTP

    def _handle(self, verb: str, path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        parts = urlsplit(path)
        if parts.path.startswith("/api/"):
            method = unquote(parts.path[len("/api/") :])
            with self._lock:
                try:
                    params = self._parse_params(parts.query, headers, raw)
                    reply = self._api(verb, method, params, headers)
                except _SlackError as exc:  # unparseable body
                    params = {}
                    reply = _Reply(body=_error_body(exc.error, exc.messages))
                except Exception as exc:  # a bug in the emulator: surface it, answer 500
                    self.errors.append(exc)
                    params = {}
                    reply = _Reply(status=500, body=_error_body(f"emulator_error: {exc!r}"))
                self._record(method, params, headers, reply)
            return reply
        if parts.path.startswith("/response/"):
            key = unquote(parts.path[len("/response/") :])
            with self._lock:
                reply, body = self._response_url(verb, key, headers, raw)
                self._record("response_url", body, headers, reply)
            return reply
        if parts.path.startswith("/upload/"):
            file_id = unquote(parts.path[len("/upload/") :])
            with self._lock:
                try:
                    reply, params = self._upload(verb, file_id, headers, raw)
                except Exception as exc:  # a bug in the emulator: surface it, answer 500
                    self.errors.append(exc)
                    reply, params = _Reply(status=500, text=f"emulator_error: {exc!r}"), {}
                self._record("upload", params, headers, reply)
            return reply
        return _Reply(status=404, text="not found")

    def _record(
        self, method: str, params: dict[str, Any], headers: dict[str, str], reply: _Reply
    ) -> None:
        self.calls.append(
            Call(
                method=method,
                params=params,
                headers=dict(headers),
                status=0 if reply.drop else reply.status,
                response=None if reply.drop else copy.deepcopy(reply.body),
                at=time.time(),
            )
        )

    def _parse_params(self, query: str, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if raw:
            if content_type == "application/json":
                try:
                    body = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise _SlackError("invalid_json") from exc
                if not isinstance(body, dict):
                    raise _SlackError("invalid_json")
                params.update(body)
            elif content_type == "multipart/form-data":
                params.update(self._parse_multipart(headers, raw))
            else:
                params.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        for name in JSON_STRING_FIELDS:
            value = params.get(name)
            if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
                try:
                    params[name] = json.loads(value)
                except json.JSONDecodeError:
                    pass  # left as a string; the method's validation rejects it
        return params

    @staticmethod
    def _parse_multipart(headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        head = f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        out: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            out[name] = data if part.get_filename() else data.decode("utf-8")
        return out

    def _check_auth(self, params: dict[str, Any], headers: dict[str, str]) -> None:
        token: str | None = None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[len("bearer ") :].strip()
        elif isinstance(params.get("token"), str):
            token = params["token"]
        if not token:
            raise _SlackError("not_authed")
        if token != self.bot_token:
            raise _SlackError("invalid_auth")

    def _fault_reply(self, method: str, *, random_faults: bool = True) -> _Reply | None:
        queue = self._failures.get(method)
        if queue:
            failure = queue[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                queue.popleft()
            return self._failure_reply(failure)
        if random_faults and self._random_faults is not None and method != "auth.test":
            rng, rate, kinds = self._random_faults
            if rng.random() < rate:
                kind = rng.choice(kinds)
                if kind == "429":
                    return self._failure_reply(_Failure(429, None, 1, False, 1))
                if kind == "500":
                    return self._failure_reply(_Failure(500, None, None, False, 1))
                if kind == "ok_false":
                    return self._failure_reply(_Failure(200, "internal_error", None, False, 1))
                return _Reply(drop=True)
        return None

    @staticmethod
    def _failure_reply(failure: _Failure) -> _Reply:
        if failure.drop:
            return _Reply(drop=True)
        headers: dict[str, str] = {}
        if failure.retry_after is not None or failure.status == 429:
            headers["Retry-After"] = str(max(0, failure.retry_after or 1))
        if failure.status == 429:
            return _Reply(429, _error_body(failure.error or "ratelimited"), headers=headers)
        if failure.status >= 500 and failure.error is None and failure.status != 500:
            reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
            text = f"{failure.status} {reason.get(failure.status, 'Server Error')}"
            return _Reply(failure.status, text=text, headers=headers)
        return _Reply(
            failure.status, _error_body(failure.error or "internal_error"), headers=headers
        )

    def _api(
        self, verb: str, method: str, params: dict[str, Any], headers: dict[str, str]
    ) -> _Reply:
        if verb not in ("GET", "POST") or (verb == "GET" and method not in READ_METHODS):
            return _Reply(405, _error_body("method_not_allowed"), headers={"Allow": "POST"})
        fault = self._fault_reply(method)
        if fault is not None:
            return fault
        handler = self._methods().get(method)
        try:
            if handler is None:
                raise _SlackError("unknown_method")
            self._check_auth(params, headers)
            result = handler(params)
        except _RateLimited as limited:
            return _Reply(
                429, _error_body("ratelimited"), headers={"Retry-After": str(limited.retry_after)}
            )
        except _SlackError as exc:
            return _Reply(body=_error_body(exc.error, exc.messages), headers=self._slack_headers())
        return _Reply(body={"ok": True, **result}, headers=self._slack_headers())

    def _slack_headers(self) -> dict[str, str]:
        return {
            "x-slack-req-id": uuid.uuid4().hex,
            "x-oauth-scopes": "chat:write,im:write,im:history,channels:history,users:read",
        }

    def _response_url(
        self, verb: str, key: str, headers: dict[str, str], raw: bytes
    ) -> tuple[_Reply, dict[str, Any]]:
        if verb != "POST":
            return _Reply(405, text="method_not_allowed", headers={"Allow": "POST"}), {}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if content_type == "application/x-www-form-urlencoded":
                body = json.loads(dict(parse_qsl(raw.decode("utf-8"))).get("payload", ""))
            else:
                body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _Reply(400, text="invalid_payload"), {}
        if not isinstance(body, dict):
            return _Reply(400, text="invalid_payload"), {}
        fault = self._fault_reply("response_url", random_faults=False)
        if fault is not None:
            return fault, body  # recorded as a call, not as a delivered response
        self._responses.append((key, body))
        return _Reply(200, text="ok"), body

    # ------------------------------------------------------------------ internals: methods

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "api.test": self._api_test,
            "auth.test": self._auth_test,
            "users.info": self._users_info,
            "conversations.open": self._conversations_open,
            "conversations.info": self._conversations_info,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "views.publish": self._views_publish,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
        }

    def _api_test(self, params: dict[str, Any]) -> dict[str, Any]:
        args = {k: v for k, v in params.items() if k != "token"}
        return {"args": args} if args else {}

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": self.team_url,
            "team": self.team_name,
            "user": self._users[self.bot_user_id].name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _user_object(self, user: _User, include_locale: bool) -> dict[str, Any]:
        offset = ZoneInfo(user.tz).utcoffset(datetime.now(UTC))
        seconds = int(offset.total_seconds()) if offset is not None else 0
        obj: dict[str, Any] = {
            "id": user.id,
            "team_id": self.team_id,
            "name": user.name,
            "deleted": False,
            "real_name": user.name,
            "tz": user.tz,
            "tz_label": user.tz,
            "tz_offset": seconds,
            "profile": {
                "real_name": user.name,
                "display_name": user.name,
                "team": self.team_id,
            },
            "is_admin": False,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": user.is_restricted,
            "is_ultra_restricted": user.is_ultra_restricted,
            "is_bot": user.is_bot,
            "is_app_user": False,
            "updated": 1700000000,
        }
        if user.is_bot:
            obj["profile"]["bot_id"] = self.bot_id
        if include_locale:
            obj["locale"] = user.locale
        return obj

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = params.get("user")
        if not user_id:
            raise _SlackError("user_not_found")
        user = self._users.get(str(user_id))
        if user is None:
            raise _SlackError("user_not_found")
        return {"user": self._user_object(user, _truthy(params.get("include_locale", False)))}

    def _im_object(self, channel_id: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": channel_id, "created": 1700000000, "is_org_shared": False}
        if channel_id.startswith("D"):
            obj.update({"is_im": True, "user": channel_id[1:], "is_open": True})
        elif channel_id.startswith("G") and "-" in channel_id:
            obj.update({"is_mpim": True, "is_group": False, "is_im": False, "is_open": True})
        else:
            obj.update(
                {
                    "name": channel_id.lower(),
                    "is_channel": True,
                    "is_im": False,
                    "is_private": False,
                    "is_member": True,
                }
            )
        return obj

    def _conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        existing = params.get("channel")
        users_param = params.get("users")
        if existing:
            channel_id = str(existing)
            if not self._known_channel(channel_id):
                raise _SlackError("channel_not_found")
        else:
            if not users_param:
                raise _SlackError("users_list_not_supplied")
            raw_ids = users_param if isinstance(users_param, list) else str(users_param).split(",")
            ids = [u.strip() for u in raw_ids if u.strip()]
            if not ids:
                raise _SlackError("users_list_not_supplied")
            if len(ids) > 8:
                raise _SlackError("too_many_users")
            for user_id in ids:
                if user_id not in self._users:
                    raise _SlackError("user_not_found")
            channel_id = "D" + ids[0] if len(ids) == 1 else "G" + "-".join(sorted(ids))
        result: dict[str, Any] = {}
        if channel_id in self._opened:
            result.update({"no_op": True, "already_open": True})
        self._opened.add(channel_id)
        if _truthy(params.get("return_im", False)):
            result["channel"] = self._im_object(channel_id)
        else:
            result["channel"] = {"id": channel_id}
        return result

    def _conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not self._known_channel(channel):
            raise _SlackError("channel_not_found")
        return {"channel": self._im_object(channel)}

    def _history_view(self, message: dict[str, Any], with_metadata: bool) -> dict[str, Any]:
        out = copy.deepcopy(message)
        out.pop("channel", None)
        if not out.get("blocks"):
            out.pop("blocks", None)
        if not with_metadata or out.get("metadata") is None:
            out.pop("metadata", None)
        return out

    def _page(
        self, items: list[dict[str, Any]], params: dict[str, Any], default_limit: int
    ) -> tuple[list[dict[str, Any]], str]:
        try:
            limit = int(params.get("limit") or default_limit)
        except ValueError as exc:
            raise _SlackError("invalid_limit") from exc
        limit = max(1, min(limit, 999))
        start = 0
        cursor = params.get("cursor")
        if cursor:
            try:
                start = int(base64.b64decode(str(cursor)).decode().removeprefix("offset:"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise _SlackError("invalid_cursor") from exc
        page = items[start : start + limit]
        has_more = start + limit < len(items)
        next_cursor = (
            base64.b64encode(f"offset:{start + limit}".encode()).decode() if has_more else ""
        )
        return page, next_cursor

    def _ts_window(self, params: dict[str, Any]) -> Callable[[str], bool]:
        oldest = _ts_to_micros(params.get("oldest") or "0", "invalid_ts_oldest")
        latest_param = params.get("latest")
        latest = (
            _ts_to_micros(latest_param, "invalid_ts_latest")
            if latest_param
            else max(time.time_ns() // 1000, self._last_ts)
        )
        inclusive = _truthy(params.get("inclusive", False))

        def inside(ts: str) -> bool:
            value = _ts_to_micros(ts, "invalid_ts")
            if inclusive:
                return oldest <= value <= latest
            return oldest < value < latest

        return inside

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(str(params.get("channel") or ""))
        if not self._known_channel(channel):
            raise _SlackError("channel_not_found")
        inside = self._ts_window(params)
        with_metadata = _truthy(params.get("include_all_metadata", False))
        newest_first = [
            m
            for m in reversed(self._messages)
            if m["channel"] == channel
            and inside(m["ts"])
            and (m.get("thread_ts") in (None, m["ts"]) or m.get("reply_broadcast"))
        ]
        page, next_cursor = self._page(newest_first, params, 100)
        return {
            "messages": [self._history_view(m, with_metadata) for m in page],
            "has_more": bool(next_cursor),
            "pin_count": 0,
            "channel_actions_ts": None,
            "channel_actions_count": 0,
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(str(params.get("channel") or ""))
        if not self._known_channel(channel):
            raise _SlackError("channel_not_found")
        thread_ts = str(params.get("ts") or "")
        thread = [
            m
            for m in self._messages
            if m["channel"] == channel and (m["ts"] == thread_ts or m.get("thread_ts") == thread_ts)
        ]
        if not thread:
            raise _SlackError("thread_not_found")
        inside = self._ts_window(params)
        with_metadata = _truthy(params.get("include_all_metadata", False))
        selected = [m for m in thread if m["ts"] == thread_ts or inside(m["ts"])]
        page, next_cursor = self._page(selected, params, 1000)
        return {
            "messages": [self._history_view(m, with_metadata) for m in page],
            "has_more": bool(next_cursor),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _message_content(
        self, params: dict[str, Any], *, require: bool
    ) -> tuple[str | None, list[dict[str, Any]] | None, Any]:
        text = params.get("text")
        if text is not None and not isinstance(text, str):
            text = str(text)
        blocks_param = params.get("blocks")
        blocks = (
            _validate_blocks(blocks_param, MAX_MESSAGE_BLOCKS)
            if blocks_param not in (None, "")
            else None
        )
        attachments = params.get("attachments")
        if attachments not in (None, "") and not isinstance(attachments, list):
            raise _SlackError("invalid_attachments")
        if require and not text and not blocks and not attachments:
            raise _SlackError("no_text")
        if text is not None and len(text) > MAX_TEXT_CHARS:
            raise _SlackError("msg_too_long")
        return text, blocks, attachments or None

    @staticmethod
    def _metadata(params: dict[str, Any]) -> dict[str, Any] | None:
        metadata = params.get("metadata")
        if metadata in (None, ""):
            return None
        if not isinstance(metadata, dict):
            raise _SlackError("invalid_metadata_format")
        if not isinstance(metadata.get("event_type"), str) or not metadata["event_type"]:
            raise _SlackError("invalid_metadata_schema")
        if not isinstance(metadata.get("event_payload"), dict):
            raise _SlackError("invalid_metadata_schema")
        return {"event_type": metadata["event_type"], "event_payload": metadata["event_payload"]}

    def _bot_profile(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "app_id": self.app_id,
            "name": self._users[self.bot_user_id].name,
            "team_id": self.team_id,
            "deleted": False,
        }

    def _post_channel(self, params: dict[str, Any]) -> str:
        raw = str(params.get("channel") or "")
        if not raw:
            raise _SlackError("channel_not_found")
        channel = self._resolve_channel(raw)
        if channel != raw:
            self._opened.add(channel)  # posting to a user id opens the DM
        if not self._known_channel(channel):
            raise _SlackError("channel_not_found")
        return channel

    def _check_rate_limit(self, channel: str) -> None:
        if self._rate_per_second is None:
            return
        now = self.clock()
        allowed_at = self._next_post_at.get(channel, -math.inf)
        if now < allowed_at:
            raise _RateLimited(max(1, math.ceil(allowed_at - now)))
        self._next_post_at[channel] = now + 1.0 / self._rate_per_second

    def _public_message(self, message: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(message)
        out.pop("channel", None)
        if not out.get("blocks"):
            out.pop("blocks", None)
        if out.get("metadata") is None:
            out.pop("metadata", None)
        return out

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._post_channel(params)
        text, blocks, attachments = self._message_content(params, require=True)
        metadata = self._metadata(params)
        self._check_rate_limit(channel)
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "ts": ts,
            "text": text if text else (BLOCKS_FALLBACK_TEXT if blocks else ""),
            "blocks": blocks or [],
            "metadata": metadata,
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "bot_profile": self._bot_profile(),
        }
        if attachments:
            message["attachments"] = attachments
        thread_ts = params.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = str(thread_ts)
            message["parent_user_id"] = self.bot_user_id
            if _truthy(params.get("reply_broadcast", False)):
                message["reply_broadcast"] = True
            self._note_reply(channel, str(thread_ts), ts)
        self._messages.append(message)
        return {"channel": channel, "ts": ts, "message": self._public_message(message)}

    def _note_reply(self, channel: str, thread_ts: str, reply_ts: str) -> None:
        for parent in self._messages:
            if parent["channel"] == channel and parent["ts"] == thread_ts:
                parent["thread_ts"] = thread_ts
                parent["reply_count"] = parent.get("reply_count", 0) + 1
                parent["reply_users"] = [self.bot_user_id]
                parent["reply_users_count"] = 1
                parent["latest_reply"] = reply_ts
                return

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        raw = str(params.get("channel") or "")
        channel = self._resolve_channel(raw)
        if not raw or not self._known_channel(channel):
            raise _SlackError("channel_not_found")
        user = str(params.get("user") or "")
        if user not in self._users:
            raise _SlackError("user_not_found")
        text, blocks, attachments = self._message_content(params, require=True)
        ts = self._next_ts()
        self._ephemerals.append(
            {
                "channel": channel,
                "user": user,
                "message_ts": ts,
                "text": text or "",
                "blocks": blocks or [],
                "attachments": attachments or [],
                "thread_ts": params.get("thread_ts"),
            }
        )
        return {"message_ts": ts}

    def _find_message(self, channel: str, ts: str) -> dict[str, Any]:
        for message in self._messages:
            if message["channel"] == channel and message["ts"] == ts:
                return message
        raise _SlackError("message_not_found")

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        raw = str(params.get("channel") or "")
        channel = self._resolve_channel(raw)
        if not raw or not self._known_channel(channel):
            raise _SlackError("channel_not_found")
        message = self._find_message(channel, str(params.get("ts") or ""))
        text, blocks, attachments = self._message_content(params, require=False)
        if text is None and blocks is None and attachments is None:
            raise _SlackError("no_text")
        metadata = self._metadata(params)
        if blocks is not None:
            message["blocks"] = blocks
        if text is not None:
            message["text"] = text
        elif blocks is not None:
            message["text"] = BLOCKS_FALLBACK_TEXT
        if attachments is not None:
            message["attachments"] = attachments
        if metadata is not None:
            message["metadata"] = metadata
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        public = self._public_message(message)
        return {"channel": channel, "ts": message["ts"], "text": message["text"], "message": public}

    def _chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        raw = str(params.get("channel") or "")
        channel = self._resolve_channel(raw)
        if not raw or not self._known_channel(channel):
            raise _SlackError("channel_not_found")
        message = self._find_message(channel, str(params.get("ts") or ""))
        self._messages.remove(message)
        return {"channel": channel, "ts": message["ts"]}

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = str(params.get("user_id") or "")
        if user_id not in self._users:
            raise _SlackError("user_not_found")
        view = params.get("view")
        if not isinstance(view, dict):
            raise _SlackError("invalid_arguments", ["[ERROR] missing required field: view"])
        if view.get("type") != "home":
            raise _SlackError(
                "invalid_arguments", ["[ERROR] must be 'home' [json-pointer:/view/type]"]
            )
        blocks = _validate_blocks(view.get("blocks"), MAX_VIEW_BLOCKS, "/view/blocks")
        private_metadata = view.get("private_metadata") or ""
        if len(str(private_metadata)) > 3000:
            raise _SlackError(
                "invalid_arguments",
                ["[ERROR] must be less than 3001 characters [json-pointer:/view/private_metadata]"],
            )
        current = [v for v in self._views if v["user_id"] == user_id]
        given_hash = params.get("hash")
        if given_hash and current and current[-1]["view"]["hash"] != given_hash:
            raise _SlackError("hash_conflict")
        view_id = self._view_ids.setdefault(user_id, "V" + uuid.uuid4().hex[:10].upper())
        published: dict[str, Any] = {
            "id": view_id,
            "team_id": self.team_id,
            "type": "home",
            "blocks": blocks,
            "private_metadata": private_metadata,
            "callback_id": view.get("callback_id") or "",
            "state": {"values": {}},
            "hash": f"{self._next_ts()}.{hashlib.sha256(view_id.encode()).hexdigest()[:8]}",
            "title": view.get("title") or {"type": "plain_text", "text": "View Title"},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": None,
            "submit": None,
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.app_id,
            "external_id": view.get("external_id") or "",
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }
        self._views.append({"user_id": user_id, "view": copy.deepcopy(published)})
        return {"view": published}

    # ------------------------------------------------------------------ internals: files

    def _files_get_upload_url_external(self, params: dict[str, Any]) -> dict[str, Any]:
        filename = params.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            raise _SlackError("invalid_arguments", ["[ERROR] missing required field: filename"])
        try:
            length = int(str(params.get("length") or "0"))
        except ValueError as exc:
            raise _SlackError(
                "invalid_arguments", ["[ERROR] must be an integer [json-pointer:/length]"]
            ) from exc
        if length <= 0:
            raise _SlackError("missing_argument")  # what Slack answers to a zero length
        alt_txt = params.get("alt_txt")
        if isinstance(alt_txt, str) and len(alt_txt) > 1000:
            raise _SlackError("alt_txt_too_large")
        self._file_seq += 1
        file_id = f"F{self._file_seq:010d}"
        self._files[file_id] = _File(
            id=file_id,
            filename=filename,
            length=length,
            alt_txt=alt_txt if isinstance(alt_txt, str) else None,
            snippet_type=str(params["snippet_type"]) if params.get("snippet_type") else None,
        )
        return {"upload_url": self.upload_url(file_id), "file_id": file_id}

    def _upload(
        self, verb: str, file_id: str, headers: dict[str, str], raw: bytes
    ) -> tuple[_Reply, dict[str, Any]]:
        params: dict[str, Any] = {"file_id": file_id, "length": len(raw)}
        if verb != "POST":
            return _Reply(405, text="method_not_allowed", headers={"Allow": "POST"}), params
        fault = self._fault_reply("upload", random_faults=False)
        if fault is not None:
            return fault, params
        entry = self._files.get(file_id)
        if entry is None or entry.completed:
            return _Reply(404, text="file_not_found"), params
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        data = raw
        if content_type == "multipart/form-data":
            parts = self._parse_multipart(headers, raw)
            found = [v for v in parts.values() if isinstance(v, bytes)]
            if not found:
                return _Reply(400, text="no_file_data"), params
            data = found[0]
        params["length"] = len(data)
        entry.content = data
        return _Reply(200, text=f"OK - {len(data)}"), params

    def _files_complete_upload_external(self, params: dict[str, Any]) -> dict[str, Any]:
        entries = self._completed_entries(params.get("files"))
        channels = self._share_channels(params)
        thread_ts = params.get("thread_ts")
        if thread_ts and len(channels) != 1:
            raise _SlackError("invalid_arguments", ["[ERROR] thread_ts needs exactly one channel"])
        comment = params.get("initial_comment")
        comment = str(comment) if comment not in (None, "") else None
        for file, _ in entries:
            file.completed = True
        public = [self._file_object(file, title, channels) for file, title in entries]
        for channel in channels:
            self._share(channel, public, comment, str(thread_ts) if thread_ts else None)
        for file, title in entries:
            for channel in channels or [None]:
                self._uploads.append(
                    {
                        "file_id": file.id,
                        "filename": file.filename,
                        "title": title,
                        "bytes": file.content,
                        "channel": channel,
                        "initial_comment": comment,
                    }
                )
        return {"files": public}

    def _completed_entries(self, raw: Any) -> list[tuple[_File, str]]:
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise _SlackError(
                    "invalid_arguments", ["[ERROR] invalid json [json-pointer:/files]"]
                ) from exc
        if not isinstance(raw, list) or not raw:
            raise _SlackError("invalid_arguments", ["[ERROR] missing required field: files"])
        entries: list[tuple[_File, str]] = []
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise _SlackError("invalid_arguments", ["[ERROR] each file needs an id"])
            file = self._files.get(item["id"])
            # Never uploaded, or completed before: Slack has no pending upload by that id.
            if file is None or file.content is None or file.completed:
                raise _SlackError("file_not_found")
            title = item.get("title")
            entries.append((file, str(title) if title else file.filename))
        return entries

    def _share_channels(self, params: dict[str, Any]) -> list[str]:
        wanted: list[str] = []
        if params.get("channel_id"):
            wanted.append(str(params["channel_id"]))
        if params.get("channels"):
            wanted += [c.strip() for c in str(params["channels"]).split(",") if c.strip()]
        channels: list[str] = []
        for raw in wanted:
            channel = self._resolve_channel(raw)
            if channel != raw:
                self._opened.add(channel)  # sharing to a user id opens the DM
            if not self._known_channel(channel):
                raise _SlackError("channel_not_found")
            if channel not in channels:
                channels.append(channel)
        return channels

    def _file_object(self, file: _File, title: str, channels: list[str]) -> dict[str, Any]:
        name = file.filename
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        return {
            "id": file.id,
            "created": int(time.time()),
            "timestamp": int(time.time()),
            "name": name,
            "title": title,
            "mimetype": _MIMETYPES.get(extension, "application/octet-stream"),
            "filetype": extension or "binary",
            "user": self.bot_user_id,
            "size": len(file.content or b""),
            "is_public": any(not c.startswith(("D", "G")) for c in channels),
            "channels": [c for c in channels if c.startswith("C")],
            "ims": [c for c in channels if c.startswith("D")],
            "groups": [c for c in channels if c.startswith("G")],
            "url_private": f"{self.base_url}/files/{file.id}/{quote(name)}",
            "alt_txt": file.alt_txt,
        }

    def _share(
        self, channel: str, files: list[dict[str, Any]], comment: str | None, thread_ts: str | None
    ) -> None:
        """The message Slack posts where files are shared: the comment with the files."""
        message: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "ts": self._next_ts(),
            "text": comment or "",
            "blocks": [],
            "metadata": None,
            "files": copy.deepcopy(files),
            "upload": True,
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "bot_profile": self._bot_profile(),
        }
        if thread_ts:
            message["thread_ts"] = thread_ts
            self._note_reply(channel, thread_ts, message["ts"])
        self._messages.append(message)


_MIMETYPES = {
    "pdf": "application/pdf",
    "png": "image/png",
    "csv": "text/csv",
    "txt": "text/plain",
    "json": "application/json",
}


class _RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after
