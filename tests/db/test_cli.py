"""The real ``billing-bot`` console script, run as a subprocess against SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.services import BillingService
from billing_core.settings import Settings
from tests.conftest import PG_ADMIN_URL, require_postgres
from tests.factories import at, document, event, org, payment

BILLING_BOT = Path(sys.executable).with_name("billing-bot")
TIMEOUT = 120  # seconds; a hung command fails the test instead of hanging the suite
SETTINGS_VARIABLES = {f.name.upper() for f in dataclasses.fields(Settings)}

JAN = "2026-01-10T12:00:00+00:00"
FEB = "2026-02-10T12:00:00+00:00"


def billing_bot(
    *args: str, cwd: Path, database_url: str | None
) -> subprocess.CompletedProcess[str]:
    """Run ``billing-bot ARGS`` in ``cwd`` with only DATABASE_URL set among the settings."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(BILLING_BOT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.splitlines()


class Cli:
    """``billing-bot`` bound to one database, run in a scratch directory (no stray ``.env``).

    Setup and checks go through ``service`` in process; only the command under test runs as a
    subprocess, which keeps the file fast.
    """

    def __init__(self, service: BillingService, workdir: Path) -> None:
        self.service = service
        self.workdir = workdir

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return billing_bot(*args, cwd=self.workdir, database_url=self.service.db.url)

    def write(self, name: str, content: str) -> str:
        path = self.workdir / name
        path.write_text(content, encoding="utf-8")
        return str(path)

    def write_json(self, name: str, value: Any) -> str:
        return self.write(name, json.dumps(value))

    def write_lines(self, name: str, lines: list[str]) -> str:
        return self.write(name, "\n".join(lines) + "\n")

    def export(self) -> list[dict[str, Any]]:
        return self.service.export_invoices(org_key="acme")


def _workdir(tmp_path: Path) -> Path:
    assert BILLING_BOT.is_file(), f"the console script is not installed at {BILLING_BOT}"
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


@pytest.fixture
def cli(service: BillingService, tmp_path: Path) -> Cli:
    """On SQLite and on PostgreSQL."""
    return Cli(service, _workdir(tmp_path))


@pytest.fixture
def sqlite_cli(tmp_path: Path, sqlite_template: Path) -> Iterator[Cli]:
    """For refusals that happen before the database is touched: one backend is enough."""
    target = tmp_path / "cli.db"
    shutil.copy(sqlite_template, target)
    database = Database(f"sqlite:///{target}")
    yield Cli(BillingService(database), _workdir(tmp_path))
    database.dispose()


@pytest.fixture
def loaded(cli: Cli) -> Cli:
    cli.service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
    return cli


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all (the fixtures' databases come migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    require_postgres()
    name = f"billing_empty_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            sa.engine.make_url(PG_ADMIN_URL)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_db_upgrade_creates_the_schema_and_is_safe_to_repeat(
    empty_db_url: str, tmp_path: Path
) -> None:
    first = billing_bot("db", "upgrade", cwd=tmp_path, database_url=empty_db_url)
    tables = table_names(empty_db_url)
    second = billing_bot("db", "upgrade", cwd=tmp_path, database_url=empty_db_url)

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "up to date" in second.stdout
    assert {"alembic_version", "organizations", "invoices", "usage_events"} <= tables
    assert table_names(empty_db_url) == tables
    database = Database(empty_db_url)
    try:
        assert BillingService(database).load(document(), at=at("2026-01-01T00:00:00+00:00"))
    finally:
        database.dispose()


def test_load_accepts_a_good_file_and_refuses_a_bad_one_with_its_path(cli: Cli) -> None:
    good = cli("load", cli.write_json("good.json", document()))
    bad = document()
    org(bad)["name"] = "Acme Renamed"  # valid, and before the bad value: must not be written
    bad["organizations"].append(
        {
            "key": "beta",
            "name": "Beta",
            "timezone": "UTC",
            "billing_groups": [
                {
                    "key": "ops",
                    "name": "Ops",
                    "price_list": "standard-eur",
                    "payment_method": "card",
                    "created_at": "2026-01-01T00:00:00+00:00",
                }
            ],
            "projects": [{"key": "site", "name": "Site", "billing_group": "eng"}],
        }
    )

    refused = cli("load", cli.write_json("bad.json", bad))

    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("loaded ")
    assert refused.returncode == 1
    [line] = stderr_lines(refused)
    assert line.startswith("billing-bot: organizations[1].projects[0].billing_group: ")
    with cli.service.db.transaction() as session:
        names = session.execute(sa.select(t.Organization.key, t.Organization.name)).all()
    assert [tuple(n) for n in names] == [("acme", "Acme Inc")]


def test_load_refuses_a_file_that_is_not_json_in_one_line(sqlite_cli: Cli) -> None:
    refused = sqlite_cli("load", sqlite_cli.write("broken.json", '{"organizations": [\n'))

    assert refused.returncode == 1
    [line] = stderr_lines(refused)
    assert "not valid JSON" in line


