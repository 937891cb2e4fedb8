"""Secrets never reach a log or a message: every scenario runs with sentinel secrets.

``billing-bot serve`` (a real process, verbose) answers commands, buttons, the API, forged and
malformed requests, Slack failures and an unexpected database error; the command-line tools
run verbose too, including with broken settings. Everything any of them wrote to stdout or
stderr is searched for the sentinels.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from billing_core.services import BillingService
from tests import factories
from tests.db.test_concurrency import TIMEOUT, Run
from tests.hardening.conftest import Zygote
from tests.server import free_port
from tests.slack.conftest import ADMIN, DEV, STRANGER, bill_acme
from tests.slack.slackside import Slack, buttons, wait_for
from tests.slack_emulator import SlackEmulator

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MARK = "SeNtInEl"
SECRETS = {
    "SLACK_BOT_TOKEN": f"xoxb-{MARK}-bot-7f3a9c",
    "SLACK_SIGNING_SECRET": f"{MARK}signing5b1e88d2",
    "BILLING_API_TOKEN": f"{MARK}-api-4c2d",
    "STRIPE_WEBHOOK_SECRET": f"whsec_{MARK}stripe",
    "SLACK_APP_TOKEN": f"xapp-{MARK}-app",
}
DB_PASSWORD = f"{MARK}pw"


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def emu() -> Iterator[SlackEmulator]:
    with SlackEmulator(bot_token=SECRETS["SLACK_BOT_TOKEN"]) as emulator:
        for user in (ADMIN, DEV, STRANGER, "U0FIN", "U0TOKYO"):
            emulator.add_user(user)
            emulator.add_channel(f"D{user}")
        for channel in ("C0GENERAL", "C0AUDIT", "C0BILLING"):
            emulator.add_channel(channel)
        yield emulator


def with_password(url: str) -> str:
    """The URL with a sentinel password (the local server trusts, so it is never checked)."""
    parsed = sa.engine.make_url(url).set(password=DB_PASSWORD)
    return parsed.render_as_string(hide_password=False)


def environment(emu: SlackEmulator) -> dict[str, str]:
    return {
        **SECRETS,
        "SLACK_API_URL": emu.api_url,
        "AUDIT_CHANNEL": "C0AUDIT",
        "PAYMENT_URL": "https://pay.example/{number}",
    }


def serve_scenarios(base: str, emu: SlackEmulator, pg_url: str) -> None:
    """What users, Slack and attackers do to a running server, errors included."""
    slack = Slack(base, emu, secret=SECRETS["SLACK_SIGNING_SECRET"])
    try:
        slack.ask(DEV, "owed")
        slack.ask(STRANGER, "balance")
        slack.ask(DEV, "redeem WELCOME10 eng")
        slack.ask(ADMIN, "redeem WELCOME10 eng")
        question = slack.ask(ADMIN, "assign web ops")
        slack.click(ADMIN, buttons(question)["assign_confirm"], key="confirm")
        slack.answer("confirm")
        slack.ask(DEV, "invoice INV-2026-000002")
        slack.ask(DEV, "frobnicate <!channel>")
        slack.ask_dm(DEV, "help")
        emu.fail_next("users.info", error="invalid_auth")
        slack.ask(DEV, "credits")
        question = slack.ask(ADMIN, "assign web eng")
        emu.fail_next("response_url", status=500, times=3)  # the answer and its 2 retries
        slack.click(ADMIN, buttons(question)["assign_cancel"], key="cancelled")
        wait_for(
            lambda: len([c for c in emu.calls_to("response_url") if c.status == 500]) == 3,
            what="the failed answer",
        )
        emu.fail_next("chat.postMessage", error="token_revoked")
        slack.ask(ADMIN, "redeem WELCOME10 ops")
        engine = sa.create_engine(pg_url)
        try:
            with engine.begin() as conn:  # an unexpected error, logged in full
                conn.exec_driver_sql("ALTER TABLE credits RENAME TO credits_gone")
            slack.ask(DEV, "credits")
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE credits_gone RENAME TO credits")
        finally:
            engine.dispose()
        body = slack.command_body(ADMIN, "redeem WELCOME10 tokyo", key="forged")
        slack.post(body, content_type="application/json", signature="v0=" + "0" * 64)
        for raw in ("[" * 50_000, "{bad", "payload=[1]", "x" * (2 * 1024 * 1024)):
            try:  # a fresh connection each: the server may close it early (500, 413)
                httpx.post(base + "/slack/events", content=raw, timeout=30)
            except httpx.TransportError:
                pass
    finally:
        slack.close()
    bearer = {"Authorization": f"Bearer {SECRETS['BILLING_API_TOKEN']}"}
    # One connection per request: a 500 closes its connection, which is not under test here.
    with httpx.Client(base_url=base, timeout=30, headers={"Connection": "close"}) as http:
        http.post("/api/v1/usage", json=[], headers={"Authorization": "Bearer wrong"})
        event = factories.event("evt-s", "requests.GET", "5", "2026-03-09T00:00:00+00:00")
        http.post("/api/v1/usage", content=f"[{event}, 7, {{}}]", headers=bearer)
        http.post("/api/v1/payments", content="[" * 50_000, headers=bearer)
        http.get("/api/v1/invoices", params={"org": "acme", "format": "csv"}, headers=bearer)
        http.get("/api/v1/invoices/INV-2026-000002.pdf", headers=bearer)
        http.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})


@pytest.fixture
def served(
    pg_url: str, emu: SlackEmulator, start_cli: Callable[..., Run]
) -> Iterator[tuple[str, Run]]:
    port = free_port()
    server = start_cli(
        with_password(pg_url),
        "-v",
        "serve",
        "--port",
        str(port),
        "--no-scheduler",
        env=environment(emu),
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.process.poll() is None, server.finish()
        try:
            return httpx.get(base + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=TIMEOUT, what="billing-bot serve")
    yield base, server
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)


def cli_scenarios(zygote: Zygote, url: str, emu: SlackEmulator, tmp_path: Path) -> list[str]:
    """The operator's commands, verbose, with good and bad input and broken settings."""
    env = environment(emu)
    usage = tmp_path / "usage.jsonl"
    usage.write_text(
        factories.event("evt-c", "requests.GET", "5", "2026-03-09T00:00:00+00:00") + "\n{bad\n",
        encoding="utf-8",
    )
    payments = tmp_path / "payments.jsonl"
    payments.write_text(
        factories.payment("pay-s", "10.00", "2026-03-09T10:00:00+00:00") + "\n[1]\n",
        encoding="utf-8",
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"organizations": [{"key": 5}]}', encoding="utf-8")
    runs = [
        ("db", "upgrade"),
        ("load", str(bad)),
        ("usage", "import", str(usage)),
        ("payments", "import", str(payments)),
        ("run-billing", "--at", "2026-04-01T00:05:00+00:00"),
        ("remind", "--at", "2026-04-01T09:00:00+00:00", "--dry-run"),
        ("remind", "--at", "2026-04-01T09:00:00+00:00"),
        ("invoices", "--org", "acme", "--format", "csv"),
        ("check",),
    ]
    outputs = []
    emu.set_random_faults(seed=7, rate=0.4)  # reminders meet 429s, 500s and refusals
    for argv in runs:
        _, out, err = zygote.run(url, "-v", *argv, env=env)
        outputs += [out, err]
    emu.set_random_faults(seed=7, rate=0)
    emu.fail_next("chat.postMessage", error="invalid_auth", times=3)
    _, out, err = zygote.run(url, "-v", "remind", "--at", "2026-04-04T09:00:00+00:00", env=env)
    outputs += [out, err]
    _, out, err = zygote.run(
        url, "console", "--team", "T0ACME", "--user", DEV, env=env, stdin="owed\nredeem X\n"
    )
    return [*outputs, out, err]


