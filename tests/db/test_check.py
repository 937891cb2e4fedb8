"""`billing-bot check` notices every kind of damage it promises to notice."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from billing_core.services import BillingService
from tests.factories import at, document, event, org, payment

pytestmark = pytest.mark.tampered


@pytest.fixture
def billed(service: BillingService) -> BillingService:
    doc = document()
    org(doc)["credits"] = [{"billing_group": "eng", "amount": "0.10"}]
    service.load(doc, at=at("2026-01-01T00:00:00+00:00"))
    service.import_usage(
        [
            event("a", "requests.GET", "1000000", "2026-01-05T00:00:00+00:00"),
            event("b", "requests.GET", "2000000", "2026-02-05T00:00:00+00:00"),
        ]
    )
    service.run_billing(at=at("2026-03-01T00:00:00+00:00"))
    service.import_payments(
        [payment("p1", "0.50", "2026-03-02T00:00:00+00:00")], at=at("2026-03-02T00:00:00+00:00")
    )
    assert service.check() == []
    return service


def tamper(service: BillingService, sql: str) -> list[str]:
    with service.db.engine.begin() as conn:
        conn.execute(sa.text(sql))
    return service.check()


def test_a_changed_total_is_reported(billed: BillingService) -> None:
    problems = tamper(
        billed,
        "UPDATE invoices SET total = '9.99', amount_due = '9.99' WHERE number = 'INV-2026-000001'",
    )
    assert any("INV-2026-000001: total" in p for p in problems)
    assert any("checksum" in p for p in problems)


def test_a_changed_line_is_reported_against_the_usage(billed: BillingService) -> None:
    problems = tamper(billed, "UPDATE invoice_lines SET quantity = '5' WHERE position = 0")
    assert any("lines differ from the usage" in p for p in problems)


def test_a_usage_event_moved_out_of_its_close_is_reported(billed: BillingService) -> None:
    # Past its close's watermark: as if it had arrived after the close.
    problems = tamper(billed, "UPDATE usage_events SET id = id + 1000000 WHERE event_id = 'a'")
    assert any("INV-2026-000001: lines differ" in p for p in problems)


def test_a_gap_in_invoice_numbers_is_reported(billed: BillingService) -> None:
    problems = tamper(billed, "UPDATE counters SET value = 3 WHERE name = 'invoice'")
    assert any("invoice numbers of 2026 are not gapless" in p for p in problems)


def test_an_over_allocated_payment_is_reported(billed: BillingService) -> None:
    problems = tamper(billed, "UPDATE payment_allocations SET amount = '0.45'")
    assert any("payment p1" in p for p in problems)


def test_a_credit_that_does_not_add_up_is_reported(billed: BillingService) -> None:
    problems = tamper(billed, "UPDATE credits SET remaining = '0.05' WHERE payment_id IS NULL")
    assert any("credit" in p and "left" in p for p in problems)
