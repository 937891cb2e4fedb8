"""Benchmark 2: ``billing-bot run-billing`` on the 1st, against one hand-written SQL query.

Each run clones the database with the period's events imported (benchmark 1's) and closes
the period for every group: wall time and peak RSS (``ru_maxrss`` of the process). The floor:
one GROUP BY over the same events (the ones the run settles: not settled yet, before ``--at``),
every row fetched by the client, run on the same data in the same benchmark.
"""

from __future__ import annotations

import time
from typing import Any

from bench.build import World
from bench.memory import billing_bot
from bench.report import Row, median, secs, times

TARGET_SECONDS = 60.0
TARGET_RATIO = 3.0
TARGET_RSS_MB = 500.0
RSS_GROWTH_TOLERANCE = 1.25  # "does not grow": within 25 % of the run at a quarter of the scale

# The events a run settles: before --at and outside what each group's last close settled
# (its watermark corner: id <= usage_upto and ts < period_end, see billing_core.claims).
FLOOR_SQL = """
SELECT e.billing_group_id, e.project_id, e.metric, sum(e.quantity), max(e.quantity), count(*)
FROM usage_events e
LEFT JOIN (
    SELECT DISTINCT ON (billing_group_id) billing_group_id, usage_upto, period_end
    FROM period_closes ORDER BY billing_group_id, period_end DESC
) c ON c.billing_group_id = e.billing_group_id
WHERE e.ts < %s AND (c.usage_upto IS NULL OR e.id > c.usage_upto OR e.ts >= c.period_end)
GROUP BY e.billing_group_id, e.project_id, e.metric
"""


def _issued(stdout: str) -> int:
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    head = last.split(" invoices issued")[0]
    return int(head) if head.isdigit() else -1


def run(
    world: World, ready: str, runs: int, rss_baseline: dict[str, Any] | None
) -> tuple[list[Row], str]:
    at = world.calendar.billing_at
    floor_seconds: list[float] = []
    groups_rows = 0
    for i in range(runs):
        with world.cluster.connect(ready) as conn:
            started = time.perf_counter()
            rows = conn.execute(FLOOR_SQL, (at,)).fetchall()
            floor_seconds.append(time.perf_counter() - started)
        groups_rows = len(rows)
        world.log(f"  SQL aggregation run {i + 1}: {floor_seconds[-1]:.3f} s, {groups_rows} rows")

    wall: list[float] = []
    rss: list[float] = []
    issued: list[int] = []
    keep = ""
    for i in range(runs):
        db = world.cluster.create(f"billing{i}", template=ready)
        done = billing_bot("run-billing", "--at", at.isoformat(), env=world.env(db)).check()
        wall.append(done.seconds)
        rss.append(done.peak_rss_mb)
        issued.append(_issued(done.stdout))
        world.log(
            f"  run-billing run {i + 1}: {done.seconds:.2f} s, peak RSS {done.peak_rss_mb:.0f} MB, "
            f"{issued[-1]} invoices"
        )
        if keep:
            world.cluster.drop(keep)
        keep = db

    t_run, t_sql = median(wall), median(floor_seconds)
    ratio = t_run / t_sql
    groups = world.sizes.groups
    rows = [
        Row(
            key="2a run-billing wall",
            figure=f"{secs(t_run)} ({groups / t_run:,.0f} groups/s)",
            target=f"<= {TARGET_SECONDS:g} s, <= {TARGET_RATIO:g}x SQL",
            floor=f"SQL GROUP BY {secs(t_sql)}",
            ratio=times(ratio),
            ok=t_run <= TARGET_SECONDS and ratio <= TARGET_RATIO,
            note=(
                f"{groups:,} groups, {median(issued):.0f} invoices issued per run; "
                f"runs {'/'.join(f'{w:.2f}' for w in wall)} s; SQL returned {groups_rows:,} rows"
            ),
            raw={"wall_s": wall, "sql_s": floor_seconds, "issued": issued, "groups": groups},
        )
    ]
    peak = max(rss)
    if rss_baseline:
        base_mb = float(rss_baseline["peak_rss_mb"])
        growth = peak / base_mb
        floor = f"{base_mb:.0f} MB at scale {rss_baseline['scale']:g}"
        ok = peak < TARGET_RSS_MB and growth <= RSS_GROWTH_TOLERANCE
        ratio_text = times(growth)
        note = f"growth judged against --rss-baseline (at most {RSS_GROWTH_TOLERANCE:g}x)"
    else:
        floor, ratio_text, ok = "no baseline given", "-", peak < TARGET_RSS_MB
        note = "growth not judged in this run: pass --rss-baseline with a run at scale/4"
    rows.append(
        Row(
            key="2b run-billing peak RSS",
            figure=f"{peak:.0f} MB",
            target=f"< {TARGET_RSS_MB:g} MB, flat in groups",
            floor=floor,
            ratio=ratio_text,
            ok=ok,
            note=note,
            raw={"peak_rss_mb": peak, "runs_mb": rss, "scale": world.scale},
        )
    )
    return rows, keep
