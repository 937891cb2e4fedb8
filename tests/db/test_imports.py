"""Usage (SPEC 4.2) and payment (4.3) imports on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from billing_core import ledger
from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.errors import InvalidInput
from billing_core.services import BillingService
from tests.conftest import new_database_url, require_postgres
from tests.factories import at, document, event, payment

JAN = "2026-01-10T12:00:00+00:00"
FEB = "2026-02-10T12:00:00+00:00"
RECORDED = at("2026-03-05T00:00:00+00:00")


@pytest.fixture
def loaded(service: BillingService) -> BillingService:
    service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
    return service


def invoices(service: BillingService) -> dict[str, dict[str, Any]]:
    """Exported invoices by the month their period starts in (2026-01, 2026-02, ...)."""
    return {doc["period_start"][:7]: doc for doc in service.export_invoices(org_key="acme")}


def requests_quantity(doc: dict[str, Any]) -> Decimal:
    [line] = [line for line in doc["lines"] if line["metric"] == "requests.GET"]
    return Decimal(line["quantity"])


# --- usage ---------------------------------------------------------------------------------


def test_an_event_id_seen_before_is_skipped_and_billed_once(loaded: BillingService) -> None:
    first = loaded.import_usage(
        [
            event("e1", "requests.GET", "1000000", JAN),
            event("e2", "requests.GET", "2000000", JAN),
            event("e1", "requests.GET", "1000000", JAN),  # again in the same file
        ]
    )
    second = loaded.import_usage(
        [
            event("e2", "requests.GET", "9000000", JAN),  # same id, other content: still skipped
            event("e3", "requests.GET", "4000000", JAN),
        ]
    )
    loaded.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    third = loaded.import_usage([event("e1", "requests.GET", "1000000", JAN)])  # after billing
    loaded.run_billing(at=at("2026-03-01T00:00:00+00:00"))

    assert (first.accepted, first.duplicates, first.rejected) == (2, 1, [])
    assert (second.accepted, second.duplicates, second.rejected) == (1, 1, [])
    assert (third.accepted, third.duplicates) == (0, 1)
    [only] = loaded.export_invoices(org_key="acme")
    assert requests_quantity(only) == 7000000
    assert only["total"] == "2.80"


def test_bad_usage_lines_are_reported_with_line_numbers_and_good_lines_land(
    loaded: BillingService,
) -> None:
    good = event("ok-1", "requests.GET", "1000000", JAN)
    lines = [
        good,  # 1
        '{"id": "bad-json", "project": ',  # 2
        '{"id": "f", "project": "acme/web", "metric": "requests.GET", "quantity": 1.5, '
        f'"timestamp": "{JAN}"}}',  # 3
        event("p", "requests.GET", "1", JAN, project="acme/nope"),  # 4
        event("m", "cpu.seconds", "1", JAN),  # 5
        event("n", "requests.GET", "1", "2026-01-10T12:00:00"),  # 6
        event("neg", "requests.GET", "-5", JAN),  # 7
        json.dumps({"id": "q", "project": "acme/web", "metric": "requests.GET", "timestamp": JAN}),
        "",  # 9: blank lines are no events, but keep their number
        "[]",  # 10
        event("ok-2", "requests.GET", "2000000", FEB),  # 11
    ]

    report = loaded.import_usage(lines)
    loaded.run_billing(at=at("2026-03-01T00:00:00+00:00"))

    assert (report.accepted, report.duplicates) == (2, 0)
    reasons = dict(report.rejected)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 10]
    assert "not valid JSON" in reasons[2]
    assert "1.5" in reasons[3] and "decimal string" in reasons[3]
    assert reasons[4].startswith("project:") and "'nope'" in reasons[4]
    assert reasons[5].startswith("metric:") and "cpu.seconds" in reasons[5]
    assert reasons[6].startswith("timestamp:") and "no UTC offset" in reasons[6]
    assert reasons[7].startswith("quantity:") and "negative" in reasons[7]
    assert reasons[8] == "quantity: is required"
    assert "expected an object" in reasons[10]
    by_month = invoices(loaded)
    assert requests_quantity(by_month["2026-01"]) == 1000000
    assert requests_quantity(by_month["2026-02"]) == 2000000


def test_text_no_database_can_store_is_a_bad_line_on_both_backends(
    loaded: BillingService,
) -> None:
    # PostgreSQL refuses NUL and lone surrogates in text; SQLite would keep them. Both refuse
    # the line, by number, and keep the others (before, PostgreSQL failed the whole file).
    lines = [
        event("nul\u0000id", "requests.GET", "1", JAN),
        event("ok-1", "requests.GET", "1000000", JAN),
        event("surrogate\ud800", "requests.GET", "1", JAN),
        event("x", "requests.GET", "1", JAN, project="acme/w\u0000eb"),
        event("ok-2", "requests.GET", "2000000", FEB),
    ]
    report = loaded.import_usage(lines)
    payments = loaded.import_payments(
        [payment("ref\u0000", "1.00", JAN), payment("ref\udfff", "1.00", JAN)], at=at(FEB)
    )

    assert (report.accepted, report.duplicates) == (2, 0)
    reasons = dict(report.rejected)
    assert sorted(reasons) == [1, 3, 4]
    assert reasons[1] == "id: contains a NUL character (\\u0000), which cannot be stored"
    assert reasons[3].startswith("id: contains a lone surrogate")
    assert reasons[4].startswith("project: contains a NUL character")
    assert payments.accepted == 0 and [n for n, _ in payments.rejected] == [1, 2]


def test_a_rejected_line_does_not_reserve_its_id(loaded: BillingService) -> None:
    refused = loaded.import_usage([event("e1", "requests.GET", "-1", JAN)])
    fixed = loaded.import_usage([event("e1", "requests.GET", "1000000", JAN)])

    assert [n for n, _ in refused.rejected] == [1]
    assert (fixed.accepted, fixed.duplicates) == (1, 0)


# --- payments ------------------------------------------------------------------------------


def two_open_invoices(service: BillingService) -> None:
    """January 4.00 EUR and February 10.00 EUR, both open."""
    service.import_usage(
        [
            event("jan", "requests.GET", "10000000", JAN),
            event("feb", "requests.GET", "25000000", FEB),
        ]
    )
    issued = service.run_billing(at=at("2026-03-01T00:00:00+00:00")).issued
    assert issued == ["INV-2026-000001", "INV-2026-000002"]


def credits(service: BillingService) -> list[tuple[Decimal, Decimal, str]]:
    with service.db.transaction() as session:
        rows = session.execute(
            sa.select(t.Credit.amount, t.Credit.remaining, t.Credit.grant_key).order_by(t.Credit.id)
        ).all()
    return [(Decimal(a), Decimal(r), k) for a, r, k in rows]


def test_a_payment_reference_counts_once(loaded: BillingService) -> None:
    two_open_invoices(loaded)
    line = payment("fs-1", "1.00", "2026-03-02T10:00:00+00:00")

    first = loaded.import_payments([line, line], at=RECORDED)
    again = loaded.import_payments([line], at=RECORDED)

    assert (first.accepted, first.duplicates, again.accepted, again.duplicates) == (1, 1, 0, 1)
    assert again.receipts == []
    assert invoices(loaded)["2026-01"]["amount_paid"] == "1.00"
    with loaded.db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(t.Payment)) == 1


def test_a_payment_in_another_currency_is_a_bad_line(loaded: BillingService) -> None:
    two_open_invoices(loaded)

    report = loaded.import_payments(
        [
            payment("usd-1", "4.00", "2026-03-02T10:00:00+00:00", currency="USD"),
            payment("eur-1", "4.00", "2026-03-02T10:00:00+00:00"),
        ],
        at=RECORDED,
    )

    assert report.accepted == 1
    [(number, reason)] = report.rejected
    assert number == 1
    assert reason.startswith("currency:") and "'USD'" in reason and "EUR" in reason
    assert invoices(loaded)["2026-01"]["status"] == "paid"


def test_a_payment_pays_the_oldest_open_invoice_first(loaded: BillingService) -> None:
    two_open_invoices(loaded)

    loaded.import_payments([payment("fs-1", "6.00", "2026-03-02T10:00:00+00:00")], at=RECORDED)

    by_month = invoices(loaded)
    assert (by_month["2026-01"]["status"], by_month["2026-01"]["amount_paid"]) == ("paid", "4.00")
    assert (by_month["2026-02"]["status"], by_month["2026-02"]["amount_paid"]) == ("open", "2.00")
    assert credits(loaded) == []


def test_an_overpayment_becomes_a_credit_that_pays_the_next_invoice(
    loaded: BillingService,
) -> None:
    loaded.import_usage([event("jan", "requests.GET", "10000000", JAN)])
    loaded.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    loaded.import_payments([payment("fs-1", "20.00", "2026-02-02T10:00:00+00:00")], at=RECORDED)
    assert credits(loaded) == [(Decimal("16.00"), Decimal("16.00"), "payment:fs-1")]

    loaded.import_usage([event("feb", "requests.GET", "25000000", FEB)])
    loaded.run_billing(at=at("2026-03-01T00:00:00+00:00"))

    by_month = invoices(loaded)
    assert by_month["2026-01"]["amount_paid"] == "4.00"
    february = by_month["2026-02"]
    assert (february["total"], february["credits_applied"]) == ("10.00", "10.00")
    assert (february["amount_due"], february["status"]) == ("0.00", "paid")
    assert credits(loaded) == [(Decimal("16.00"), Decimal("6.00"), "payment:fs-1")]


def test_every_payment_gets_a_receipt_number_without_gaps(loaded: BillingService) -> None:
    two_open_invoices(loaded)

    first = loaded.import_payments(
        [
            payment("p1", "1.00", "2026-03-02T10:00:00+00:00"),
            payment("bad-currency", "1.00", "2026-03-02T10:00:00+00:00", currency="CHF"),
            payment("p2", "1.00", "2026-03-02T11:00:00+00:00"),
            payment("bad-group", "1.00", "2026-03-02T11:00:00+00:00", group="acme/nope"),
            payment("p1", "1.00", "2026-03-02T10:00:00+00:00"),
            payment("bad-amount", "1.001", "2026-03-02T11:00:00+00:00"),
        ],
        at=RECORDED,
    )
    second = loaded.import_payments(
        [payment("p3", "30.00", "2026-03-03T10:00:00+00:00")], at=RECORDED
    )

    assert [n for n, _ in first.rejected] == [2, 4, 6]
    receipts = first.receipts + second.receipts
    assert receipts == ["RCT-2026-000001", "RCT-2026-000002", "RCT-2026-000003"]
    with loaded.db.transaction() as session:
        stored = session.execute(
            sa.select(t.Payment.reference, t.Payment.receipt_number).order_by(t.Payment.id)
        ).all()
    assert [tuple(row) for row in stored] == list(zip(["p1", "p2", "p3"], receipts, strict=True))


# --- the PostgreSQL COPY path against the SQLite path ----------------------------------------


def mixed_usage_file() -> list[str]:
    """Accepted, duplicate (in the file and stored before) and rejected lines, mixed."""
    odd = "e\tab\\le\nid é ✓"  # COPY's own escapes must not leak into the stored id
    return [
        event("stored-1", "requests.GET", "1000", JAN),  # 1: stored by the first import
        event("m-1", "requests.GET", "1000000", JAN),  # 2
        event(odd, "transfer.gb", "0.250000000", "2026-01-10T13:30:00.123456+09:30"),  # 3
        event("m-1", "requests.GET", "5", FEB),  # 4: again in this file
        '{"id": "bad-json", ',  # 5
        event("p", "requests.GET", "1", JAN, project="acme/nope"),  # 6
        event("m", "cpu.seconds", "1", JAN),  # 7
        "",  # 8
        event("m-2", "storage.gb", "12.5", FEB),  # 9
        '{"id": "\udcff\udcfe"}',  # 10: bytes that are not UTF-8, read with surrogateescape
        "[" * 100_000,  # 11
        "\ufeff" + event("bom", "requests.GET", "1", JAN),  # 12: as json.loads would refuse it
        event("stored-2", "requests.GET", "7", FEB),  # 13: stored by the first import
        event("neg", "requests.GET", "-5", JAN),  # 14
        event("m-3", "requests.GET", "3", FEB),  # 15
        event("m-2", "storage.gb", "99", FEB),  # 16: again in this file
        event("m-4", "requests.GET", "4", FEB),  # 17
    ]


def stored_events(service: BillingService) -> list[tuple[Any, ...]]:
    with service.db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                t.UsageEvent.event_id,
                t.Project.key,
                t.BillingGroup.key,
                t.UsageEvent.metric,
                t.UsageEvent.quantity,
                t.UsageEvent.ts,
            )
            .join(t.Project, t.Project.id == t.UsageEvent.project_id)
            .join(t.BillingGroup, t.BillingGroup.id == t.UsageEvent.billing_group_id)
            .order_by(t.UsageEvent.id)
        ).all()
    return [(e, p, g, m, Decimal(q), ts) for e, p, g, m, q, ts in rows]


@pytest.mark.postgres
@pytest.mark.parametrize("batch", [1, 3, 20_000])
@pytest.mark.parametrize("race", [False, True], ids=["", "stored-meanwhile"])
def test_the_copy_path_reports_and_stores_exactly_what_the_sqlite_path_does(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
    race: bool,
) -> None:
    monkeypatch.setattr(ledger, "PG_IMPORT_BATCH", batch)
    monkeypatch.setattr(ledger, "IMPORT_BATCH", batch)
    if race:  # ids stored after the COPY path looked them up, as by a concurrent import
        monkeypatch.setattr(ledger._CopyWriter, "_stored", lambda _self, _ids: set())
    results = []
    for kind in ("sqlite", "postgresql"):
        if kind == "postgresql":
            require_postgres()
        database = Database(new_database_url(kind, request, tmp_path))
        service = BillingService(database)
        try:
            service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
            first = service.import_usage(
                [event("stored-1", "requests.GET", "1000", JAN), mixed_usage_file()[12]]
            )
            assert (first.accepted, first.duplicates, first.rejected) == (2, 0, [])
            report = service.import_usage(mixed_usage_file())
            again = service.import_usage(mixed_usage_file())
            results.append((database.dialect, report, again, stored_events(service)))
        finally:
            database.dispose()

    (_, sqlite_report, sqlite_again, sqlite_rows), (dialect, pg_report, pg_again, pg_rows) = results
    assert dialect == "postgresql"
    assert pg_report == sqlite_report
    assert pg_again == sqlite_again
    assert pg_rows == sqlite_rows
    assert (pg_report.accepted, pg_report.duplicates) == (5, 4)
    assert [n for n, _ in pg_report.rejected] == [5, 6, 7, 10, 11, 12, 14]
    reasons = dict(pg_report.rejected)
    assert (
        reasons[12] == "not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at column 1)"
    )
    assert reasons[10] == "not valid UTF-8 (byte 0xff at column 9)"
    assert reasons[11] == "not valid JSON (nested too deeply)"
    assert (pg_again.accepted, pg_again.duplicates) == (0, 9)
    assert len(pg_rows) == 7
    odd = next(row for row in pg_rows if row[0].startswith("e\t"))
    assert odd[1:] == (
        "web",
        "eng",
        "transfer.gb",
        Decimal("0.250000000"),
        datetime(2026, 1, 10, 4, 0, 0, 123456, tzinfo=UTC),
    )
    assert str(odd[4]) == "0.250000000"  # the quantity as written, scale and all


def test_the_quick_event_reader_agrees_with_the_checked_one() -> None:
    good = json.loads(event("e", "requests.GET", "12.5", JAN))
    variants: list[object] = [
        good,
        {**good, "quantity": 12},
        {**good, "quantity": True},
        {**good, "quantity": "1.0000000001"},
        {**good, "quantity": "1.0000000000"},
        {**good, "quantity": " 5"},
        {**good, "timestamp": "2026-01-10T12:00:00"},
        {**good, "timestamp": "2026-01-10T12:00:00Z"},
        {**good, "project": "acme"},
        {**good, "project": "/web"},
        {**good, "project": "acme/"},
        {**good, "project": "  "},
        {**good, "id": " "},
        {**good, "id": "x" * 128},
        {**good, "id": "x" * 129},
        {**good, "metric": "m" * 101},
        {**good, "metric": 5},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "metric"},
        [good],
        "text",
        None,
    ]
    for value in variants:
        expected: object
        try:
            expected = ledger._read_event(value)
        except InvalidInput as exc:
            expected = str(exc)
        try:
            got: object = ledger._parse_event(value)
        except InvalidInput as exc:
            got = str(exc)
        assert got == expected, value
