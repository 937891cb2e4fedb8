"""Run a product command as a subprocess: its wall time, exit code, output and peak memory.

Peak memory is the child's own ``ru_maxrss`` from ``os.wait4`` (Linux reports KiB): the
largest resident set the process reached, read by the kernel, no polling and no sampling gaps.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BILLING_BOT = ROOT / ".venv" / "bin" / "billing-bot"
PYTHON = ROOT / ".venv" / "bin" / "python"


@dataclass(frozen=True)
class Finished:
    argv: tuple[str, ...]
    code: int
    seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str

    def check(self) -> Finished:
        if self.code != 0:
            tail = (self.stderr or self.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"{' '.join(self.argv)} exited {self.code}: {' | '.join(tail)}")
        return self


def product_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment a user would give ``billing-bot``; nothing from the caller's .env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "DATABASE_", "BILLING_", "PAYMENT_", "AUDIT_"))
    }
    env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run(
    argv: list[str],
    *,
    env: dict[str, str],
    stdin_text: str | None = None,
    cwd: Path | None = None,
) -> Finished:
    """Run ``argv`` to completion and measure it (wall clock from spawn to reaped)."""
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8") as out,
        tempfile.TemporaryFile("w+", encoding="utf-8") as err,
        tempfile.TemporaryFile("w+", encoding="utf-8") as inp,
    ):
        if stdin_text is not None:
            inp.write(stdin_text)
            inp.seek(0)
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdin=inp if stdin_text is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd or _scratch(),
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Finished(
            tuple(argv), proc.returncode, seconds, usage.ru_maxrss / 1024, out.read(), err.read()
        )


def billing_bot(*args: str, env: dict[str, str], stdin_text: str | None = None) -> Finished:
    return run([str(BILLING_BOT), *args], env=env, stdin_text=stdin_text)


_SCRATCH: list[Path] = []


def use_scratch(path: Path) -> None:
    """Run the product in ``path`` (an empty directory), so no stray ``.env`` is read."""
    _SCRATCH[:] = [path]


def _scratch() -> Path:
    if not _SCRATCH:
        raise RuntimeError("call use_scratch() first")
    return _SCRATCH[0]
