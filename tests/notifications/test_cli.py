"""``billing-bot remind``: dry runs, real runs, and two processes at once on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.cli import main
from tests.notifications.conftest import (
    CHANNEL,
    PAY,
    TOKEN,
    USER,
    acme,
    berlin,
    keys,
    sqlite_only,
    states,
    usage,
)
from tests.slack_emulator import SlackEmulator

ROOT = Path(__file__).resolve().parents[2]
AT = "2026-11-01T00:05:00+01:00"


def environment(settings: Settings) -> dict[str, str]:
    return {
        "DATABASE_URL": settings.database_url,
        "SLACK_API_URL": settings.slack_api_url,
        "SLACK_BOT_TOKEN": TOKEN,
        "PAYMENT_URL": PAY,
        "REMINDER_OFFSETS": "-3,0,3,7",
    }


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = environment(settings)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AUDIT_CHANNEL", "DEFAULT_LOCALE"):
        monkeypatch.delenv(name, raising=False)
    return env


@sqlite_only
def test_dry_run_prints_what_would_be_sent_and_sends_nothing(
    billed: BillingService,
    cli_env: dict[str, str],
    emu: SlackEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["remind", "--dry-run", "--at", AT]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"would send INV-2026-000001/issued/user:{USER} to user {USER} in de_DE:"
    assert out[1].startswith("    New invoice INV-2026-000001: Engineering, period 01.10.2026")
    assert "amount due 4,00\xa0€, due 15.11.2026. Pay: https://pay.example/invoices/" in out[1]
    assert out[2] == (
        f"would send INV-2026-000001/issued/channel:{CHANNEL} to channel {CHANNEL} in de_DE:"
    )
    assert (
        out[-1]
        == "dry run: 2 messages would be sent, 0 steps skipped; nothing was sent or recorded"
    )
    assert emu.calls_to("chat.postMessage") == [] and emu.calls_to("conversations.open") == []
    assert states(billed) == {}

    # What it printed is what a real run then sends.
    assert main(["remind", "--at", AT]) == 0
    real = capsys.readouterr().out.splitlines()
    assert real[:2] == [
        f"sent INV-2026-000001/issued/user:{USER}",
        f"sent INV-2026-000001/issued/channel:{CHANNEL}",
    ]
    assert emu.messages("D" + USER)[0]["text"] == out[1].strip()
    assert main(["remind", "--dry-run", "--at", AT]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "dry run: 0 messages would be sent, 0 steps skipped; nothing was sent or recorded"
    ]


@sqlite_only
def test_dry_run_after_downtime_names_the_skipped_steps(
    billed: BillingService,
    cli_env: dict[str, str],
    emu: SlackEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["remind", "--dry-run", "--at", "2026-11-20T12:00:00+01:00"]) == 0
    out = capsys.readouterr().out
    assert f"would send INV-2026-000001/due+3/user:{USER} to user {USER} in de_DE:" in out
    assert "Reminder: invoice INV-2026-000001 is 5 days overdue" in out
    assert f"would skip INV-2026-000001/due-3/user:{USER}: missed; only the latest step" in out
    assert f"would skip INV-2026-000001/issued/user:{USER}: merged into due+3" in out
    assert emu.calls_to("chat.postMessage") == [] and states(billed) == {}


@sqlite_only
def test_remind_needs_a_bot_token_and_a_proper_time(
    billed: BillingService,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["remind", "--at", "2026-11-01T00:05:00"]) == 1
    assert "has no UTC offset" in capsys.readouterr().err
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    assert main(["remind", "--at", AT]) == 1
    assert "SLACK_BOT_TOKEN is required" in capsys.readouterr().err
    assert main(["remind", "--dry-run", "--at", AT]) == 0  # a dry run needs no Slack
    assert "in de_DE" in capsys.readouterr().out


@pytest.mark.slow
def test_two_remind_processes_at_once_send_each_message_once(
    pg_url: str, emu: SlackEmulator, tmp_path: Path
) -> None:
    from billing_core.db.engine import Database

    channels = [f"C0TEAM{i:02d}" for i in range(16)]
    for channel in channels:
        emu.add_channel(channel)
    emu.set_random_faults(seed=5, rate=0.1, kinds=("500",))
    service = BillingService(Database(pg_url))
    try:
        contacts = [{"slack_user_id": USER}] + [{"slack_channel_id": c} for c in channels]
        service.load(acme(contacts=contacts), at=berlin("2026-10-01T00:00:00+02:00"))
        service.import_usage([usage("2026-10")])
        service.run_billing(at=berlin(AT))
        settings = Settings(database_url=pg_url, slack_api_url=emu.api_url)
        env = {**os.environ, **environment(settings), "PYTHONPATH": str(ROOT)}
        env.pop("AUDIT_CHANNEL", None)
        command = [sys.executable, "-m", "bot.cli", "remind", "--at", AT]
        # Both start together and race for the same 17 rows.
        procs = [
            subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=60) for p in procs]
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err.decode()
        sent = [
            line
            for out, _ in outputs
            for line in out.decode().splitlines()
            if line.startswith("sent ")
        ]
        assert len(sent) == len(set(sent))
        emu.set_random_faults(seed=0, rate=0)
        # Failed tries wait 30 s; let a later run finish them, then count.
        later = "2026-11-01T00:10:00+01:00"
        subprocess.run(
            [sys.executable, "-m", "bot.cli", "remind", "--at", later],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        delivered = Counter(k for c in ["D" + USER, *channels] for k in keys(emu, c))
        assert len(delivered) == 1 + len(channels)
        assert set(delivered.values()) == {1}
        assert set(states(service).values()) == {"sent"}
    finally:
        service.db.dispose()
