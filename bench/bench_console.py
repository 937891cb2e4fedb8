"""Benchmark 5: ``billing-bot console`` answers its first command within 1 s of start.

The figure: from spawning ``billing-bot console --team T --user U`` with ``balance`` on its
stdin to the last byte of its answer on stdout (stdin then ends and the console exits; the exit
is not counted). The floor, timed the same way: ``billing-bot console --help``, the same program
started up to its argument parser, without a database or a command, so the ratio shows what the
first command costs on top of starting.
"""

from __future__ import annotations

import os
import random
import subprocess
import time

from bench.build import World
from bench.memory import BILLING_BOT
from bench.report import Row, median, secs, times

TARGET_SECONDS = 1.0
FIRST_COMMAND = "balance"


def _until_output(world: World, db: str, argv: list[str], stdin: bytes) -> tuple[float, str]:
    """Seconds from spawn to the last byte written on stdout, and that output."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=world.env(db),
        cwd=world.work,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    chunks: list[bytes] = []
    last = started
    while chunk := os.read(proc.stdout.fileno(), 65536):
        chunks.append(chunk)
        last = time.perf_counter()
    proc.wait(timeout=60)
    proc.stdout.close()
    return last - started, b"".join(chunks).decode("utf-8", "replace")


def run(world: World, db: str, runs: int) -> list[Row]:
    rng = random.Random(5)
    answers: list[float] = []
    starts: list[float] = []
    sample = ""
    for i in range(runs if world.smoke else max(runs, 3)):
        team, user = rng.choice(world.teams)
        argv = [str(BILLING_BOT), "console", "--team", team, "--user", user]
        seconds, text = _until_output(world, db, argv, FIRST_COMMAND.encode() + b"\n")
        if "no_entry_sign" in text or "went wrong" in text or len(text.splitlines()) < 3:
            raise RuntimeError(f"console did not answer {FIRST_COMMAND!r}: {text[:300]!r}")
        answers.append(seconds)
        sample = text
        floor, _ = _until_output(world, db, [str(BILLING_BOT), "console", "--help"], b"")
        starts.append(floor)
        world.log(f"  console run {i + 1}: first answer {seconds:.3f} s, --help {floor:.3f} s")
    figure, floor = median(answers), median(starts)
    return [
        Row(
            key="5 console first answer",
            figure=secs(figure),
            target=f"<= {TARGET_SECONDS:g} s",
            floor=f"console --help {secs(floor)}",
            ratio=times(figure / floor),
            ok=figure <= TARGET_SECONDS,
            note=(
                f"first command `{FIRST_COMMAND}`, answer of {len(sample.splitlines())} lines; "
                f"runs {'/'.join(f'{a:.2f}' for a in answers)} s"
            ),
            raw={"answer_s": answers, "help_s": starts},
        )
    ]
