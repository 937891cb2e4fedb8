"""Load: 50 concurrent clients sending signed slash commands to a real ``billing-bot serve``.

The issue asks for 20,000 commands; CI sends 2,000 (BILLING_LOAD_COMMANDS and
BILLING_LOAD_MAX_GROWTH_MB override the size and the memory bound; docs/reliability.md has the
full-size run and its figures). Every request must be acknowledged with a 200, every
command answered exactly once on its response_url, and the server's resident memory, read from
/proc after the first quarter and again after the last command, must stay flat.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from billing_core.services import BillingService
from tests.db.test_concurrency import TIMEOUT, Run
from tests.server import free_port
from tests.slack.conftest import ADMIN, DEV, JA
from tests.slack.slackside import SECRET, Slack, wait_for
from tests.slack_emulator import SlackEmulator

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

COMMANDS = int(os.environ.get("BILLING_LOAD_COMMANDS", "2000"))
CLIENTS = 50
WARM_UP = COMMANDS // 4
MAX_GROWTH_MB = float(os.environ.get("BILLING_LOAD_MAX_GROWTH_MB", "16"))
TEXTS = (
    "balance",
    "owed",
    "invoices",
    "invoice INV-2026-000002",
    "payments",
    "credits",
    "groups",
    "help",
    "balance tokyo",
    "frobnicate",
)
ASKERS = (DEV, ADMIN, JA)


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


def rss_mb(pid: int) -> float:
    """The process's resident set, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    [line] = [x for x in status.splitlines() if x.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


@pytest.fixture
def server(
    billed: BillingService, db_url: str, emulator: SlackEmulator, start_cli: Callable[..., Run]
) -> Iterator[tuple[str, Run]]:
    """``billing-bot serve`` as its own process, against the emulator."""
    port = free_port()
    env = {
        "SLACK_BOT_TOKEN": emulator.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": emulator.api_url,
    }
    run = start_cli(db_url, "serve", "--port", str(port), "--no-scheduler", env=env)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert run.process.poll() is None, run.finish()
        try:
            return httpx.get(base + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=TIMEOUT, what="billing-bot serve")
    yield base, run
    if run.process.poll() is None:
        run.process.send_signal(signal.SIGTERM)
        run.finish()


class Inbox:
    """Where the answers go: a response_url receiver that counts answers per command (the
    senders add the answers that came in the ack)."""

    def __init__(self) -> None:
        self.answers: Counter[str] = Counter()
        self.apologies = 0
        self.acks: list[float] = []  # seconds from sending a command to its HTTP 200
        self.lock = threading.Lock()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                inbox.take(self.path.rsplit("/", 1)[-1], json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self, key: str, answer: dict[str, object]) -> None:
        """An answer: through response_url, or in the ack itself."""
        with self.lock:
            self.answers[key] += 1
            self.apologies += "Sorry, something went wrong" in str(answer.get("text", ""))

    def url(self, key: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/answers/{key}"

    def count(self, numbers: range) -> int:
        with self.lock:
            return sum(1 for n in numbers if self.answers[f"load-{n}"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class LoadClient(Slack):
    """A signed Slack client whose commands ask to be answered at the inbox."""

    def __init__(self, base: str, emulator: SlackEmulator, inbox: Inbox) -> None:
        super().__init__(base, emulator)
        self.inbox = inbox

    def command_body(self, user: str, text: str, *, key: str, **kwargs: str) -> str:
        body = super().command_body(user, text, key=key, **kwargs)
        original = urlencode({"r": self.emu.response_url(key)})[2:]
        return body.replace(original, urlencode({"r": self.inbox.url(key)})[2:])


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    receiver = Inbox()
    yield receiver
    receiver.close()


def send(base: str, emulator: SlackEmulator, inbox: Inbox, numbers: range) -> Counter[int]:
    """Send commands ``numbers`` from CLIENTS concurrent clients; HTTP statuses by count."""
    clients = [LoadClient(base, emulator, inbox) for _ in range(CLIENTS)]
    try:

        def one(number: int) -> int:
            client = clients[number % CLIENTS]
            user = ASKERS[number % len(ASKERS)]
            text = TEXTS[number % len(TEXTS)]
            started = time.monotonic()
            response, key = client.command(user, text, key=f"load-{number}")
            inbox.acks.append(time.monotonic() - started)
            if response.status_code == 200 and response.content.strip():
                inbox.take(key, response.json())  # answered in the ack
            return response.status_code

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            # Each client sends its share in order, as 50 busy workspaces would.
            return Counter(pool.map(one, numbers))
    finally:
        for client in clients:
            client.close()


def wait_for_answers(inbox: Inbox, numbers: range) -> None:
    deadline = time.monotonic() + TIMEOUT * 3
    while (found := inbox.count(numbers)) < len(numbers):
        assert time.monotonic() < deadline, f"{len(numbers) - found} answers never came"
        time.sleep(0.2)


def test_fifty_clients_get_every_answer_once_and_memory_stays_flat(
    server: tuple[str, Run], emulator: SlackEmulator, inbox: Inbox
) -> None:
    base, run = server
    first, rest = range(WARM_UP), range(WARM_UP, COMMANDS)
    started = time.monotonic()

    statuses = send(base, emulator, inbox, first)
    wait_for_answers(inbox, first)
    warm = rss_mb(run.process.pid)
    statuses += send(base, emulator, inbox, rest)
    wait_for_answers(inbox, range(COMMANDS))
    elapsed = time.monotonic() - started
    end = rss_mb(run.process.pid)

    assert statuses == Counter({200: COMMANDS})
    assert set(inbox.answers.values()) == {1}, inbox.answers.most_common(3)
    assert inbox.apologies == 0
    assert end - warm < MAX_GROWTH_MB, f"RSS grew from {warm:.1f} to {end:.1f} MB"
    acks = sorted(inbox.acks)
    p99 = acks[int(len(acks) * 0.99)]
    print(  # shown with -s: the figures docs/reliability.md quotes
        f"\n{COMMANDS} commands from {CLIENTS} clients in {elapsed:.1f}s "
        f"({COMMANDS / elapsed:.0f}/s); ack p99 {p99:.2f}s, max {acks[-1]:.2f}s; "
        f"RSS {warm:.1f} MB after {WARM_UP}, {end:.1f} MB at the end"
    )
