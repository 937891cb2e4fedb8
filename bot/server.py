"""The ASGI app of ``billing-bot serve``: Slack over HTTP (Bolt's Starlette adapter), health.

Bolt's App is synchronous, and Bolt's own Starlette handler calls it on the event loop; here
each dispatch runs in Starlette's thread pool instead, so one slow request never stalls the
others (or /healthz).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from slack_bolt import App, BoltResponse
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.app import build_app
from bot.handlers import Clock

log = logging.getLogger("billing_bot.server")

MAX_BODY = 1024 * 1024  # Slack's payloads are a few kilobytes
Stop = Callable[[], None]
Start = Callable[[], Stop]


class SlackEndpoints:
    """Starlette endpoints around one Bolt app."""

    def __init__(self, bolt: App) -> None:
        self.bolt = bolt

    async def events(self, request: Request) -> Response:
        body = await _read_body(request)
        if body is None:
            return PlainTextResponse("payload too large", status_code=413)
        bolt_request = to_bolt_request(request, body)
        bolt_response: BoltResponse = await run_in_threadpool(self.bolt.dispatch, bolt_request)
        return to_starlette_response(bolt_response)

    async def install(self, request: Request) -> Response:
        flow = self.bolt.oauth_flow
        assert flow is not None  # noqa: S101 - the route exists only in OAuth mode
        bolt_request = to_bolt_request(request, b"")
        return to_starlette_response(
            await run_in_threadpool(flow.handle_installation, bolt_request)
        )

    async def oauth_redirect(self, request: Request) -> Response:
        flow = self.bolt.oauth_flow
        assert flow is not None  # noqa: S101 - the route exists only in OAuth mode
        bolt_request = to_bolt_request(request, b"")
        return to_starlette_response(await run_in_threadpool(flow.handle_callback, bolt_request))


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None when it is larger than any Slack payload."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    settings: Settings,
    service: BillingService,
    *,
    clock: Clock | None = None,
    background: Sequence[Start] = (),
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """POST /slack/events, GET /healthz, the OAuth routes in OAuth mode, plus ``routes``.

    ``background`` are started with the server and stopped with it (the scheduler).
    """
    executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="billing-slack")
    bolt = build_app(settings, service, clock=clock, executor=executor)
    slack = SlackEndpoints(bolt)

    async def healthz(request: Request) -> Response:
        ok = await run_in_threadpool(_database_answers, service)
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    all_routes: list[BaseRoute] = [
        Route("/slack/events", slack.events, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    flow = bolt.oauth_flow
    if flow is not None:
        all_routes += [
            Route(flow.install_path, slack.install, methods=["GET"]),
            Route(flow.redirect_uri_path, slack.oauth_redirect, methods=["GET"]),
        ]
    all_routes += routes

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stops = [start() for start in background]
        try:
            yield
        finally:
            for stop in reversed(stops):
                await run_in_threadpool(stop)
            # Let lazy listeners finish their answers before the process (or test) goes on.
            await run_in_threadpool(executor.shutdown, True)

    return Starlette(routes=all_routes, lifespan=lifespan)


def _database_answers(service: BillingService) -> bool:
    # A raw cursor: on SQLite a SQLAlchemy transaction starts with BEGIN IMMEDIATE and would
    # wait behind a billing run; a health check must answer at once.
    try:
        connection = service.db.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        finally:
            connection.close()
    except Exception as exc:
        log.warning("health check: the database does not answer (%s)", type(exc).__name__)
        return False
    return True
