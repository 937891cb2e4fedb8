"""bench/run keeps working: a tiny run on PostgreSQL prints every benchmark's row.

No timing is asserted: on a shared CI machine at this scale the figures mean nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, require_postgres

ROOT = Path(__file__).resolve().parents[2]
ROWS = (
    "1 usage import",
    "2a run-billing wall",
    "2b run-billing peak RSS",
    "3 balance p50",
    "3 balance p99",
    "3 owed p50",
    "3 owed p99",
    "3 invoices p50",
    "3 invoices p99",
    "3 invoice N p50",
    "3 invoice N p99",
    "3 one client alone p50",
    "3 server CPU per request",
    "3 serve HTTP ack p50/p99",
    "4a fan-out, instant Slack",
    "4b fan-out, 1 msg/s/channel",
    "5 console first answer",
)


@pytest.mark.postgres
@pytest.mark.slow
def test_bench_run_prints_every_row_and_drops_its_databases(tmp_path: Path) -> None:
    require_postgres()
    out = tmp_path / "rows.json"
    argv = [str(ROOT / "bench" / "run"), "--scale", "0.001", "--runs", "1", "--smoke"]
    done = subprocess.run(
        [*argv, "--json", str(out)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for key in ROWS:
        assert re.search(rf"^\| {re.escape(key)} +\|", done.stdout, re.M), done.stdout
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert sorted(r["key"] for r in rows) == sorted(ROWS)
    for row in rows:
        assert row["ok"] in (True, False, None)
        assert row["figure"] and row["target"] and row["floor"]

    prefix = re.search(r"databases (bench_[0-9a-f]+)_\*", done.stderr)
    assert prefix, done.stderr[:2000]
    engine = sa.create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT datname FROM pg_database WHERE starts_with(datname, :p)"),
            {"p": prefix.group(1)},
        ).all()
    engine.dispose()
    assert left == []


def _databases(prefix: str) -> list[str]:
    engine = sa.create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        names = conn.execute(
            sa.text("SELECT datname FROM pg_database WHERE starts_with(datname, :p)"),
            {"p": prefix},
        ).scalars()
        found = sorted(names)
    engine.dispose()
    return found


@pytest.mark.postgres
@pytest.mark.slow
def test_bench_run_reuses_a_kept_dataset_without_building_it(tmp_path: Path) -> None:
    require_postgres()
    small = ["--scale", "0.001", "--runs", "1", "--smoke"]
    run = [str(ROOT / "bench" / "run"), *small]
    kept = subprocess.run(
        [*run, "--only", "console", "--keep"], capture_output=True, text=True, timeout=600
    )
    assert kept.returncode == 0, kept.stderr[-3000:]
    found = re.search(r"databases (bench_[0-9a-f]+)_\*", kept.stderr)
    assert found, kept.stderr[:2000]
    prefix = found.group(1)
    try:
        assert _databases(prefix) == [f"{prefix}_base", f"{prefix}_import0"]
        again = subprocess.run(
            [*run, "--only", "billing,console", "--reuse", prefix],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"reusing {prefix}_base" in again.stderr
        assert "dataset at scale" not in again.stderr  # nothing was built
        for key in ("2a run-billing wall", "5 console first answer"):
            assert re.search(rf"^\| {re.escape(key)} +\|", again.stdout, re.M), again.stdout
        assert f"--reuse {prefix}" in again.stdout  # the table says where its data came from
        assert _databases(prefix) == [f"{prefix}_base", f"{prefix}_import0"]  # left as they were

        refused = subprocess.run(
            [*run, "--only", "import", "--reuse", prefix], capture_output=True, text=True
        )
        assert refused.returncode == 2 and "--reuse cannot run the import" in refused.stderr
        other = subprocess.run(
            [*run[:1], "--scale", "0.5", "--only", "billing", "--reuse", prefix],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert other.returncode != 0 and "builds 10000" in other.stderr
    finally:
        engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in _databases(prefix):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
