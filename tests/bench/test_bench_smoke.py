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
