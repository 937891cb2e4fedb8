"""Payment processor webhooks: ``POST /webhooks/stripe``.

The signature is checked with the ``stripe`` library (STRIPE_WEBHOOK_SECRET, 5-minute tolerance)
before anything is read. A paid Stripe invoice (``invoice.paid``) or a charge that belongs to no
invoice (``charge.succeeded``) is recorded as a payment of the billing group named in its
metadata (``billing_group: ORG/GROUP``). The Stripe object's id is the payment reference, so a
replayed or duplicated event never counts twice.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import stripe
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from billing_core.money import minor_unit_exponent
from billing_core.services import BillingService
from billing_core.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
TOLERANCE_SECONDS = 300
METHODS = {"card": "card", "customer_balance": "bank_transfer", "sepa_debit": "bank_transfer"}


def payment_from_event(event: dict[str, Any]) -> dict[str, str] | str:
    """The payment item (as in SPEC 4.3) an event records, or why it records none."""
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object") or {}
    if kind == "invoice.paid":
        cents, received = (
            obj.get("amount_paid"),
            (obj.get("status_transitions") or {}).get("paid_at"),
        )
    elif kind == "charge.succeeded":
        if obj.get("invoice"):
            return "charge of a Stripe invoice: recorded from invoice.paid"
        cents, received = obj.get("amount"), obj.get("created")
    else:
        return f"{kind} is not a payment"
    group = (obj.get("metadata") or {}).get("billing_group")
    if not isinstance(group, str) or "/" not in group:
        raise ValueError(f"{kind} {obj.get('id')} has no metadata billing_group ORG/GROUP")
    currency = str(obj.get("currency", "")).upper()
    if not isinstance(cents, int) or cents <= 0:
        return f"{kind} {obj.get('id')} paid nothing"
    amount = Decimal(cents).scaleb(-minor_unit_exponent(currency))
    moment = datetime.fromtimestamp(int(received or event.get("created") or 0), tz=UTC)
    method = (obj.get("payment_method_details") or {}).get("type", "card")
    return {
        "reference": f"stripe:{obj['id']}",
        "billing_group": group,
        "amount": str(amount),
        "currency": currency,
        "method": METHODS.get(method, "card"),
        "received_at": moment.isoformat(),
    }


def webhook_routes(settings: Settings, service: BillingService) -> list[BaseRoute]:
    async def stripe_webhook(request: Request) -> Response:
        secret = settings.stripe_webhook_secret
        if not secret:
            return JSONResponse({"error": "STRIPE_WEBHOOK_SECRET is not set"}, status_code=503)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": "body too large"}, status_code=413)
        payload = body.decode("utf-8", errors="replace")
        header = request.headers.get("stripe-signature", "")
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError:
            log.warning("refused a Stripe webhook with a bad or stale signature")
            return JSONResponse({"error": "bad signature"}, status_code=400)
        try:
            event = json.loads(payload)
            item = payment_from_event(event)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("Stripe event could not be recorded: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=422)
        if isinstance(item, str):
            return JSONResponse({"ignored": item})
        report = await run_in_threadpool(
            lambda: service.import_payment_items([item], at=datetime.now(UTC))
        )
        if report.rejected:
            reason = report.rejected[0][1]
            log.error("Stripe event %s refused: %s", event.get("id"), reason)
            return JSONResponse({"error": reason}, status_code=422)
        return JSONResponse(
            {
                "recorded": report.accepted,
                "duplicate": report.duplicates,
                "receipts": report.receipts,
            }
        )

    return [Route("/webhooks/stripe", stripe_webhook, methods=["POST"])]
