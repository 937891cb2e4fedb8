"""Slack-facing commands of ``billing-bot`` (serve, socket, console)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from billing_core.db.engine import Database
from billing_core.errors import BillingError
from billing_core.periods import parse_timestamp
from billing_core.services import BillingService
from billing_core.settings import Settings

log = logging.getLogger("billing_bot.slack_cli")

Stop = Callable[[], None]
T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the Slack-facing subcommands to the ``billing-bot`` parser."""
    serve = _add(
        sub,
        "serve",
        cmd_serve,
        "HTTP mode: Slack at POST /slack/events, the /api/v1 API, GET /healthz; runs the scheduler",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=3000, help="port to listen on (default 3000)")
    serve.add_argument("--no-scheduler", action="store_true", help="do not run the scheduler")
    socket = _add(sub, "socket", cmd_socket, "Socket Mode (needs SLACK_APP_TOKEN)")
    socket.add_argument("--no-scheduler", action="store_true", help="do not run the scheduler")
    console = _add(sub, "console", cmd_console, "the /billing commands on stdin, without Slack")
    console.add_argument("--team", required=True, help="Slack team id linked to an organization")
    console.add_argument("--user", required=True, help="Slack user id of the member asking")
    console.add_argument("--locale", help="format as this locale (default: the organization's)")
    console.add_argument("--at", help=argparse.SUPPRESS)


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[Settings, argparse.Namespace], int],
    help_: str,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(func=func)
    return parser


def _service(settings: Settings) -> BillingService:
    return BillingService(Database(settings.database_url), invoice_prefix=settings.invoice_prefix)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    from bot.api import api_routes  # noqa: PLC0415
    from bot.server import create_app  # noqa: PLC0415
    from bot.webhooks import webhook_routes  # noqa: PLC0415

    settings.require("slack_signing_secret")
    service = _service(settings)
    try:
        # The HTTP API (SPEC 8) and the payment webhooks share the server with Slack.
        routes = [*api_routes(settings, service), *webhook_routes(settings, service)]
        background = _scheduler(settings, service, args)
        app = _starting(lambda: create_app(settings, service, background=background, routes=routes))
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", ws="none")
    finally:
        service.db.dispose()
    return 0


def cmd_socket(settings: Settings, args: argparse.Namespace) -> int:
    from slack_bolt.adapter.socket_mode import SocketModeHandler  # noqa: PLC0415

    from bot.app import build_app  # noqa: PLC0415

    settings.require("slack_app_token")
    service = _service(settings)
    stops = [start() for start in _scheduler(settings, service, args)]
    try:
        app = _starting(lambda: build_app(settings, service, socket_mode=True))
        SocketModeHandler(app, settings.slack_app_token).start()  # type: ignore[no-untyped-call]
    finally:
        for stop in reversed(stops):
            stop()
        service.db.dispose()
    return 0


def cmd_console(settings: Settings, args: argparse.Namespace) -> int:
    from bot.console import run_console  # noqa: PLC0415 - each command imports what it runs
    from bot.format import parse_locale  # noqa: PLC0415
    from bot.handlers import Asker, Handlers, utc_now  # noqa: PLC0415

    locale = parse_locale(args.locale)
    if args.locale and locale is None:
        raise BillingError(f"--locale {args.locale!r} is not a locale (try de_DE or en-US)")
    fixed: datetime | None = parse_timestamp(args.at, path="--at") if args.at else None
    service = _service(settings)
    try:
        handlers = Handlers(
            service,
            command=settings.slack_command,
            payment_url=settings.payment_url,
            default_locale=settings.default_locale,
            clock=(lambda: fixed) if fixed is not None else utc_now,
            seller_name=settings.seller_name,
            seller_address=settings.seller_address,
        )
        asker = Asker(team_id=args.team, user_id=args.user, locale=locale)
        return run_console(
            handlers, asker, stdin=sys.stdin, stdout=sys.stdout, interactive=sys.stdin.isatty()
        )
    finally:
        service.db.dispose()


def _starting(build: Callable[[], T]) -> T:
    """Build the app; Slack refusing the token at start is a one-line failure, not a trace."""
    from slack_bolt.error import BoltError  # noqa: PLC0415
    from slack_sdk.errors import SlackClientError  # noqa: PLC0415

    try:
        return build()
    except (BoltError, SlackClientError, OSError) as exc:
        raise BillingError(f"cannot start the Slack app: {exc}") from None


def _scheduler(
    settings: Settings, service: BillingService, args: argparse.Namespace
) -> list[Callable[[], Stop]]:
    """The billing and reminder scheduler, unless --no-scheduler."""
    if args.no_scheduler:
        return []

    def begin() -> Stop:
        from notifications.scheduler import start_scheduler  # noqa: PLC0415

        scheduler = start_scheduler(settings=settings, service=service)
        return lambda: scheduler.shutdown()

    return [begin]
