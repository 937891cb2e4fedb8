"""Socket Mode: the same app without a signing secret, fed envelopes instead of HTTP posts."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from slack_bolt import BoltRequest

from billing_core.db.engine import Database
from billing_core.errors import InvalidInput
from billing_core.services import BillingService
from bot.app import build_app
from tests.slack.conftest import DEV, NOW, Clock, slack_settings
from tests.slack.slackside import as_text, wait_for
from tests.slack_emulator import SlackEmulator


def test_socket_mode_needs_no_signing_secret_and_answers_the_same(
    billed: BillingService, emulator: SlackEmulator, db_url: str
) -> None:
    settings = slack_settings(emulator, db_url, SLACK_SIGNING_SECRET="", SLACK_APP_TOKEN="xapp-1")
    executor = ThreadPoolExecutor(max_workers=2)
    app = build_app(settings, billed, clock=Clock(NOW), executor=executor, socket_mode=True)
    payload = {
        "team_id": "T0ACME",
        "user_id": DEV,
        "command": "/billing",
        "text": "owed",
        "response_url": emulator.response_url("socket"),
        "channel_id": "C0GENERAL",
    }
    try:
        # What SocketModeHandler does with each envelope's payload (a dict, unsigned).
        response = app.dispatch(BoltRequest(mode="socket_mode", body=payload))
        assert response.status == 200
        # The handler sends this body back with the envelope's ack: Slack shows it.
        assert "1.469,06 € unpaid" in as_text(json.loads(response.body))
        # Past the wait for an answer in the ack, it goes through response_url.
        slow = build_app(
            settings, billed, clock=Clock(NOW), executor=executor, socket_mode=True, answer_within=0
        )
        response = slow.dispatch(BoltRequest(mode="socket_mode", body=payload))
        assert response.status == 200 and not response.body
        answer = wait_for(lambda: emulator.responses("socket"), what="the socket-mode answer")
        assert "1.469,06 € unpaid" in as_text(answer[0])
    finally:
        executor.shutdown(wait=True)


def test_over_http_the_signing_secret_is_required(emulator: SlackEmulator, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/unused.db"
    settings = slack_settings(emulator, url, SLACK_SIGNING_SECRET="")
    service = BillingService(Database(url))
    try:
        with pytest.raises(InvalidInput, match="SLACK_SIGNING_SECRET is required"):
            build_app(settings, service)
    finally:
        service.db.dispose()
