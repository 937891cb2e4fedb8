"""A close settles usage by watermark (``billing_core.claims``): what that must keep true.

- an import in flight into a group makes its close wait, and is billed in the period it
  belongs to; an import into a group being closed waits for the close (PostgreSQL: the gates);
- a project moved with a date in the past does not hide usage in a period its new group has
  closed already;
- closes made before migration 0004 (events marked with their close id) and after it bill each
  event once, through a downgrade and an upgrade of a database holding both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from billing_core import issuing, ledger
from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.db.migrate import alembic_config, upgrade
from billing_core.periods import Period
from billing_core.services import BillingService, RunReport
from tests.conftest import new_database_url
from tests.db.test_concurrency import lock_waiters, wait_for
from tests.factories import at, document, event, org

JAN_CLOSE = "2026-02-01T12:00:00+00:00"
FEB_CLOSE = "2026-03-01T12:00:00+00:00"
JANUARY = Period(at("2026-01-01T00:00:00+00:00"), at("2026-02-01T00:00:00+00:00"))


def two_groups() -> dict[str, Any]:
    doc = document()
    acme = org(doc)
    template = acme["billing_groups"][0]
    acme["billing_groups"] = [template, {**template, "key": "ops", "name": "Operations"}]
    acme["projects"] = [
        {"key": "web", "name": "Website", "billing_group": "eng"},
        {"key": "db", "name": "Database", "billing_group": "ops"},
    ]
    return doc


def group_id(service: BillingService, key: str) -> int:
    with service.db.transaction() as session:
        return session.scalars(sa.select(t.BillingGroup.id).filter_by(key=key)).one()


def billed(service: BillingService) -> dict[tuple[str, str | None, str | None], Decimal]:
    """Quantity invoiced per (group, metric, late period start), over every invoice."""
    with service.db.transaction() as session:
        rows = session.execute(
            sa.select(
                t.BillingGroup.key,
                t.InvoiceLine.metric,
                t.InvoiceLine.late_period_start,
                t.InvoiceLine.quantity,
            )
            .join(t.Invoice, t.Invoice.id == t.InvoiceLine.invoice_id)
            .join(t.BillingGroup, t.BillingGroup.id == t.Invoice.billing_group_id)
            .where(t.InvoiceLine.kind == "usage")
        ).all()
    result: dict[tuple[str, str | None, str | None], Decimal] = {}
    for key, metric, late, quantity in rows:
        slot = (key, metric, late.date().isoformat() if late else None)
        result[slot] = result.get(slot, Decimal(0)) + quantity
    return result


def run(service: BillingService, when: str) -> RunReport:
    report = service.run_billing(at=at(when))
    assert not report.failed, report.failed
    return report


# --- the gates (PostgreSQL) ----------------------------------------------------------------


@pytest.fixture
def pg_service(pg_url: str) -> Iterator[BillingService]:
    database = Database(pg_url)
    yield BillingService(database, invoice_prefix="INV")
    database.dispose()


def in_thread(job: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(job())
        except BaseException as exc:  # handed to the test, which raises it
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def outcome(thread: threading.Thread, result: list[Any]) -> Any:
    thread.join(timeout=60)
    assert not thread.is_alive(), "the job did not finish"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


@pytest.mark.postgres
def test_a_close_waits_for_an_import_in_flight_and_bills_it_in_its_own_period(
    pg_service: BillingService, engine: sa.Engine
) -> None:
    service = pg_service
    service.load(two_groups(), at=at("2026-01-01T00:00:00+00:00"))
    assert service.import_usage([event("a", "requests.GET", "1000000", "2026-01-10T00:00Z")]).ok
    # An import that has written its events (and taken their ids) but not committed yet.
    importing = Session(service.db.engine)
    report = ledger.import_usage(
        importing,
        ledger.json_lines([event("b", "requests.GET", "2000000", "2026-01-20T00:00Z")]),
    )
    assert report.accepted == 1
    # A later import, of another group, commits with a higher id at once.
    assert service.import_usage(
        [event("c", "requests.GET", "4000000", "2026-01-21T00:00Z", project="acme/db")]
    ).ok
    thread, result = in_thread(lambda: service.run_billing(at=at(JAN_CLOSE)))
    wait_for(lambda: len(lock_waiters(engine)) == 1, "the run waits for the import", [])
    importing.commit()
    importing.close()
    assert not outcome(thread, result).failed
    # Both of eng's events in January's invoice (not "b" as late usage next month).
    assert billed(service) == {
        ("eng", "requests.GET", None): Decimal(3_000_000),
        ("ops", "requests.GET", None): Decimal(4_000_000),
    }
    assert service.check() == []


@pytest.mark.postgres
def test_an_import_waits_for_a_close_of_its_group_and_lands_above_its_watermark(
    pg_service: BillingService, engine: sa.Engine
) -> None:
    service = pg_service
    service.load(two_groups(), at=at("2026-01-01T00:00:00+00:00"))
    assert service.import_usage([event("a", "requests.GET", "1000000", "2026-01-10T00:00Z")]).ok
    eng = group_id(service, "eng")
    closing = Session(service.db.engine)
    closed = issuing.close_period(
        closing, group_id=eng, period=JANUARY, at=at(JAN_CLOSE), prefix="INV"
    )
    assert closed is not None and closed.invoice_number
    thread, result = in_thread(
        lambda: service.import_usage([event("b", "requests.GET", "2000000", "2026-01-20T00:00Z")])
    )
    wait_for(lambda: len(lock_waiters(engine)) == 1, "the import waits for the close", [])
    closing.commit()
    closing.close()
    assert outcome(thread, result).ok
    run(service, FEB_CLOSE)
    # "b" came after January closed: billed once, in February's invoice, as January's usage.
    assert billed(service) == {
        ("eng", "requests.GET", None): Decimal(1_000_000),
        ("eng", "requests.GET", "2026-01-01"): Decimal(2_000_000),
    }
    assert service.check() == []


# --- both backends --------------------------------------------------------------------------


def test_a_move_dated_before_a_close_of_the_new_group_leaves_that_usage_to_the_old_one(
    service: BillingService,
) -> None:
    service.load(two_groups(), at=at("2026-01-01T00:00:00+00:00"))
    eng, ops = group_id(service, "eng"), group_id(service, "ops")
    assert service.import_usage([event("a", "requests.GET", "1000000", "2026-01-10T00:00Z")]).ok
    with service.db.transaction() as session:
        issuing.close_period(session, group_id=eng, period=JANUARY, at=at(JAN_CLOSE), prefix="INV")
    # Arrives after eng closed January, before ops does: under ops' watermark, not eng's.
    assert service.import_usage([event("b", "requests.GET", "2000000", "2026-01-25T00:00Z")]).ok
    with service.db.transaction() as session:
        issuing.close_period(session, group_id=ops, period=JANUARY, at=at(JAN_CLOSE), prefix="INV")
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.assign_project(admin, project_key="web", group_key="ops", at=at("2026-01-22T00:00Z"))
    with service.db.transaction() as session:
        owner = session.scalars(sa.select(t.UsageEvent.billing_group_id).filter_by(event_id="b"))
        assert owner.one() == eng  # ops has closed January: "b" stays eng's late usage
    run(service, FEB_CLOSE)
    assert billed(service) == {
        ("eng", "requests.GET", None): Decimal(1_000_000),
        ("eng", "requests.GET", "2026-01-01"): Decimal(2_000_000),
    }


def history(service: BillingService, between: Callable[[], None] = lambda: None) -> list[Any]:
    """January billed, ``between``, then late January and February usage billed."""
    service.load(two_groups(), at=at("2026-01-01T00:00:00+00:00"))
    assert service.import_usage(
        [
            event("a", "requests.GET", "1000000", "2026-01-10T00:00Z"),
            event("b", "storage.gb", "7", "2026-01-11T00:00Z", project="acme/db"),
            event("early", "requests.GET", "500000", "2026-02-03T00:00Z"),  # future at the close
        ]
    ).ok
    run(service, JAN_CLOSE)
    between()
    assert service.import_usage(
        [
            event("late", "requests.GET", "3000000", "2026-01-30T00:00Z"),
            event("late-db", "storage.gb", "9", "2026-01-30T00:00Z", project="acme/db"),
            event("feb", "requests.GET", "8000000", "2026-02-10T00:00Z"),
        ]
    ).ok
    run(service, FEB_CLOSE)
    assert service.check() == []
    return service.export_invoices(org_key="acme")


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_closes_from_before_the_watermarks_survive_a_downgrade_and_an_upgrade(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    def database() -> Database:
        made = Database(new_database_url(kind, request, tmp_path))
        request.addfinalizer(made.dispose)
        return made

    reference = history(BillingService(database(), invoice_prefix="INV"))
    legacy = database()

    def back_and_forth() -> None:
        from alembic import command  # noqa: PLC0415 - only this test walks the revisions

        legacy.engine.dispose()
        command.downgrade(alembic_config(legacy.url), "0003")
        with legacy.engine.connect() as conn:  # each January event marked with its close
            marked = conn.execute(
                sa.text("SELECT event_id FROM usage_events WHERE close_id IS NOT NULL")
            ).scalars()
            assert sorted(marked) == ["a", "b"]
        legacy.engine.dispose()
        upgrade(legacy.url)
        with legacy.engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(usage_upto) FROM period_closes")) == 0

    assert history(BillingService(legacy, invoice_prefix="INV"), back_and_forth) == reference
    billed_legacy = billed(BillingService(legacy, invoice_prefix="INV"))
    assert billed_legacy[("eng", "requests.GET", "2026-01-01")] == Decimal(3_000_000)
    assert billed_legacy[("eng", "requests.GET", None)] == Decimal(9_500_000)
