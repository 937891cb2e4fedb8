"""``run-billing`` in batches (``billing_core.batch``) issues what closing one by one issues.

The reference is the one-by-one path (``issuing.close_period`` per due period, each in its
own transaction, as ``run_billing`` worked before batches) run on a second database of the
same kind with the same history. Both histories hold four time zones, plans with anniversary
periods, coupons, credits, and usage that arrives after its period was invoiced.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from billing_core import batch, issuing
from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.errors import BillingError
from billing_core.services import BillingService, RunReport
from tests.conftest import new_database_url
from tests.db.test_concurrency import ZONES, dataset, gapless
from tests.factories import at, document, event

FIRST_AT = "2026-02-01T12:00:00+00:00"
SECOND_AT = "2026-03-01T12:00:00+00:00"


def prepare(
    service: BillingService, runner: Callable[[BillingService, str], RunReport] | None = None
) -> None:
    """60 groups in 4 zones, coupons for some, January billed, then February and late usage."""
    doc, usage = dataset()
    doc["coupons"] = [
        {"code": "TEN", "percent_off": "10", "duration": "forever"},
        {"code": "ONCE", "amount_off": "5.00", "currency": "EUR", "duration": "once"},
    ]
    service.load(doc, at=at("2026-01-01T00:00:00+00:00"))
    for number in range(len(ZONES)):
        admin = service.actor(team_id=f"T{number}", user_id="U0ADMIN")
        for g in range(0, 15, 4):
            code = "TEN" if g % 8 else "ONCE"
            service.redeem_coupon(
                admin, code=code, group_key=f"g{g:02d}", at=at("2026-01-02T00:00:00+00:00")
            )
    january = [line for line in usage if "-jan-" in line]
    assert service.import_usage(january).ok
    (runner or run)(service, FIRST_AT)
    late = [
        event(
            f"late-{org_key}-g{g:02d}",
            "requests.GET",
            "3000000",
            f"2026-01-20T12:00:00{offset}",
            project=f"{org_key}/g{g:02d}a",
        )
        for org_key, _, offset in ZONES
        for g in range(0, 15, 3)
    ]
    rest = [line for line in usage if "-jan-" not in line] + late
    assert service.import_usage(rest).ok


def run(service: BillingService, when: str) -> RunReport:
    report = service.run_billing(at=at(when))
    assert not report.failed
    return report


def one_by_one(service: BillingService, when: str) -> RunReport:
    """The run as it was before batches: each due period closed in its own transaction."""
    report = RunReport()
    with service.db.transaction() as session:
        due = issuing.due_periods(session, at(when))
    broken: set[int] = set()
    for group_id, period in due:
        if group_id in broken:
            continue
        try:
            with service.db.transaction() as session:
                closed = issuing.close_period(
                    session, group_id=group_id, period=period, at=at(when), prefix="INV"
                )
        except BillingError as exc:
            broken.add(group_id)
            report.failed.append((str(group_id), str(exc)))
            continue
        if closed is not None and closed.invoice_number:
            report.issued.append(closed.invoice_number)
        elif closed is not None:
            report.closed_without_invoice += 1
    return report


def export(service: BillingService) -> list[dict[str, Any]]:
    return [d for org_key, *_ in ZONES for d in service.export_invoices(org_key=org_key)]


def new_service(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> BillingService:
    """A service on a second database of the same kind as ``db_url``'s."""
    kind = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    (tmp_path / "other").mkdir(exist_ok=True)
    database = Database(new_database_url(kind, request, tmp_path / "other"))
    request.addfinalizer(database.dispose)
    return BillingService(database)


