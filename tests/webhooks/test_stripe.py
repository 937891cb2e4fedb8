"""Stripe webhooks over real HTTP with real Stripe signatures (the v1 HMAC scheme)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.webhooks import webhook_routes
from tests.factories import at, document, event
from tests.server import serving

SECRET = "whsec_test_secret"  # noqa: S105


def signed(payload: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def invoice_paid(event_id: str, cents: int, group: str = "acme/eng") -> str:
    return json.dumps(
        {
            "id": event_id,
            "type": "invoice.paid",
            "created": 1770000000,
            "data": {
                "object": {
                    "id": "in_123",
                    "object": "invoice",
                    "amount_paid": cents,
                    "currency": "eur",
                    "status_transitions": {"paid_at": 1770300000},
                    "metadata": {"billing_group": group},
                }
            },
        }
    )


@pytest.fixture
def hook(service: BillingService) -> Iterator[httpx.Client]:
    service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
    service.import_usage([event("e", "requests.GET", "1000000", "2026-01-05T00:00:00+00:00")])
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    settings = replace(Settings(), stripe_webhook_secret=SECRET)
    app = Starlette(
        routes=[
            Route("/healthz", lambda r: PlainTextResponse("ok")),
            *webhook_routes(settings, service),
        ]
    )
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def post(client: httpx.Client, payload: str, signature: str) -> httpx.Response:
    return client.post(
        "/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )


def owed(service: BillingService) -> Any:
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    return service.owed(admin, at=at("2026-02-03T00:00:00+00:00"))[0].outstanding.to_str()


def test_a_signed_paid_invoice_is_recorded_once(
    hook: httpx.Client, service: BillingService
) -> None:
    payload = invoice_paid("evt_1", 40)
    first = post(hook, payload, signed(payload))
    assert first.status_code == 200
    assert first.json() == {"recorded": 1, "duplicate": 0, "receipts": ["RCT-2026-000001"]}
    replay = post(hook, payload, signed(payload))
    assert replay.json()["duplicate"] == 1
    assert owed(service) == "0.00"


@pytest.mark.parametrize(
    "signature",
    [
        lambda p: signed(p, secret="whsec_wrong"),
        lambda p: signed(p, timestamp=int(time.time()) - 3600),
        lambda p: "t=1,v1=deadbeef",
        lambda p: "",
    ],
    ids=["wrong-secret", "stale", "garbage", "missing"],
)
def test_a_forged_webhook_is_refused_and_records_nothing(
    hook: httpx.Client, service: BillingService, signature: Any
) -> None:
    payload = invoice_paid("evt_2", 40)
    response = post(hook, payload, signature(payload))
    assert response.status_code == 400
    assert owed(service) == "0.40"


def test_an_event_without_a_billing_group_is_refused_loudly(hook: httpx.Client) -> None:
    body = json.loads(invoice_paid("evt_3", 40))
    body["data"]["object"]["metadata"] = {}
    payload = json.dumps(body)
    response = post(hook, payload, signed(payload))
    assert response.status_code == 422
    assert "billing_group" in response.json()["error"]


def test_other_events_are_acknowledged_and_ignored(hook: httpx.Client) -> None:
    payload = json.dumps({"id": "evt_4", "type": "customer.created", "data": {"object": {}}})
    response = post(hook, payload, signed(payload))
    assert response.status_code == 200
    assert "not a payment" in response.json()["ignored"]
