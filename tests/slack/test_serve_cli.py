"""``billing-bot serve``, ``socket``: started as an operator would, refused with one line."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from billing_core.services import BillingService
from tests.slack.conftest import DEV
from tests.slack.slackside import SECRET, Slack, as_text, wait_for
from tests.slack.test_console import environment
from tests.slack_emulator import SlackEmulator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def billing_bot(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def test_serve_answers_signed_slack_requests_until_stopped(
    billed: BillingService, emulator: SlackEmulator, db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = environment(
        DATABASE_URL=db_url,
        SLACK_BOT_TOKEN=emulator.bot_token,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=emulator.api_url,
    )
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(port), "--no-scheduler"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=2) as http:

            def healthy() -> bool:
                assert server.poll() is None, "serve exited"
                try:
                    return http.get("/healthz").json() == {"ok": True}
                except httpx.TransportError:
                    return False

            wait_for(healthy, what="billing-bot serve to answer /healthz")
        slack = Slack(base, emulator)
        try:
            assert "1.469,06 € unpaid" in as_text(slack.ask(DEV, "owed"))
            forged = slack.post(
                "x=1", content_type="application/x-www-form-urlencoded", signature="v0=0"
            )
            assert forged.status_code == 401
            # The HTTP API of SPEC 8 is served beside Slack (disabled without its token).
            api = slack.http.get("/api/v1/invoices", params={"org": "acme"})
            assert api.status_code == 503
        finally:
            slack.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.seek(0)
        output = log.read()
        log.close()
    assert "Traceback" not in output
    assert emulator.bot_token not in output and SECRET not in output


def test_serve_needs_the_signing_secret(tmp_path: Path) -> None:
    done = billing_bot("serve", env=environment(), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "billing-bot: SLACK_SIGNING_SECRET is required for this command but is not set"
    )


def test_serve_refuses_a_token_slack_rejects_without_showing_it(
    emulator: SlackEmulator, tmp_path: Path
) -> None:
    env = environment(
        SLACK_BOT_TOKEN="xoxb-not-the-right-one",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=emulator.api_url,
    )
    done = billing_bot("serve", "--port", str(free_port()), "--no-scheduler", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("billing-bot: cannot start the Slack app:")
    assert "invalid_auth" in done.stderr
    assert "xoxb-not-the-right-one" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1


def test_socket_mode_needs_the_app_token(tmp_path: Path) -> None:
    done = billing_bot("socket", env=environment(), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "billing-bot: SLACK_APP_TOKEN is required for this command but is not set"
    )