def broken_settings(zygote: Zygote, url: str) -> list[str]:
    """Settings an operator gets wrong, each with a secret in it; the refusals are printed."""
    outputs = []
    pg = sa.engine.make_url(url)
    for broken in (
        pg.set(port=1).render_as_string(hide_password=False),
        pg.set(username="nobody").render_as_string(hide_password=False),
        pg.set(drivername="postgresql+nodriver").render_as_string(hide_password=False),
    ):
        _, out, err = zygote.run(broken, "-v", "check", env=SECRETS)
        outputs += [out, err]
    _, out, err = zygote.run(url, "serve", env={**SECRETS, "REMINDER_OFFSETS": "x"})
    return [*outputs, out, err]


def leaks(outputs: list[str]) -> list[str]:
    return [line for text in outputs for line in text.splitlines() if MARK.lower() in line.lower()]


def test_no_secret_appears_in_any_log_or_message(
    service: BillingService,
    pg_url: str,
    emu: SlackEmulator,
    served: tuple[str, Run],
    zygote: Zygote,
    tmp_path: Path,
) -> None:
    bill_acme(service)
    base, server = served
    serve_scenarios(base, emu, pg_url)
    outputs = cli_scenarios(zygote, with_password(pg_url), emu, tmp_path)
    outputs += broken_settings(zygote, with_password(pg_url))
    server.process.send_signal(signal.SIGTERM)
    _, out, err = server.finish()
    outputs += [out, err]

    logged = "\n".join(outputs)
    for expected in ("request failed (reference", "Traceback", "will retry", "database error"):
        assert expected in logged, f"the scenarios should have logged {expected!r}"
    assert emu.messages(), "the bot token was used (the emulator accepts only the sentinel)"
    assert not leaks(outputs), "\n".join(leaks(outputs))[:2000]


def test_a_mistyped_database_url_does_not_print_its_password(zygote: Zygote) -> None:
    code, out, err = zygote.run(f"postgresql//postgres:{DB_PASSWORD}@127.0.0.1/x", "check")
    assert code == 1
    assert not leaks([out, err]), err


def test_a_database_url_with_a_bad_port_fails_with_one_line(zygote: Zygote) -> None:
    url = f"postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:notaport/x"
    code, _, err = zygote.run(url, "check")
    assert code == 1
    assert "Traceback" not in err and err.startswith("billing-bot: ") and "DATABASE_URL" in err
