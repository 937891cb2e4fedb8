"""``run-billing`` on PostgreSQL: overlapping runs and a run killed half way.

Both tests synchronise on the billing group row lock that ``close_period`` takes first
(``billing_core.ledger.lock_group``): the test holds it from another connection and watches
``pg_stat_activity`` until the subprocesses wait on it. No sleeps decide an outcome; every wait
polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa

from billing_core import issuing
from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.periods import Period
from billing_core.services import BillingService
from billing_core.settings import Settings
from tests.conftest import new_database_url
from tests.factories import at, document, event

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BILLING_BOT = Path(sys.executable).with_name("billing-bot")
RUN_AT = "2026-03-01T12:00:00+00:00"
TIMEOUT = 120.0  # seconds, for any one subprocess or wait
SETTINGS_VARIABLES = {f.name.upper() for f in fields(Settings)}

# Organizations in different time zones, so period ends (the run's order) interleave them.
ZONES = (
    ("tokyo", "Asia/Tokyo", "+09:00"),
    ("berlin", "Europe/Berlin", "+01:00"),
    ("london", "UTC", "+00:00"),
    ("newyork", "America/New_York", "-05:00"),
)
GROUPS_PER_ORG = 15


def dataset() -> tuple[dict[str, Any], list[str]]:
    """60 billing groups in 4 organizations, with two months of usage, a plan and credits."""
    doc = document(
        plans=[
            {
                "key": "pro",
                "name": "Pro",
                "price_list": "standard-eur",
                "monthly_fee": "49.00",
                "included": {"requests.GET": "5000000"},
            }
        ]
    )
    doc["organizations"] = []
    usage: list[str] = []
    for number, (org_key, tz, offset) in enumerate(ZONES):
        groups, projects, credits = [], [], []
        for g in range(GROUPS_PER_ORG):
            key = f"g{g:02d}"
            group: dict[str, Any] = {
                "key": key,
                "name": f"Group {g}",
                "price_list": "standard-eur",
                "payment_method": "card",
                "created_at": f"2026-01-01T00:00:00{offset}",
                "tax_rate": "0.19" if g % 2 else None,
            }
            if g % 5 == 0:  # anniversary periods: Jan 1-15, Jan 15-Feb 15, ...
                group["subscription"] = {"plan": "pro", "start": f"2026-01-15T00:00:00{offset}"}
            if g % 7 == 0:
                credits.append({"billing_group": key, "amount": "3.00", "key": f"c{g}"})
            groups.append(group)
            for p in ("a", "b"):
                project = f"{key}{p}"
                projects.append({"key": project, "name": project, "billing_group": key})
                ref = f"{org_key}/{project}"
                seed = number * 1000 + g * 10 + (p == "b")
                usage.append(
                    event(
                        f"{ref}-jan-get",
                        "requests.GET",
                        str(1_000_000 + seed * 7_919),
                        f"2026-01-10T12:00:00{offset}",
                        project=ref,
                    )
                )
                usage.append(
                    event(
                        f"{ref}-jan-gb",
                        "storage.gb",
                        str(10 + seed % 37),
                        f"2026-01-12T12:00:00{offset}",
                        project=ref,
                    )
                )
                if g % 3:  # a third of the groups use nothing in February
                    usage.append(
                        event(
                            f"{ref}-feb-tx",
                            "transfer.gb",
                            str(90 + seed % 50),
                            f"2026-02-10T12:00:00{offset}",
                            project=ref,
                        )
                    )
        doc["organizations"].append(
            {
                "key": org_key,
                "name": org_key.title(),
                "slack_team_id": f"T{number}",
                "timezone": tz,
                "members": [{"slack_user_id": "U0ADMIN", "role": "admin"}],
                "billing_groups": groups,
                "projects": projects,
                "credits": credits,
            }
        )
    return doc, usage


def prepare(url: str) -> None:
    database = Database(url)
    try:
        service = BillingService(database)
        doc, usage = dataset()
        service.load(doc, at=at("2026-01-01T00:00:00+00:00"))
        report = service.import_usage(usage)
        assert report.ok and report.accepted == len(usage)
    finally:
        database.dispose()


def export_all(url: str) -> list[dict[str, Any]]:
    database = Database(url)
    try:
        service = BillingService(database)
        return [doc for org_key, *_ in ZONES for doc in service.export_invoices(org_key=org_key)]
    finally:
        database.dispose()


def without_numbers(documents: list[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    return {
        (d["organization"], d["billing_group"], d["period_start"]): {
            k: v for k, v in d.items() if k != "number"
        }
        for d in documents
    }


def gapless(count: int) -> list[str]:
    return [f"INV-2026-{n:06d}" for n in range(1, count + 1)]


@dataclass
class Run:
    """A ``billing-bot run-billing`` subprocess with its output in files."""

    process: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]

    def finish(self) -> tuple[int, str, str]:
        code = self.process.wait(timeout=TIMEOUT)
        self.out.seek(0)
        self.err.seek(0)
        return code, self.out.read().decode(), self.err.read().decode()


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[[str], Run]]:
    """Start ``billing-bot run-billing --at RUN_AT`` on a database; killed if left running."""
    assert BILLING_BOT.is_file(), f"the console script is not installed at {BILLING_BOT}"
    runs: list[Run] = []

    def start(url: str) -> Run:
        env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
        env["DATABASE_URL"] = url
        index = len(runs)
        out = (tmp_path / f"run{index}.out").open("w+b")
        err = (tmp_path / f"run{index}.err").open("w+b")
        process = subprocess.Popen(
            [str(BILLING_BOT), "run-billing", "--at", RUN_AT],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
        )
        runs.append(Run(process, out, err))
        return runs[-1]

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
        run.process.wait(timeout=TIMEOUT)
        run.out.close()
        run.err.close()


def wait_for(condition: Callable[[], bool], what: str, runs: list[Run]) -> None:
    """Poll ``condition`` until it holds; fail early if a run ended, or at the deadline."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        for run in runs:
            if run.process.poll() is not None:
                code, out, err = run.finish()
                pytest.fail(f"a run ended (exit {code}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.05)


@contextmanager
def group_locked(engine: sa.Engine, group_id: int) -> Iterator[None]:
    """Hold the billing group's row lock, as a close of that group would, until the block ends."""
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(
                sa.text("SELECT 1 FROM billing_groups WHERE id = :id FOR UPDATE"), {"id": group_id}
            )
            yield


def lock_waiters(engine: sa.Engine) -> list[int]:
    """Backends of this database waiting for a lock (the runs, blocked on the held row)."""
    with engine.connect() as conn:
        return list(
            conn.scalars(
                sa.text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                    "AND pid <> pg_backend_pid()"
                )
            )
        )


