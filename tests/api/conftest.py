"""The /api/v1 routes served by a real uvicorn on loopback, over a fresh database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.api import api_routes
from tests.factories import at, document
from tests.server import serving

TOKEN = "api-token-for-tests"  # noqa: S105


@pytest.fixture
def api_base(service: BillingService) -> Iterator[str]:
    service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
    settings = replace(Settings(), billing_api_token=TOKEN)
    app = Starlette(
        routes=[
            Route("/healthz", lambda r: PlainTextResponse("ok")),
            *api_routes(settings, service),
        ]
    )
    with serving(app) as base:
        yield base


@pytest.fixture
def api(api_base: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as client:
        yield client
