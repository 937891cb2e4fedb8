"""``bench/run [--scale S] [--runs N] [--only NAME]``: build the dataset, run the benchmarks of
issue 5 on PostgreSQL and print one table (figure, target, floor, ratio, pass/fail).

Every database is created fresh as ``bench_<id>_*`` and dropped at the end. Progress goes to
stderr, the table to stdout. Figures are medians of ``--runs`` runs (3 by default), each with
its floor measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import bench_billing, bench_console, bench_fanout, bench_http, bench_import
from bench.build import World, build
from bench.emulator_proc import Emulator
from bench.memory import BILLING_BOT, PYTHON, ROOT, billing_bot, use_scratch
from bench.memory import run as run_process
from bench.pg import Cluster, server_version
from bench.report import Row, as_json, table

BENCHMARKS = ("import", "billing", "http", "fanout", "console")


def machine() -> str:
    memory = "?"
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(f.readline().split()[1])
            memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.node() or 'host'}: {os.cpu_count()} cores (nproc), {memory} RAM, "
        f"PostgreSQL {server_version()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full dataset")
    parser.add_argument("--runs", type=int, default=3, help="runs per benchmark (median)")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--json", type=Path, help="also write the rows and raw figures here")
    parser.add_argument(
        "--rss-baseline",
        type=Path,
        help="a --json file from a run at a quarter of this scale: judges run-billing's RSS growth",
    )
    parser.add_argument(
        "--profile", type=Path, help="write pyinstrument profiles of import and run-billing here"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: 1 history month, few requests and notices; checks the harness, not the figures",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases and work files")
    parser.add_argument(
        "--reuse",
        metavar="PREFIX",
        help="skip the build: clone PREFIX_base and PREFIX_import0, kept by an earlier "
        "--keep run at the same --scale in the same month (not with the import benchmark, "
        "whose events file is not kept)",
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if args.reuse and "import" in args.only:
        parser.error("--reuse cannot run the import benchmark: pass --only without import")
    if args.runs < 1 or args.scale <= 0:
        parser.error("--runs must be at least 1 and --scale more than 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {text}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-work-"))
    use_scratch(work)
    cluster = Cluster()
    emulator = Emulator(str(PYTHON))
    rows: list[Row] = []
    header = (
        f"bench/run --scale {args.scale:g} --runs {args.runs}{' --smoke' if args.smoke else ''}"
        f"{f' --reuse {args.reuse}' if args.reuse else ''}: "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}"
    )
    log(header)
    log(f"databases {cluster.prefix}_*, work files in {work}")
    try:
        world = World(
            cluster=cluster,
            scale=args.scale,
            work=work,
            emulator=emulator,
            log=log,
            smoke=args.smoke,
        )
        needs_data = bool({"import", "billing", "http", "console"} & set(args.only))
        ready = ""
        if needs_data and args.reuse:
            ready = reuse(world, args.reuse)
        elif needs_data:
            build(world)
            if "import" in args.only:
                log("benchmark 1: usage import")
                found, ready = bench_import.run(world, args.runs)
                rows += found
            else:
                ready = cluster.create("import0", template=world.base)
                billing_bot("usage", "import", str(world.events_file), env=world.env(ready)).check()
        if "http" in args.only:
            log("benchmark 3: /billing over HTTP")
            rows += bench_http.run(world, ready, args.runs)
        if "console" in args.only:
            log("benchmark 5: console start")
            rows += bench_console.run(world, ready, args.runs)
        if "billing" in args.only:
            log("benchmark 2: run-billing")
            baseline = _rss_baseline(args.rss_baseline)
            found, _billed = bench_billing.run(world, ready, args.runs, baseline)
            rows += found
        if "fanout" in args.only:
            log("benchmark 4: reminder fan-out")
            rows += bench_fanout.run(world, args.runs)
        if args.profile and needs_data:
            _profiles(world, ready, args.profile)
    finally:
        emulator.close()
        if not args.keep:
            cluster.drop_all()
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept databases {', '.join(cluster.created)} and {work}")
    log(f"done in {time.perf_counter() - started:.0f} s")
    print(header)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"header": header, "scale": args.scale, "rows": as_json(rows)}, indent=2),
            encoding="utf-8",
        )
    return 0


def reuse(world: World, prefix: str) -> str:
    """The kept ``base`` and ``import0`` of an earlier run: ``import0`` cloned as this run's
    ``ready``, ``base`` used as it is (nothing writes into it); the teams read back as
    ``build`` chose them (each organization's first member, its admin)."""
    base, kept = f"{prefix}_base", f"{prefix}_import0"
    for name in (base, kept):
        if not world.cluster.scalar(
            "postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ):
            raise SystemExit(f"--reuse {prefix}: there is no database {name}")
    world.base = base
    world.teams = [
        (team, user)
        for team, user in world.cluster.rows(
            base,
            "SELECT DISTINCT ON (o.id) o.slack_team_id, m.slack_user_id "
            "FROM organizations o JOIN members m ON m.organization_id = o.id ORDER BY o.id, m.id",
        )
    ]
    groups = world.cluster.scalar(base, "SELECT count(*) FROM billing_groups")
    if groups != world.sizes.groups:
        built = world.sizes.groups
        raise SystemExit(
            f"--reuse {prefix}: {groups} groups, --scale {world.scale:g} builds {built}"
        )
    world.log(f"reusing {base} and {kept} (no build): {len(world.teams)} organizations")
    return world.cluster.create("import0", template=kept)


def _rss_baseline(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    for row in data["rows"]:
        if row["key"] == "2b run-billing peak RSS":
            raw: dict[str, Any] = row["raw"]
            return raw
    raise SystemExit(f"{path} has no run-billing RSS figure")


def _profiles(world: World, ready: str, into: Path) -> None:
    """pyinstrument text reports: usage import, run-billing, one thread of /billing answers,
    and the reminder fan-out (when it ran)."""
    into.mkdir(parents=True, exist_ok=True)
    tool = str(ROOT / ".venv" / "bin" / "pyinstrument")
    scale = f"{world.scale:g}"

    def profile(name: str, template: str, argv: list[str], env: dict[str, str]) -> None:
        out = into / f"{name}-scale-{scale}.txt"
        world.log(f"profiling {name} into {out}")
        # psycopg's frames shown: time waiting on PostgreSQL vs. time in Python above it
        show = ["--show", "*/psycopg/*"]
        run_process([tool, "-r", "text", *show, "-o", str(out), *argv], env=env).check()

    db = world.cluster.create("profile", template=world.base)
    profile(
        "usage-import",
        world.base,
        [str(BILLING_BOT), "usage", "import", str(world.events_file)],
        world.env(db),
    )
    world.cluster.drop(db)
    db = world.cluster.create("profile", template=ready)
    at = world.calendar.billing_at.isoformat()
    profile("run-billing", ready, [str(BILLING_BOT), "run-billing", "--at", at], world.env(db))
    world.cluster.drop(db)

    numbers: dict[str, list[str]] = {}
    for team, number in world.cluster.rows(
        ready,
        "SELECT o.slack_team_id, i.number FROM invoices i "
        "JOIN organizations o ON o.id = i.organization_id",
    ):
        numbers.setdefault(team, []).append(number)
    teams = world.work / "teams.json"
    teams.write_text(
        json.dumps([[t, a, numbers.get(t, [])] for t, a in world.teams]), encoding="utf-8"
    )
    out = into / f"answers-scale-{scale}.txt"
    world.log(f"profiling /billing answers into {out}")
    env = world.env(ready, PYTHONPATH=str(ROOT))
    argv = [str(PYTHON), "-m", "bench.profile_handlers", "--out", str(out), "--teams", str(teams)]
    world.log("  " + run_process(argv, env=env).check().stdout.strip())

    if world.fanout_db:
        db = world.cluster.create("profile", template=world.fanout_db)
        world.emulator.ask("reset")
        argv = [str(BILLING_BOT), "remind", "--at", at]
        profile("remind", world.fanout_db, argv, world.slack_env(db))
        world.cluster.drop(db)


if __name__ == "__main__":
    sys.exit(main())