def backend_alive(engine: sa.Engine, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid})
        )


def due_order(url: str) -> list[tuple[int, Period]]:
    database = Database(url)
    try:
        with database.transaction() as session:
            return issuing.due_periods(session, at(RUN_AT))
    finally:
        database.dispose()


@pytest.fixture(scope="module")
def reference(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """The export of one uninterrupted run of the dataset on a database of its own."""
    url = new_database_url("postgresql", request, tmp_path_factory.mktemp("reference"))
    prepare(url)
    database = Database(url)
    try:
        BillingService(database).run_billing(at=at(RUN_AT))
    finally:
        database.dispose()
    return export_all(url)


def test_four_overlapping_runs_issue_each_invoice_once_with_gapless_numbers(
    pg_url: str, reference: list[dict[str, Any]], engine: sa.Engine, start_run: Callable[[str], Run]
) -> None:
    prepare(pg_url)
    due = due_order(pg_url)
    runs: list[Run] = []

    # All four wait on the first close's group lock, then race from the same point.
    with group_locked(engine, due[0][0]):
        runs = [start_run(pg_url) for _ in range(4)]
        wait_for(lambda: len(lock_waiters(engine)) >= 4, "all four runs wait", runs)
    results = [run.finish() for run in runs]

    for code, _, err in results:
        assert code == 0, err
    issued = [
        line.removeprefix("issued ")
        for _, out, _ in results
        for line in out.splitlines()
        if line.startswith("issued ")
    ]
    documents = export_all(pg_url)
    assert len(documents) > len(ZONES) * GROUPS_PER_ORG  # most groups, both months
    assert sorted(issued) == sorted(d["number"] for d in documents) == gapless(len(documents))
    assert max(Counter(issued).values()) == 1
    with engine.connect() as conn:
        closes = conn.scalar(sa.select(sa.func.count()).select_from(t.PeriodClose.__table__))
        counter = conn.scalar(sa.text("SELECT value FROM counters WHERE name = 'invoice'"))
    assert closes == len(due)
    assert counter == len(documents)
    by_group: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for d in documents:
        by_group.setdefault((d["organization"], d["billing_group"]), []).append(
            (d["period_start"], d["number"])
        )
    for periods in by_group.values():  # a group's later period is never numbered earlier
        assert [n for _, n in sorted(periods)] == sorted(n for _, n in periods)
    # Which group got which number depends on how the runs interleaved: closes of different
    # groups commit in any order, each taking the next number as it commits. So the documents
    # must equal the clean run's, numbers aside; within a group, a period cannot close before
    # the one before it committed, so its numbers still rise with its periods (checked above).
    assert without_numbers(documents) == without_numbers(reference)
    assert sorted(d["number"] for d in reference) == gapless(len(documents))


def test_a_run_killed_half_way_resumes_to_the_same_invoices(
    pg_url: str, reference: list[dict[str, Any]], engine: sa.Engine, start_run: Callable[[str], Run]
) -> None:
    prepare(pg_url)
    due = due_order(pg_url)
    victim = due[len(due) // 3][0]
    done = next(i for i, (group_id, _) in enumerate(due) if group_id == victim)
    assert 0 < done < len(due)

    with group_locked(engine, victim):
        run = start_run(pg_url)
        wait_for(lambda: len(lock_waiters(engine)) == 1, "the run waits on the held group", [run])
        [backend] = lock_waiters(engine)
        run.process.send_signal(signal.SIGKILL)
        code, _, _ = run.finish()
    assert code == -signal.SIGKILL
    # The killed client's server process holds the lock a moment, finds its client gone, and
    # rolls back; wait for that rather than race it.
    wait_for(lambda: not backend_alive(engine, backend), "the orphaned backend ends", [])

    with engine.connect() as conn:
        closes = conn.execute(
            sa.select(
                t.PeriodClose.id,
                t.PeriodClose.billing_group_id,
                t.PeriodClose.period_start,
                t.PeriodClose.period_end,
                t.PeriodClose.usage_upto,
            )
        ).all()
        invoices = conn.execute(
            sa.select(t.Invoice.close_id, t.Invoice.number, sa.func.count(t.InvoiceLine.id))
            .outerjoin(t.InvoiceLine, t.InvoiceLine.invoice_id == t.Invoice.id)
            .group_by(t.Invoice.id)
        ).all()
        events = conn.execute(
            sa.select(t.UsageEvent.billing_group_id, t.UsageEvent.ts, t.UsageEvent.id)
        ).all()
        counter = conn.scalar(sa.text("SELECT value FROM counters WHERE name = 'invoice'"))
    assert sorted((g, s) for _, g, s, _, _ in closes) == sorted((g, p.start) for g, p in due[:done])
    assert sorted(n for _, n, _ in invoices) == gapless(done) and counter == done
    assert {c for c, _, _ in invoices} == {c[0] for c in closes}  # every close has its invoice
    assert all(lines > 0 for _, _, lines in invoices)
    # All usage was imported before the run: an event before its group's last closed end is
    # under that close's watermark (settled); the rest is after it (left to the next close).
    last: dict[int, tuple[int, datetime]] = {}
    for _, g, _, end, upto in closes:
        if g not in last or end > last[g][1]:
            last[g] = (upto, end)
    assert all(upto is not None for upto, _ in last.values())
    for group_id, ts, event_id in events:
        if group_id in last and ts < last[group_id][1]:
            assert event_id <= last[group_id][0]

    rerun = start_run(pg_url)
    code, out, err = rerun.finish()
    assert code == 0, err
    assert out.splitlines()[0] == f"issued INV-2026-{done + 1:06d}"
    assert export_all(pg_url) == reference
