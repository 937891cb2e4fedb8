"""``billing-bot console`` and ``billing-bot demo``, run as the user would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from billing_core.services import BillingService
from tests.slack.conftest import ADMIN, DEV, PAYMENT_URL, audit_log, project_group
from tests.slack.slackside import plain_spaces

AT = "2026-03-10T12:00:00+00:00"


def environment(**values: str) -> dict[str, str]:
    """The caller's environment without billing settings, plus ``values``."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "DATABASE_", "PAYMENT_", "AUDIT_", "DEFAULT_LOCALE"))
    }
    return {**keep, **values}


def console(
    db_url: str, user: str, lines: list[str], cwd: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "console",
            "--team",
            "T0ACME",
            "--user",
            user,
            "--at",
            AT,
            *extra,
        ],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment(DATABASE_URL=db_url, PAYMENT_URL=PAYMENT_URL),
        timeout=120,
        check=False,
    )


def test_console_answers_commands_and_buttons_typed_on_stdin(
    billed: BillingService, db_url: str, tmp_path: Path
) -> None:
    done = console(
        db_url,
        ADMIN,
        [
            "/billing owed",
            "invoice INV-2026-000002",
            "assign web ops",
            "confirm",
            "confirm",
            "balance nope",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = plain_spaces(done.stdout)
    assert "> /billing owed\nEngineering (`eng`): €1,469.06 unpaid" in out
    assert "[Pay €1,469.06: https://pay.example.test/invoices/INV-2026-000002]" in out
    assert "Move project `web` from `eng` to `ops`?" in out
    assert "[confirm] [cancel]" in out
    assert "✓ Project `web` moved from `eng` to `ops`." in out
    assert "> confirm\n✗ No question is waiting for `confirm`." in out
    assert "✗ There is no billing group `nope`.\nGroups: eng, ops, tokyo." in out
    assert done.stderr == ""
    assert project_group(billed, "web") == "ops"
    assert audit_log(billed) == [(ADMIN, "project.assign", "acme/web")]


def test_console_cancel_and_refusals(billed: BillingService, db_url: str, tmp_path: Path) -> None:
    done = console(db_url, DEV, ["balance", "assign web ops", "redeem WELCOME10 eng"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = plain_spaces(done.stdout)
    assert "Due if invoiced now: €119.00" in out, "the organization's locale (en_US)"
    assert out.count("Only organization admins can change billing.") == 2
    cancelled = console(db_url, ADMIN, ["assign web ops", "cancel"], tmp_path, "--locale", "de-DE")
    assert "Cancelled: project `web` stays in `eng`." in cancelled.stdout
    assert project_group(billed, "web") == "eng"


def test_console_rejects_an_unknown_locale(tmp_path: Path) -> None:
    done = console(f"sqlite:///{tmp_path}/none.db", ADMIN, ["owed"], tmp_path, "--locale", "xx")
    assert done.returncode == 1
    assert done.stderr.strip() == "billing-bot: --locale 'xx' is not a locale (try de_DE or en-US)"


@pytest.mark.slow
def test_demo_ends_with_the_console_rendering_and_how_to_try_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "demo", "--at", AT],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = plain_spaces(done.stdout)
    assert "/billing balance\nEngineering (`eng`)" in out
    assert "Due if invoiced now:" in out
    assert "/billing invoices\n`INV-2026-" in out
    assert out.rstrip().endswith("billing-bot console --team T0DEMO --user U0DEMOADMIN")
    assert (tmp_path / "billing.db").is_file()
