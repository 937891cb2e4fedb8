"""Slack's side of the conversation: signed HTTP requests to the bot, answers from the emulator.

Requests are signed the way Slack signs them (v0 HMAC-SHA256 over ``v0:{ts}:{body}``) and sent
over real HTTP to the uvicorn server; answers are read back from the Web API emulator, polling
with a timeout instead of sleeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode

import httpx
import uvicorn
from starlette.types import ASGIApp

from bot.textview import render_blocks
from tests.slack_emulator import SlackEmulator

FORM = "application/x-www-form-urlencoded"

T = TypeVar("T")
TEAM = "T0ACME"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TIMEOUT = 15.0


def wait_for(probe: Callable[[], T], *, timeout: float = TIMEOUT, what: str = "a result") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def sign(body: str, timestamp: int, secret: str = SECRET) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def as_text(payload: dict[str, Any]) -> str:
    """A message as plain text (its blocks through the console renderer), plain spaces."""
    blocks = payload.get("blocks") or []
    text = render_blocks(blocks) if blocks else str(payload.get("text", ""))
    return plain_spaces(text)


def plain_spaces(text: str) -> str:
    """CLDR formats use no-break spaces ("1.234,50\u00a0€"); tests compare with plain ones."""
    return text.replace("\u00a0", " ").replace("\u202f", " ")


def buttons(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The buttons of a message by action_id."""
    found = {}
    for block in payload.get("blocks") or []:
        if block.get("type") == "actions":
            found.update({e["action_id"]: e for e in block["elements"] if e["type"] == "button"})
    return found


@contextlib.contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", ws="none", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5) as http:

            def healthy() -> bool:
                if not thread.is_alive():
                    raise AssertionError("uvicorn stopped while starting")
                try:
                    return server.started and http.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(healthy, what="/healthz")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