def test_load_names_the_path_of_a_float_amount(sqlite_cli: Cli) -> None:
    doc = document()
    org(doc)["credits"] = [{"billing_group": "eng", "amount": 25.0}]

    refused = sqlite_cli("load", sqlite_cli.write_json("float.json", doc))

    assert refused.returncode == 1
    [line] = stderr_lines(refused)
    assert "organizations[0].credits[0].amount" in line


def test_usage_import_keeps_good_lines_and_fails_on_a_bad_one(loaded: Cli) -> None:
    usage = loaded.write_lines(
        "usage.jsonl",
        [
            event("e1", "requests.GET", "1000000", JAN),
            event("e2", "requests.GET", "1", "2026-01-10T12:00:00"),
            event("e3", "requests.GET", "2000000", JAN),
        ],
    )

    imported = loaded("usage", "import", usage)
    billed = loaded("run-billing", "--at", "2026-02-01T00:00:00+00:00")

    assert imported.returncode == 1
    assert stderr_lines(imported)[0].startswith("line 2: timestamp: ")
    assert "2 events accepted, 0 duplicates skipped, 1 rejected" in imported.stdout
    assert billed.returncode == 0, billed.stderr
    assert billed.stdout.splitlines()[0] == "issued INV-2026-000001"
    [invoice] = loaded.export()
    assert Decimal(invoice["lines"][0]["quantity"]) == 3000000


def test_run_billing_refuses_a_time_without_offset(sqlite_cli: Cli) -> None:
    sqlite_cli.service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
    sqlite_cli.service.import_usage([event("e1", "requests.GET", "1000000", JAN)])

    naive = sqlite_cli("run-billing", "--at", "2026-02-01T00:00:00")

    assert naive.returncode == 1
    [line] = stderr_lines(naive)
    assert "--at" in line and "no UTC offset" in line
    assert sqlite_cli.service.export_invoices(org_key="acme") == []


def billed_two_months(service: BillingService) -> None:
    service.import_usage(
        [
            event("jan-get", "requests.GET", "10000000", JAN),
            event("jan-gb", "storage.gb", "100", JAN),
            event("jan-tx", "transfer.gb", "150", JAN),
            event("feb-get", "requests.GET", "25000000", FEB),
        ]
    )
    assert len(service.run_billing(at=at("2026-03-01T00:00:00+00:00")).issued) == 2


def test_payments_import_pays_the_oldest_invoice_once(loaded: Cli) -> None:
    billed_two_months(loaded.service)
    jan_total = loaded.export()[0]["total"]
    line = payment("fs-1", jan_total, "2026-03-02T10:00:00+00:00")

    imported = loaded("payments", "import", loaded.write_lines("p.jsonl", [line, line]))

    assert imported.returncode == 0, imported.stderr
    assert "1 payments accepted, 1 duplicates skipped, 0 rejected" in imported.stdout
    january, february = loaded.export()
    assert (january["status"], january["amount_paid"]) == ("paid", jan_total)
    assert (february["status"], february["amount_paid"]) == ("open", "0.00")


def test_invoices_export_as_json_and_as_csv_with_one_row_per_line(loaded: Cli) -> None:
    billed_two_months(loaded.service)

    as_json = loaded("invoices", "--org", "acme", "--format", "json")
    as_csv = loaded("invoices", "--org", "acme", "--format", "csv")

    assert as_json.returncode == as_csv.returncode == 0, as_json.stderr + as_csv.stderr
    documents = json.loads(as_json.stdout)
    assert documents == loaded.export()
    assert [d["number"] for d in documents] == ["INV-2026-000001", "INV-2026-000002"]
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    expected = [(doc, line) for doc in documents for line in doc["lines"]]
    assert len(rows) == len(expected) == 4
    for row, (doc, line) in zip(rows, expected, strict=True):
        for name in ("number", "billing_group", "period_start", "due_date", "status", "total"):
            assert row[name] == doc[name]
        assert row["line_metric"] == line["metric"]
        assert row["line_amount"] == line["amount"]
        assert row["line_quantity"] == line["quantity"]
    january_lines = [Decimal(r["line_amount"]) for r in rows if r["number"] == "INV-2026-000001"]
    assert sum(january_lines) == Decimal(documents[0]["subtotal"])


DEMO_AT = "2026-11-22T12:00:00+00:00"  # a fixed "now", so a rerun cannot cross a period end


def test_demo_fills_the_default_database_and_is_idempotent(tmp_path: Path) -> None:
    def demo() -> subprocess.CompletedProcess[str]:
        return billing_bot("demo", "--at", DEMO_AT, cwd=tmp_path, database_url=None)

    def export() -> list[dict[str, Any]]:
        database = Database(f"sqlite:///{tmp_path / 'billing.db'}")
        try:
            return BillingService(database).export_invoices(org_key="demo")
        finally:
            database.dispose()

    first = demo()
    after_first = export()
    second = demo()

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    for command in ("/billing balance", "/billing owed", "/billing invoices"):
        assert command in first.stdout
        assert command in second.stdout
    assert len(after_first) >= 3
    assert "billing: 0 invoices issued" in second.stdout
    assert export() == after_first
