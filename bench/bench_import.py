"""Benchmark 1: ``billing-bot usage import`` of the period's events, against a raw COPY.

Each run clones ``base`` (the dataset without the period's events) and imports the same
JSON Lines file with the product's command. The floor: the very rows the import stored
(resolved ids and all) loaded with one ``COPY usage_events FROM STDIN`` into the same table,
indexes and foreign keys included, of another clone of ``base``.
"""

from __future__ import annotations

import time

from bench.build import World
from bench.memory import billing_bot
from bench.report import Row, median, rate, secs, times

COLUMNS = "event_id, project_id, billing_group_id, metric, quantity, ts"
TARGET_RATE = 50_000
TARGET_RATIO = 3.0


def _accepted(stdout: str) -> int:
    line = next((x for x in stdout.splitlines() if " events accepted" in x), "")
    head = line.split(" events accepted")[0].strip()
    return int(head) if head.isdigit() else -1


def run(world: World, runs: int) -> tuple[list[Row], str]:
    """The rows of benchmark 1 and the name of a database holding the imported period."""
    events = world.sizes.events
    import_seconds: list[float] = []
    keep = ""
    for i in range(runs):
        db = world.cluster.create(f"import{i}", template=world.base)
        done = billing_bot("usage", "import", str(world.events_file), env=world.env(db)).check()
        accepted = _accepted(done.stdout)
        if accepted != events:
            raise RuntimeError(f"usage import accepted {accepted} of {events} events")
        import_seconds.append(done.seconds)
        world.log(
            f"  usage import run {i + 1}: {done.seconds:.2f} s, {events / done.seconds:,.0f}/s"
        )
        if keep:
            world.cluster.drop(keep)
        keep = db

    copy_file = world.work / "events.copy"
    with world.cluster.connect(keep) as conn, copy_file.open("wb") as out:
        with conn.cursor().copy(
            f"COPY (SELECT {COLUMNS} FROM usage_events WHERE ts >= %s ORDER BY id) TO STDOUT",  # noqa: S608
            (world.calendar.billed_start,),
        ) as copy:
            for chunk in copy:
                out.write(chunk)
    copy_seconds: list[float] = []
    for i in range(runs):
        db = world.cluster.create(f"copy{i}", template=world.base)
        with world.cluster.connect(db) as conn:
            started = time.perf_counter()
            with conn.cursor().copy(f"COPY usage_events ({COLUMNS}) FROM STDIN") as copy:
                with copy_file.open("rb") as source:
                    while block := source.read(1 << 20):
                        copy.write(block)
            conn.commit()
            copy_seconds.append(time.perf_counter() - started)
        world.cluster.drop(db)
        world.log(f"  raw COPY run {i + 1}: {copy_seconds[-1]:.2f} s")
    copy_file.unlink()

    t_import, t_copy = median(import_seconds), median(copy_seconds)
    got, floor = events / t_import, events / t_copy
    ratio = t_import / t_copy
    row = Row(
        key="1 usage import",
        figure=f"{rate(got, 'ev')} ({secs(t_import)})",
        target=f">= {TARGET_RATE:,} ev/s, <= {TARGET_RATIO:g}x COPY",
        floor=f"COPY {rate(floor, 'ev')} ({secs(t_copy)})",
        ratio=times(ratio),
        ok=got >= TARGET_RATE and ratio <= TARGET_RATIO,
        note=(
            f"{events:,} events; import runs {_list(import_seconds)}, "
            f"COPY runs {_list(copy_seconds)}"
        ),
        raw={"events": events, "import_s": import_seconds, "copy_s": copy_seconds},
    )
    return [row], keep


def _list(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values) + " s"
