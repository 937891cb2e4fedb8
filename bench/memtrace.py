"""Where ``run-billing``'s memory goes: RSS, Python heap and malloc arenas, batch by batch.

``python -m bench.memtrace DATABASE_URL AT [--trace] [--top N]`` runs ``BillingService.run_billing``
in this process (against a copy of a bench database: it issues the invoices) and prints, after
the due-period listing and after every batch, the current RSS, what Python's allocators hold
(tracemalloc, with ``--trace``) and what glibc's malloc holds (``mallinfo2``). With ``--trace``
it also prints the allocation sites that grew most between the first full batch and the end.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime
from typing import Any

from billing_core import batch, issuing
from billing_core.db.engine import Database
from billing_core.services import BillingService


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _pymalloc() -> tuple[float, float, float]:
    """pymalloc's arenas now, their high-water mark and the bytes in use in them, in MB."""
    with tempfile.TemporaryFile("w+") as out:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    facts = {}
    for line in text.splitlines():
        if "=" in line and line.startswith("#"):
            key, _, value = line.partition("=")
            facts[key.strip("# ").strip()] = int(value.strip().replace(",", ""))
    mb = 2**20
    return (
        facts["arenas allocated current"] * 2**20 / mb,
        facts["arenas highwater mark"] * 2**20 / mb,
        facts["bytes in allocated blocks"] / mb,
    )


def _line(label: str) -> str:
    m = _libc.mallinfo2()
    arenas, high, used = _pymalloc()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    traced = ""
    if tracemalloc.is_tracing():
        cur, top = tracemalloc.get_traced_memory()
        traced = f" py {cur / 2**20:7.1f} MB (peak {top / 2**20:7.1f})"
    return (
        f"{label:<22} rss {_rss_mb():7.1f} MB (peak {peak:7.1f}){traced}"
        f" malloc in use {m.uordblks / 2**20:7.1f} MB free {m.fordblks / 2**20:7.1f} MB"
        f" mmap {m.hblkhd / 2**20:7.1f} MB; pymalloc arenas {arenas:5.0f} MB (high {high:5.0f})"
        f" in use {used:6.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("at")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.trace:
        tracemalloc.start(12)
    print(_line("start"), flush=True)

    snapshots: dict[str, Any] = {}
    due_periods = issuing.due_periods

    def traced_due(session: Any, at: datetime) -> Any:
        due = due_periods(session, at)
        print(_line(f"due_periods ({len(due)})"), flush=True)
        return due

    close_batch = batch.close_batch
    count = [0, 0]

    def traced_batch(session: Any, items: Any, **kw: Any) -> Any:
        result = close_batch(session, items, **kw)
        count[0] += 1
        count[1] += result[0]
        print(_line(f"batch {count[0]} ({count[1]})"), flush=True)
        if args.trace and len(items) == batch.BATCH_SIZE and "first" not in snapshots:
            snapshots["first"] = tracemalloc.take_snapshot()
        return result

    issuing.due_periods = traced_due
    batch.close_batch = traced_batch
    started = time.perf_counter()
    report = BillingService(Database(args.url)).run_billing(at=datetime.fromisoformat(args.at))
    print(_line("run done"), f"{time.perf_counter() - started:.1f} s", report.describe())
    if args.trace:
        end = tracemalloc.take_snapshot()
        base = snapshots.get("first")
        stats = end.compare_to(base, "traceback") if base else end.statistics("traceback")
        for stat in stats[: args.top]:
            print(stat)
            for frame in stat.traceback.format()[-12:]:
                print("    ", frame)


if __name__ == "__main__":
    main()
