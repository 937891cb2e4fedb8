"""The Slack Web API emulator (tests/slack_emulator.py) in a process of its own.

Served apart from the benchmark's clients so they do not share one interpreter lock. The
parent drives it with one JSON object per line on stdin and reads one JSON answer per line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.slack_emulator import SlackEmulator

TOKEN = "xoxb-bench-token"  # noqa: S105 - the emulator's fake token


def _answer(emu: SlackEmulator, request: dict[str, Any]) -> dict[str, Any]:
    cmd = request["cmd"]
    if cmd == "users":
        for user in request["ids"]:
            emu.add_user(user, locale="en-US")
        return {"ok": True}
    if cmd == "channels":
        for channel in request["ids"]:
            emu.add_channel(channel)
        return {"ok": True}
    if cmd == "reset":
        emu.reset()
        return {"ok": True}
    if cmd == "rate":
        emu.set_channel_rate_limit(request["per_second"])
        return {"ok": True}
    if cmd == "posts":
        keys = []
        for message in emu.messages():
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            keys.append(str(payload.get("outbox_key", "")))
        statuses = Counter(
            f"{c.method}:{c.status}" for c in list(emu.calls) if c.method != "response_url"
        )
        return {"ok": True, "keys": keys, "calls": dict(statuses), "errors": len(emu.errors)}
    if cmd == "stop":
        return {"ok": True}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


def main() -> int:
    emu = SlackEmulator(bot_token=TOKEN, team_id="TBENCH").start()
    print(json.dumps({"api_url": emu.api_url, "base_url": emu.base_url}), flush=True)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            print(json.dumps(_answer(emu, request)), flush=True)
            if request["cmd"] == "stop":
                break
    finally:
        emu.stop()
    return 0


class Emulator:
    """The parent's handle on an emulator process."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen(
            [python, "-m", "bench.emulator_proc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(_root()),
        )
        first = self._read()
        self.api_url: str = first["api_url"]
        self.token = TOKEN

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the Slack emulator process stopped")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, cmd: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if not answer.get("ok"):
            raise RuntimeError(f"emulator: {answer}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("stop")
            except (RuntimeError, OSError):
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


if __name__ == "__main__":
    sys.exit(main())