@pytest.fixture
def other(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> BillingService:
    return new_service(db_url, request, tmp_path)


Reference = tuple[list[dict[str, Any]], list[RunReport]]
_references: dict[str, Reference] = {}


@pytest.fixture
def expected(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Reference:
    """The one-by-one path's invoices and reports over ``prepare``'s history, then February.

    Computed once per backend: it depends on nothing else.
    """
    kind = db_url.split(":", 1)[0]
    if kind not in _references:
        other = new_service(db_url, request, tmp_path)
        reports: list[RunReport] = []

        def runner(service: BillingService, when: str) -> RunReport:
            reports.append(one_by_one(service, when))
            return reports[-1]

        prepare(other, runner)
        runner(other, SECOND_AT)
        _references[kind] = (export(other), reports)
    return _references[kind]


@pytest.mark.parametrize("size", [3, batch.BATCH_SIZE])
def test_batches_issue_what_one_by_one_issues_numbers_included(
    service: BillingService, expected: Reference, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "BATCH_SIZE", size)
    documents_before, (old_first, old_second) = expected
    reports: list[RunReport] = []
    original = batch.close_batch
    sizes: list[int] = []

    def counting(session: Any, items: Any, **kw: Any) -> Any:
        sizes.append(len(items))
        return original(session, items, **kw)

    monkeypatch.setattr(batch, "close_batch", counting)
    prepare(service)
    reports.append(run(service, SECOND_AT))
    documents = export(service)

    assert documents == documents_before
    assert reports[0].issued == old_second.issued and reports[0].issued
    assert reports[0].closed_without_invoice == old_second.closed_without_invoice
    assert sorted(d["number"] for d in documents) == gapless(len(documents))
    assert any(line.get("late_period_start") for d in documents for line in d["lines"])
    assert any(d["discount"] != "0.00" for d in documents)
    assert any(d["credits_applied"] != "0.00" for d in documents)
    assert sum(sizes) >= 60 and max(sizes) <= size
    if size == 3:
        assert len(sizes) > 20  # the February run alone spans many batches
    assert old_first.issued  # the shared January history was billed


def consistent(service: BillingService) -> int:
    """No gap in the numbers, the counter at the last one, every charged close invoiced."""
    with service.db.transaction() as session:
        numbers = sorted(session.scalars(sa.select(t.Invoice.number)))
        counter = session.scalar(
            sa.select(t.Counter.value).where(t.Counter.name == "invoice", t.Counter.year == 2026)
        )
        lineless = session.scalar(
            sa.select(sa.func.count())
            .select_from(t.Invoice)
            .where(~sa.exists().where(t.InvoiceLine.invoice_id == t.Invoice.id))
        )
    assert numbers == gapless(counter or 0)
    assert lineless == 0
    assert service.check() == []
    return len(numbers)


@pytest.mark.parametrize("where", ["between batches", "after a batch's writes"])
def test_a_run_that_dies_mid_way_leaves_whole_batches_and_a_rerun_finishes_it(
    service: BillingService, expected: Reference, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "BATCH_SIZE", 4)
    prepare(service)
    before = consistent(service)
    original_batch, original_store = batch.close_batch, batch._store
    calls: list[int] = []
    stores: list[int] = []

    class Died(Exception):
        pass

    def dying_batch(session: Any, items: Any, **kw: Any) -> Any:
        calls.append(len(items))
        if where == "between batches" and len(calls) == 6:
            raise Died
        return original_batch(session, items, **kw)

    def dying_store(session: Any, issues: Any, at: Any) -> None:
        # Counted apart from the batches: on PostgreSQL the next batch may have begun already.
        stores.append(len(issues))
        original_store(session, issues, at)
        if where == "after a batch's writes" and len(stores) == 6:
            raise Died

    monkeypatch.setattr(batch, "close_batch", dying_batch)
    monkeypatch.setattr(batch, "_store", dying_store)
    with pytest.raises(Died):
        service.run_billing(at=at(SECOND_AT))
    issued = consistent(service)
    # Five whole batches of 1, 2, 4, 4, 4 periods, minus those with nothing to charge.
    assert before < issued <= before + 15

    monkeypatch.setattr(batch, "close_batch", original_batch)
    monkeypatch.setattr(batch, "_store", original_store)
    rerun = run(service, SECOND_AT)
    assert rerun.issued[0] == f"INV-2026-{issued + 1:06d}"
    assert export(service) == expected[0]
    assert run(service, SECOND_AT).issued == []


def test_a_group_that_refuses_billing_fails_alone_as_before(
    service: BillingService, other: BillingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BillingError in one group rolls its batch back; the batch closes one by one."""
    original: Callable[..., Any] = issuing.price_of
    refused: list[str] = []

    def price_of(ctx: issuing.GroupContext, metric: str) -> Any:
        if ctx.org.key == "berlin" and ctx.group.key == "g04" and metric == "transfer.gb":
            refused.append(ctx.group.key)
            raise BillingError("transfer.gb has no price here (test)")
        return original(ctx, metric)

    monkeypatch.setattr(issuing, "price_of", price_of)
    doc, usage = dataset()
    for svc in (service, other):
        svc.load(doc, at=at("2026-01-01T00:00:00+00:00"))
        assert svc.import_usage(usage).ok
    report = service.run_billing(at=at(SECOND_AT))
    old = one_by_one(other, SECOND_AT)
    assert refused
    assert report.failed == old.failed and len(report.failed) == 1
    assert report.issued == old.issued
    assert report.closed_without_invoice == old.closed_without_invoice
    assert export(service) == export(other)
    monkeypatch.setattr(issuing, "price_of", original)
    consistent(service)


# SQLite has one writer: its batches run one at a time.
@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_on_postgresql_the_next_batch_is_priced_while_the_one_before_commits(
    service: BillingService, expected: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches in flight (``batch._Pipeline``), yet numbers and commits in the run's order:
    a batch takes its numbers only once every number taken before is committed."""
    assert service.db.dialect == "postgresql"
    monkeypatch.setattr(batch, "BATCH_SIZE", 4)
    prepare(service)
    with service.db.transaction() as session:
        before = session.scalar(sa.select(sa.func.count()).select_from(t.Invoice))
    original_batch, original_number = batch.close_batch, batch._number
    lock = threading.Lock()
    active = [0]
    most = [0]
    numbered: list[str] = []
    seen: list[tuple[int, int]] = []  # (counter committed, numbers taken before) per batch

    def watched_batch(session: Any, items: Any, **kw: Any) -> Any:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return original_batch(session, items, **kw)
        finally:
            with lock:
                active[0] -= 1

    def watched_number(session: Any, issues: Any, prefix: str) -> None:
        with service.db.transaction() as other:  # what is committed now
            counter = other.scalar(
                sa.select(t.Counter.value).where(
                    t.Counter.name == "invoice", t.Counter.year == 2026
                )
            )
        seen.append((counter or 0, before + len(numbered)))
        original_number(session, issues, prefix)
        numbered.extend(issue.number for issue in issues)

    monkeypatch.setattr(batch, "close_batch", watched_batch)
    monkeypatch.setattr(batch, "_number", watched_number)
    report = run(service, SECOND_AT)
    assert most[0] == 2, "no batch began before the one before it had committed"
    assert len(seen) > 5 and all(committed == taken for committed, taken in seen), seen
    assert numbered == report.issued == expected[1][1].issued
    assert export(service) == expected[0]
    consistent(service)


def test_a_group_with_several_periods_due_closes_them_in_order(
    service: BillingService, other: BillingService
) -> None:
    """A run that catches up (the scheduler was down): one group, three periods due. Each
    period waits for the batch holding the one before it, also with two batches in flight."""
    for svc in (service, other):
        svc.load(document(), at=at("2026-01-01T00:00:00+00:00"))
        assert svc.import_usage(
            [
                event(f"e{month}", "requests.GET", f"{month}000000", f"2026-0{month}-05T00:00:00Z")
                for month in (1, 2, 3)
            ]
        ).ok
    reports: list[RunReport] = []
    worker = threading.Thread(
        target=lambda: reports.append(service.run_billing(at=at("2026-04-01T00:00:00+00:00"))),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=120)
    assert reports, "run-billing did not finish"
    old = one_by_one(other, "2026-04-01T00:00:00+00:00")
    assert reports[0].issued == old.issued and len(old.issued) == 3
    assert service.export_invoices(org_key="acme") == other.export_invoices(org_key="acme")
    consistent(service)
