"""Bulk writes refresh the planner's statistics of what they wrote (PostgreSQL).

A table whose statistics still describe it as empty is read with plans made for an empty
table; on a server with autovacuum off (this machine's) nothing else would ever refresh them.
The rule is autovacuum's analyze threshold: more rows written than 50 + 10 % of the table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_core.db import engine
from billing_core.db.engine import Database
from billing_core.services import BillingService
from tests.factories import at, document, event, org


def counted_rows(db: Database, table: str) -> float:
    """What the planner believes ``table`` holds (-1: never analyzed or vacuumed)."""
    with db.engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
        ).scalar_one()
    return float(found)


def events(first: int, count: int) -> list[str]:
    return [
        event(f"e-{n}", "requests.GET", "10", "2026-01-15T10:00:00+00:00")
        for n in range(first, first + count)
    ]


@pytest.fixture
def db_url(pg_url: str) -> str:
    """The shared ``db`` and ``service`` fixtures, on PostgreSQL only: SQLite keeps no
    statistics to refresh."""
    return pg_url


@pytest.fixture
def pg_service(service: BillingService) -> BillingService:
    service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
    return service


@pytest.mark.postgres
def test_a_large_import_is_counted_and_a_small_one_is_left_to_autovacuum(
    pg_service: BillingService,
) -> None:
    db = pg_service.db
    assert counted_rows(db, "usage_events") < 1  # fresh: the planner has never counted it

    pg_service.import_usage(events(0, 400))
    assert counted_rows(db, "usage_events") == 400

    pg_service.import_usage(events(400, 60))  # 60 <= 50 + 40: below the threshold
    assert counted_rows(db, "usage_events") == 400

    pg_service.import_usage(events(460, 200))
    assert counted_rows(db, "usage_events") == 660


@pytest.mark.postgres
def test_small_imports_that_add_up_to_a_tenth_of_the_table_get_it_counted(
    pg_service: BillingService,
) -> None:
    # Like the bench's build, which loads a hundred organizations at a time: no single command
    # passes the threshold once the table is large, but together they grow it by half.
    db = pg_service.db
    pg_service.import_usage(events(0, 3000))
    assert counted_rows(db, "usage_events") == 3000

    pg_service.import_usage(events(3000, 280))  # 280 <= 50 + 300, and a few pages more
    assert counted_rows(db, "usage_events") == 3000

    for first in range(3280, 4680, 280):
        pg_service.import_usage(events(first, 280))
    assert counted_rows(db, "usage_events") > 3280


@pytest.mark.postgres
def test_a_billing_run_counts_the_closes_and_invoices_it_made(service: BillingService) -> None:
    doc = document()
    acme = org(doc)
    template = acme["billing_groups"][0]
    acme["billing_groups"] = [{**template, "key": f"g{n}", "name": f"G{n}"} for n in range(60)]
    acme["projects"] = [
        {"key": f"p{n}", "name": f"P{n}", "billing_group": f"g{n}"} for n in range(60)
    ]
    service.load(doc, at=at("2026-01-01T00:00:00+00:00"))
    assert counted_rows(service.db, "billing_groups") == 60  # the load wrote 60 > 50 + 0
    service.import_usage(
        [
            event(f"e-{n}", "transfer.gb", "1000", "2026-01-15T10:00:00+00:00", f"acme/p{n}")
            for n in range(60)
        ]
    )
    report = service.run_billing(at=at("2026-02-01T12:00:00+00:00"))
    assert len(report.issued) == 60
    assert counted_rows(service.db, "period_closes") == 60
    assert counted_rows(service.db, "invoices") == 60
    assert counted_rows(service.db, "invoice_lines") >= 60


def test_sqlite_needs_no_refresh(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    assert db.refresh_statistics({"usage_events": 10_000}) == []
    db.dispose()


def visibility(db: Database, table: str) -> tuple[int, int]:
    """(pages the last VACUUM or ANALYZE found all-visible, pages on disk now).

    A page not all-visible costs every index-only read of a row on it a visit of the table
    itself (``Heap Fetches`` in a plan)."""
    with db.engine.connect() as conn:
        visible, pages = conn.execute(
            sa.text(
                "SELECT relallvisible, pg_relation_size(oid) / current_setting('block_size')::int "
                "FROM pg_class WHERE oid = to_regclass(:t)"
            ),
            {"t": table},
        ).one()
    return int(visible), int(pages)


@pytest.mark.postgres
def test_an_import_past_the_threshold_leaves_its_rows_readable_from_the_index(
    pg_service: BillingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = pg_service.db
    pg_service.import_usage(events(0, 200))  # a few pages: left to autovacuum
    visible, pages = visibility(db, "usage_events")
    assert visible == 0 < pages

    monkeypatch.setattr(engine, "VISIBILITY_AFTER", pages + 1)
    pg_service.import_usage(events(200, 200))
    visible, pages = visibility(db, "usage_events")
    assert visible == pages >= 3

    monkeypatch.setattr(engine, "VISIBILITY_AFTER", 512)
    pg_service.import_usage(events(400, 100))  # on pages the vacuum has not seen
    visible_now, pages_now = visibility(db, "usage_events")
    assert visible_now < pages_now


@pytest.mark.postgres
def test_the_threshold_counts_the_pages_added_since_the_last_vacuum(
    pg_service: BillingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = pg_service.db
    monkeypatch.setattr(engine, "VISIBILITY_AFTER", 10**6)
    pg_service.import_usage(events(0, 300))
    visible, pages = visibility(db, "usage_events")
    assert visible == 0 and pages >= 2
    monkeypatch.setattr(engine, "VISIBILITY_AFTER", pages + 1)
    assert not db.refresh_visibility_after("usage_events")
    assert visibility(db, "usage_events") == (0, pages)
    monkeypatch.setattr(engine, "VISIBILITY_AFTER", pages)
    assert db.refresh_visibility_after("usage_events")
    assert visibility(db, "usage_events") == (pages, pages)
    monkeypatch.setattr(engine, "VISIBILITY_AFTER", 1)
    assert not db.refresh_visibility_after("usage_events")  # nothing new since: 0 pages


def test_sqlite_has_no_visibility_to_refresh(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    assert not db.refresh_visibility_after("usage_events")
    db.dispose()
