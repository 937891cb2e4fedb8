"""The ASGI app of ``billing-bot serve``: Slack over HTTP (Bolt's Starlette adapter), health.

Bolt's App is synchronous, and Bolt's own Starlette handler calls it on the event loop; here
each dispatch runs in Starlette's thread pool instead, so one slow request never stalls the
others (or /healthz).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from slack_bolt import App, BoltResponse
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from billing_core.db.engine import POOL_SIZE
from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.app import build_app
from bot.handlers import Clock
from bot.replay import SeenRequests, malformed, verify

log = logging.getLogger("billing_bot.server")

MAX_BODY = 1024 * 1024  # Slack's payloads are a few kilobytes
T = TypeVar("T")
Stop = Callable[[], None]
Start = Callable[[], Stop]


MAX_IN_FLIGHT = 256  # Slack requests whose lazy work is queued or running (~10 KB each)
BUSY_WAIT = 2.5  # seconds a request may wait for room (Slack wants its ack within 3 s)
HARD_LIMIT = 4  # past BUSY_WAIT, work is still taken up to this many times MAX_IN_FLIGHT
BUSY_TEXT = "The billing bot is busy right now; please try again in a minute."


class LazyWork(ThreadPoolExecutor):
    """The lazy listeners' pool, with a bound on the work in it.

    Slack gets its ack before the answer is worked out; when requests arrive faster than
    answers, an unbounded queue grows (each job holds a copy of its request), and the memory
    it took is not given back. So a request first waits for room (``room``): the ack slows
    down, which slows the sender. The ack cannot wait past BUSY_WAIT, so the work is then
    taken all the same, up to HARD_LIMIT times the bound; beyond that the request is turned
    away with a clear answer instead of queued without end.
    """

    def __init__(self, *, workers: int = POOL_SIZE, in_flight: int | None = None) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="billing-slack")
        self.in_flight = MAX_IN_FLIGHT if in_flight is None else in_flight
        self.hard_limit = self.in_flight * HARD_LIMIT
        self._count = 0
        self._changed = threading.Condition()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._changed:
            self._count += 1

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._changed:
                    self._count -= 1
                    self._changed.notify_all()

        try:
            return super().submit(run)
        except BaseException:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()
            raise

    def room(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for fewer than ``in_flight`` jobs in the pool; False
        when there are still that many and the hard limit is reached too."""
        with self._changed:
            if self._changed.wait_for(lambda: self._count < self.in_flight, timeout):
                return True
            return self._count < self.hard_limit


class SlackEndpoints:
    """Starlette endpoints around one Bolt app.

    ``events`` refuses, before any work: a body over MAX_BODY (413), an unsigned, badly signed
    or stale request (401), an exact replay of one already taken (401), and a signed body that
    is not a Slack payload (400). See ``bot.replay``.
    """

    def __init__(
        self, bolt: App, *, signing_secret: str, seen: SeenRequests, work: LazyWork
    ) -> None:
        self.bolt = bolt
        self.signing_secret = signing_secret
        self.seen = seen
        self.work = work

    async def events(self, request: Request) -> Response:
        body = await _read_body(request)
        if body is None:
            return PlainTextResponse("payload too large", status_code=413)
        timestamp = request.headers.get("x-slack-request-timestamp")
        signature = request.headers.get("x-slack-signature")
        refusal = verify(self.signing_secret, body, timestamp, signature, now=datetime.now(UTC))
        if refusal is not None:
            log.info("slack request refused: %s", refusal.reason)
            return PlainTextResponse("invalid request", status_code=refusal.status)
        why = malformed(body, request.headers.get("content-type"))
        if why is not None:
            log.info("slack request refused: %s", why)
            return PlainTextResponse("malformed payload", status_code=400)
        assert timestamp is not None and signature is not None  # noqa: S101 - verified above
        return await run_in_threadpool(self._take, request, body, timestamp, signature)

    def _take(self, request: Request, body: bytes, timestamp: str, signature: str) -> Response:
        if not self.seen.first_time(signature, timestamp):
            log.info("slack request refused: a replay")
            return PlainTextResponse("invalid request", status_code=401)
        try:
            bolt_request = to_bolt_request(request, body)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError):
            log.info("slack request refused: Bolt cannot read the payload")
            return PlainTextResponse("malformed payload", status_code=400)
        if not self.work.room(BUSY_WAIT):
            log.warning("slack request turned away: %d requests in flight", self.work.hard_limit)
            if bolt_request.body.get("command"):  # a slash command: the ack is the answer
                return JSONResponse({"response_type": "ephemeral", "text": BUSY_TEXT})
            return PlainTextResponse("busy", status_code=503)  # events: Slack retries them
        bolt_response: BoltResponse = self.bolt.dispatch(bolt_request)
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
    executor = LazyWork()
    bolt = build_app(settings, service, clock=clock, executor=executor)
    seen = SeenRequests.for_url(service.db.url)
    slack = SlackEndpoints(
        bolt, signing_secret=settings.slack_signing_secret or "", seen=seen, work=executor
    )

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
            seen.close()

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
