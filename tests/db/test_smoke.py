from decimal import Decimal

from billing_core.services import BillingService
from tests.factories import at, document, event


def test_one_month_of_usage_is_invoiced_once(service: BillingService) -> None:
    service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
    report = service.import_usage(
        [event("e1", "requests.GET", "1000000", "2026-01-05T00:00:00+00:00")]
    )
    assert report.accepted == 1
    first = service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    again = service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    assert first.issued == ["INV-2026-000001"]
    assert again.issued == []
    [doc] = service.export_invoices(org_key="acme")
    assert doc["total"] == "0.40"
    assert Decimal(doc["lines"][0]["quantity"]) == 1000000
