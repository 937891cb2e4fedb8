"""The HTTP API of SPEC section 8 over real HTTP against uvicorn."""

from __future__ import annotations

import csv
import io
import json

import httpx
from pypdf import PdfReader

from billing_core.services import BillingService
from bot.api import MAX_ITEMS
from tests.factories import at


def usage(i: int, qty: str = "1000000", **extra: object) -> dict[str, object]:
    return {
        "id": f"u{i}",
        "project": "acme/web",
        "metric": "requests.GET",
        "quantity": qty,
        "timestamp": "2026-01-05T00:00:00+00:00",
        **extra,
    }


def test_usage_round_trip_counts_accepted_duplicates_and_rejections(api: httpx.Client) -> None:
    first = api.post("/api/v1/usage", json=[usage(1), usage(2), usage(3, project="acme/nope")])
    assert first.status_code == 200
    assert first.json()["accepted"] == 2
    assert first.json()["rejected"] == [
        {"index": 2, "reason": "project: no project 'nope' in organization 'acme'"}
    ]
    again = api.post("/api/v1/usage", json=[usage(1), usage(4)])
    assert again.json() == {"accepted": 1, "duplicates": 1, "rejected": []}


def test_a_float_quantity_refuses_that_item_only(api: httpx.Client) -> None:
    body = json.dumps([usage(1), usage(2)]).replace('"1000000"', "1000000.5", 1)
    response = api.post("/api/v1/usage", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json()["accepted"] == 1
    [rejected] = response.json()["rejected"]
    assert rejected["index"] == 0
    assert "decimal string" in rejected["reason"]


def test_a_wrong_or_missing_token_is_refused_and_nothing_lands(
    api: httpx.Client, service: BillingService
) -> None:
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        response = api.post("/api/v1/usage", json=[usage(9)], headers=headers)
        assert response.status_code == 401
    assert api.post("/api/v1/usage", json=[usage(9)]).json()["accepted"] == 1  # not stored before


def test_an_oversized_batch_is_refused(api: httpx.Client) -> None:
    response = api.post("/api/v1/usage", json=[usage(i) for i in range(MAX_ITEMS + 1)])
    assert response.status_code == 422
    assert "at most 10000 items" in response.json()["error"]
    assert api.post("/api/v1/usage", json=[usage(0)]).json()["accepted"] == 1


def test_payments_and_invoice_export(api: httpx.Client, service: BillingService) -> None:
    api.post("/api/v1/usage", json=[usage(1)])
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    pay = {
        "reference": "r1",
        "billing_group": "acme/eng",
        "amount": "0.40",
        "currency": "EUR",
        "method": "card",
        "received_at": "2026-02-03T00:00:00+00:00",
    }
    bad = dict(pay, reference="r2", currency="USD")
    response = api.post("/api/v1/payments", json=[pay, bad, pay])
    assert response.json()["accepted"] == 1
    assert response.json()["duplicates"] == 1
    assert response.json()["rejected"][0]["index"] == 1
    assert response.json()["receipts"] == ["RCT-2026-000001"]
    [invoice] = api.get("/api/v1/invoices", params={"org": "acme"}).json()
    assert (invoice["number"], invoice["status"], invoice["amount_paid"]) == (
        "INV-2026-000001",
        "paid",
        "0.40",
    )
    rows = list(
        csv.DictReader(
            io.StringIO(api.get("/api/v1/invoices", params={"org": "acme", "format": "csv"}).text)
        )
    )
    assert [r["line_metric"] for r in rows] == ["requests.GET"]
    dated = {"org": "acme", "since": "2026-02-01"}  # the January invoice is dated 1 February
    assert len(api.get("/api/v1/invoices", params=dated).json()) == 1
    assert api.get("/api/v1/invoices", params=dict(dated, since="2026-02-02")).json() == []
    assert api.get("/api/v1/invoices", params=dict(dated, since="soon")).status_code == 422
    assert api.get("/api/v1/invoices", params={"org": "nobody"}).status_code == 404


def test_an_invoice_pdf_shows_its_number_and_total(
    api: httpx.Client, service: BillingService
) -> None:
    api.post("/api/v1/usage", json=[usage(1, qty="123456789")])
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    response = api.get("/api/v1/invoices/INV-2026-000001.pdf")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    assert "INV-2026-000001" in text
    assert "€49.38" in text  # 123,456,789 x 0.0000004 = 49.3827156, in the org's en_US
    assert api.get("/api/v1/invoices/INV-2026-999999.pdf").status_code == 404
    unauthorized = api.get("/api/v1/invoices/INV-2026-000001.pdf", headers={"Authorization": ""})
    assert unauthorized.status_code == 401
