"""Slack's side over real HTTP: signed slash commands, and a response_url receiver.

A command is POSTed to ``/slack/events`` signed the way Slack signs it (v0 HMAC-SHA256 over
``v0:{ts}:{body}``). The bot answers in the ack when the answer is ready in time, else acks
empty and answers later through response_url; that URL points at :class:`Receiver`, which
notes when each answer arrives, so a client can time both the ack and the answer the user
sees (the ack's own time when it carried the answer).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

SECRET = "bench-signing-secret-0123456789ab"  # noqa: S105 - a fake secret for the benchmark


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sign(body: str, timestamp: int) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(SECRET.encode(), base, hashlib.sha256).hexdigest()


def looks_failed(payload: dict[str, Any]) -> bool:
    """A refusal or an apology instead of an answer."""
    text = json.dumps(payload)
    return "no_entry_sign" in text or "went wrong" in text


class Receiver:
    """response_url on loopback: records (arrival time, payload) per key, wakes the waiter."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._answers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                arrived = time.perf_counter()
                key = self.path.rsplit("/", 1)[-1]
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = {"raw": raw.decode("utf-8", "replace")}
                receiver._arrive(key, arrived, payload)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, key: str) -> str:
        with self._lock:
            self._events.setdefault(key, threading.Event())
        return f"{self.base}/r/{key}"

    def _arrive(self, key: str, at: float, payload: dict[str, Any]) -> None:
        with self._lock:
            self._answers[key] = (at, payload)
            event = self._events.setdefault(key, threading.Event())
        event.set()

    def wait(self, key: str, timeout: float) -> tuple[float, dict[str, Any]] | None:
        with self._lock:
            event = self._events.setdefault(key, threading.Event())
        if not event.wait(timeout):
            return None
        with self._lock:
            self._events.pop(key, None)
            return self._answers.pop(key)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Timing:
    ack: float  # seconds from sending to the HTTP answer
    answer: float | None  # seconds from sending to the answer, in the ack or at response_url
    ok: bool


class Client:
    """One Slack-side connection to the bot (HTTP keep-alive), sending signed commands."""

    def __init__(self, port: int, receiver: Receiver | None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.receiver = receiver

    def command(self, team: str, user: str, text: str, *, wait_answer: bool = True) -> Timing:
        key = uuid.uuid4().hex[:12]
        response_url = self.receiver.url(key) if self.receiver else "http://127.0.0.1:9/none"
        body = urlencode(
            {
                "token": "legacy-verification-token",
                "team_id": team,
                "team_domain": team.lower(),
                "channel_id": "C0GENERAL",
                "channel_name": "general",
                "user_id": user,
                "user_name": user.lower(),
                "command": "/billing",
                "text": text,
                "api_app_id": "A0EMULATOR",
                "is_enterprise_install": "false",
                "response_url": response_url,
                "trigger_id": f"trigger-{key}",
            }
        )
        started = time.perf_counter()
        ts = int(time.time())
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": sign(body, ts),
        }
        self.conn.request("POST", "/slack/events", body=body.encode(), headers=headers)
        response = self.conn.getresponse()
        content = response.read()
        acked = time.perf_counter() - started
        if response.status != 200:
            return Timing(acked, None, False)
        if content.strip():  # answered in the ack: that is when the user sees it
            return Timing(acked, acked, not looks_failed(json.loads(content)))
        if not wait_answer or self.receiver is None:
            return Timing(acked, None, True)
        got = self.receiver.wait(key, timeout=60)
        if got is None:
            return Timing(acked, None, False)
        arrived, payload = got
        return Timing(acked, arrived - started, not looks_failed(payload))

    def close(self) -> None:
        self.conn.close()


def wait_healthy(port: int, proc: subprocess.Popen[bytes], *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} while starting")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no answer on /healthz of port {port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process ``pid`` has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(
    argv: list[str], *, env: dict[str, str], port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run an HTTP server process (``billing-bot serve`` or the ack-only app) until the block
    ends; its output goes to ``log``. Yields the process (for :func:`cpu_seconds`)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=os.path.dirname(log)
        )
        try:
            wait_healthy(port, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
