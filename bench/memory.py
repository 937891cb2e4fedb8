"""Run a product command as a subprocess: its wall time, exit code, output and peak memory.

Peak memory is the command's own ``ru_maxrss`` from ``os.wait4`` (Linux reports KiB): the
largest resident set the process reached, read by the kernel, no polling and no sampling gaps.
The command is started by a small launcher (``_LAUNCHER``), not by this process: Linux records
the spawning process's resident high-water mark in the child's ``ru_maxrss`` at exec, so a
command spawned straight from this harness reported the harness's own peak whenever that was
higher (run-billing "peaked" at 165 MB at scale 0.5 where it reaches 94 MB, and at 451 MB at
full scale, the harness's size after writing 5 M events).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


# Spawns the command, waits for it and writes "seconds maxrss_kib exit_code" to argv[1]. Run
# with -I -S: no site packages, so its own high-water mark (what the command starts from) is
# a few MB, the same at every scale.
_LAUNCHER = """
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(out, "w") as f:
    f.write(f"{seconds!r} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


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
        tempfile.NamedTemporaryFile("r", encoding="utf-8", suffix=".measure") as measure,
    ):
        if stdin_text is not None:
            inp.write(stdin_text)
            inp.seek(0)
        launcher = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, measure.name, *argv],
            stdin=inp if stdin_text is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd or _scratch(),
            check=False,
        )
        figures = measure.read().split()
        out.seek(0)
        err.seek(0)
        if launcher.returncode != 0 or len(figures) != 3:
            raise RuntimeError(
                f"launching {' '.join(argv)} failed ({launcher.returncode}): {err.read()[-500:]}"
            )
        seconds, maxrss_kib, code = float(figures[0]), int(figures[1]), int(figures[2])
        return Finished(tuple(argv), code, seconds, maxrss_kib / 1024, out.read(), err.read())


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
