"""The HTTP latency floor: a Bolt app whose /billing handler only acks, served like ``serve``.

Same Bolt settings as bot.app (signing secret, single bot token, process_before_response),
the same Starlette endpoints from bot.server (the same door: signature, replay record in
DATABASE_URL's ``seen_slack_requests``, payload shape; dispatch in the thread pool) and the same
``uvicorn.run`` call as ``billing-bot serve``. Only the work behind the ack is missing.

    python -m bench.ackonly --port 3100   (reads SLACK_* from the environment)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import uvicorn
from slack_bolt import App
from slack_sdk import WebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.replay import SeenRequests
from bot.server import LazyWork, SlackEndpoints


def create_app() -> Starlette:
    client = WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"])
    bolt = App(
        client=client,
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        process_before_response=True,
    )

    def ack_only(ack: Any) -> None:
        ack()

    bolt.command(os.environ.get("SLACK_COMMAND", "/billing"))(ack_only)
    slack = SlackEndpoints(
        bolt,
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        seen=SeenRequests.for_url(os.environ["DATABASE_URL"]),
        work=LazyWork(),
    )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/slack/events", slack.events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3100)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info", ws="none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
