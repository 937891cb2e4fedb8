"""bench/memory.py measures the command, not the harness that started it."""

from __future__ import annotations

from pathlib import Path

from bench import memory

BALLAST_MB = 200


def test_a_commands_peak_rss_leaves_out_the_harness(tmp_path: Path) -> None:
    # Linux records the spawning process's resident high-water mark in a forked child's
    # ru_maxrss: a command spawned straight from a big harness "peaked" at the harness's size.
    ballast = bytearray(BALLAST_MB * 2**20)
    ballast[:: 2**12] = b"x" * len(ballast[:: 2**12])  # touch every page: resident
    memory.use_scratch(tmp_path)
    done = memory.run(
        [str(memory.PYTHON), "-c", "import sys; print(sys.stdin.read()); sys.exit(3)"],
        env={},
        stdin_text="in",
    )
    assert (done.code, done.stdout) == (3, "in\n")
    assert done.peak_rss_mb < BALLAST_MB / 4, done.peak_rss_mb
    assert done.seconds > 0
    del ballast