class Slack:
    """Sends what Slack would send, signed; finds the bot's answers in the emulator."""

    def __init__(self, base_url: str, emulator: SlackEmulator, *, secret: str = SECRET) -> None:
        self.emu = emulator
        self.secret = secret
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def close(self) -> None:
        self.http.close()

    # -- raw -------------------------------------------------------------------------------

    def post(
        self,
        body: str,
        *,
        content_type: str,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        ts = int(time.time()) if timestamp is None else timestamp
        sent = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": signature or sign(body, ts, self.secret),
            **(headers or {}),
        }
        response = self.http.post("/slack/events", content=body.encode(), headers=sent)
        self._shown_from_ack(body, content_type, response)
        return response

    def _shown_from_ack(self, body: str, content_type: str, response: httpx.Response) -> None:
        """A slash command's ack with a body is its answer: Slack shows it as it shows a
        response_url post, so it goes to the emulator's answers under the command's key."""
        if content_type != FORM or response.status_code != 200 or not response.content.strip():
            return
        fields = dict(parse_qsl(body))
        url = fields.get("response_url", "")
        if "command" in fields and "/response/" in url:
            self.emu.answered_in_ack(unquote(url.rsplit("/response/", 1)[1]), response.json())

    def command_body(
        self, user: str, text: str, *, key: str, channel: str = "C0GENERAL", team: str = TEAM
    ) -> str:
        return urlencode(
            {
                "token": "legacy-verification-token",
                "team_id": team,
                "team_domain": team.lower(),
                "channel_id": channel,
                "channel_name": "general",
                "user_id": user,
                "user_name": user.lower(),
                "command": "/billing",
                "text": text,
                "api_app_id": "A0EMULATOR",
                "is_enterprise_install": "false",
                "response_url": self.emu.response_url(key),
                "trigger_id": f"trigger-{key}",
            }
        )

    # -- slash commands and buttons -----------------------------------------------------------

    def command(self, user: str, text: str, **kwargs: Any) -> tuple[httpx.Response, str]:
        """POST a /billing command; returns the HTTP response and its response_url key."""
        key = kwargs.pop("key", None) or uuid.uuid4().hex[:8]
        body = self.command_body(user, text, key=key, **kwargs)
        return self.post(body, content_type="application/x-www-form-urlencoded"), key

    def ask(self, user: str, text: str, **kwargs: Any) -> dict[str, Any]:
        """A /billing command and the bot's answer (in the ack, or through response_url)."""
        response, key = self.command(user, text, **kwargs)
        assert response.status_code == 200, response.text
        return self.answer(key)

    def answer(self, key: str, count: int = 1) -> dict[str, Any]:
        found = wait_for(
            lambda: (r := self.emu.responses(key)) and len(r) >= count and r,
            what=f"answer #{count} on response_url {key}",
        )
        return found[count - 1]

    def click(
        self,
        user: str,
        button: dict[str, Any],
        *,
        key: str,
        team: str = TEAM,
        channel: str = "C0GENERAL",
        timestamp: int | None = None,
    ) -> httpx.Response:
        """Press ``button`` (a button element from an answer's blocks)."""
        payload = {
            "type": "block_actions",
            "team": {"id": team, "domain": team.lower()},
            "user": {"id": user, "username": user.lower(), "team_id": team},
            "api_app_id": "A0EMULATOR",
            "token": "legacy-verification-token",
            "container": {"type": "message", "channel_id": channel, "is_ephemeral": True},
            "channel": {"id": channel, "name": "general"},
            "trigger_id": f"trigger-{uuid.uuid4().hex[:6]}",
            "response_url": self.emu.response_url(key),
            "actions": [
                {
                    "type": "button",
                    "action_id": button["action_id"],
                    "block_id": "assign",
                    "value": button.get("value", ""),
                    "text": button["text"],
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        body = urlencode({"payload": json.dumps(payload)})
        return self.post(
            body, content_type="application/x-www-form-urlencoded", timestamp=timestamp
        )

    # -- events ---------------------------------------------------------------------------

    def event(self, event: dict[str, Any], *, team: str = TEAM, **kwargs: Any) -> httpx.Response:
        body = json.dumps(
            {
                "token": "legacy-verification-token",
                "team_id": team,
                "api_app_id": "A0EMULATOR",
                "event": event,
                "type": "event_callback",
                "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
                "event_time": int(time.time()),
                "authorizations": [
                    {"team_id": team, "user_id": self.emu.bot_user_id, "is_bot": True}
                ],
            }
        )
        return self.post(body, content_type="application/json", **kwargs)

    def dm(self, user: str, text: str, **kwargs: Any) -> httpx.Response:
        ts = f"{time.time():.6f}"
        event = {
            "type": "message",
            "channel": f"D{user}",
            "channel_type": "im",
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
        }
        return self.event(event, **kwargs)

    def ask_dm(self, user: str, text: str) -> dict[str, Any]:
        """A direct message to the bot and its answer in that DM."""
        before = len(self.emu.messages(f"D{user}"))
        response = self.dm(user, text)
        assert response.status_code == 200, response.text
        messages = wait_for(
            lambda: (m := self.emu.messages(f"D{user}")) and len(m) > before and m,
            what=f"an answer in the DM of {user}",
        )
        return messages[before]

    def mention(self, user: str, text: str, *, channel: str = "C0GENERAL") -> httpx.Response:
        ts = f"{time.time():.6f}"
        event = {
            "type": "app_mention",
            "channel": channel,
            "user": user,
            "text": f"<@{self.emu.bot_user_id}> {text}",
            "ts": ts,
            "event_ts": ts,
        }
        return self.event(event)

    def home(self, user: str) -> httpx.Response:
        ts = f"{time.time():.6f}"
        return self.event(
            {
                "type": "app_home_opened",
                "user": user,
                "channel": f"D{user}",
                "tab": "home",
                "event_ts": ts,
            }
        )
