"""The HTTP API of SPEC section 8 under /api/v1: usage and payments in, invoices out.

Bearer-token protected (BILLING_API_TOKEN), JSON in and out, the same validation and
idempotency as the file imports, and per-item errors by index.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

from babel import Locale
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from billing_core.errors import BillingError, NotFound
from billing_core.export import to_csv
from billing_core.ledger import ImportReport
from billing_core.money import FloatLiteral
from billing_core.services import BillingService
from billing_core.settings import Settings
from bot import openapi
from bot.format import parse_locale

log = logging.getLogger(__name__)

MAX_ITEMS = 10_000
MAX_BODY = 16 * 1024 * 1024  # 10,000 events of up to ~1.6 KB each

Handler = Callable[[Request], Awaitable[Response]]


def problem(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _authorized(settings: Settings, request: Request) -> bool:
    expected = settings.billing_api_token
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def protected(settings: Settings, handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        if not settings.billing_api_token:
            return problem(503, "the API is disabled: BILLING_API_TOKEN is not set")
        if not _authorized(settings, request):
            return JSONResponse(
                {"error": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="billing"'},
            )
        try:
            return await handler(request)
        except BillingError as exc:
            status = 404 if isinstance(exc, NotFound) else 422
            return problem(status, str(exc))

    return guarded


async def _items(request: Request) -> list[object] | Response:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        return problem(413, f"the body is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return problem(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    try:
        # Floats stay as written: the item holding one is refused by index, not the batch.
        value = json.loads(b"".join(chunks), parse_float=FloatLiteral)
    except ValueError:  # also bytes that are not UTF-8 (UnicodeDecodeError)
        return problem(400, "the body is not valid JSON")
    except RecursionError:
        return problem(400, "the body is not valid JSON: it nests too deeply")
    if not isinstance(value, list):
        return problem(422, "expected a JSON list of items")
    if len(value) > MAX_ITEMS:
        return problem(422, f"at most {MAX_ITEMS} items per request, got {len(value)}")
    return value


def _report(report: ImportReport) -> JSONResponse:
    body: dict[str, Any] = {
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": [{"index": i, "reason": reason} for i, reason in report.rejected],
    }
    if report.receipts:
        body["receipts"] = report.receipts
    return JSONResponse(body)


def api_routes(settings: Settings, service: BillingService) -> list[BaseRoute]:
    """The /api/v1 routes, ready to mount in the server's Starlette app."""

    async def post_usage(request: Request) -> Response:
        items = await _items(request)
        if isinstance(items, Response):
            return items
        report = await run_in_threadpool(service.import_usage_items, items)
        return _report(report)

    async def post_payments(request: Request) -> Response:
        items = await _items(request)
        if isinstance(items, Response):
            return items
        report = await run_in_threadpool(
            lambda: service.import_payment_items(items, at=datetime.now(UTC))
        )
        return _report(report)

    async def get_invoices(request: Request) -> Response:
        org = request.query_params.get("org")
        if not org:
            return problem(422, "the org query parameter is required")
        since = None
        if raw := request.query_params.get("since"):
            try:
                since = date.fromisoformat(raw)
            except ValueError:
                return problem(422, f"since={raw!r} is not a date such as 2026-01-31")
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "csv"):
            return problem(422, "format is json or csv")
        documents = await run_in_threadpool(
            lambda: service.export_invoices(
                org_key=org, group_key=request.query_params.get("group"), since=since
            )
        )
        if fmt == "csv":
            return PlainTextResponse(to_csv(documents), media_type="text/csv; charset=utf-8")
        return JSONResponse(documents)

    async def get_invoice_pdf(request: Request) -> Response:
        from bot.documents.pdf import render_invoice_pdf  # noqa: PLC0415 - heavy, rarely used

        number = request.path_params["number"]
        invoice = await run_in_threadpool(service.invoice_by_number, number)
        locale = (
            parse_locale(invoice.organization_locale)
            or parse_locale(settings.default_locale)
            or Locale.parse("en_US")
        )
        pdf = await run_in_threadpool(
            lambda: render_invoice_pdf(
                invoice,
                seller_name=settings.seller_name,
                seller_address=settings.seller_address,
                locale=locale,
            )
        )
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{invoice.number}.pdf"'},
        )

    async def get_openapi(request: Request) -> Response:
        return JSONResponse(openapi.document())

    return [
        Route("/api/v1/openapi.json", get_openapi, methods=["GET"]),
        Route("/api/v1/usage", protected(settings, post_usage), methods=["POST"]),
        Route("/api/v1/payments", protected(settings, post_payments), methods=["POST"]),
        Route("/api/v1/invoices", protected(settings, get_invoices), methods=["GET"]),
        Route(
            "/api/v1/invoices/{number}.pdf",
            protected(settings, get_invoice_pdf),
            methods=["GET"],
        ),
    ]
