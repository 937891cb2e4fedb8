"""OAuth (multi-workspace) mode: installations and OAuth states in the billing database."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa
from slack_sdk.oauth.installation_store import Installation
from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore

from billing_core.services import BillingService
from tests.slack.conftest import DEV, NOW, Clock, running, slack_settings
from tests.slack.slackside import as_text
from tests.slack_emulator import SlackEmulator

CLIENT_ID = "111.222"


def oauth_settings(emulator: SlackEmulator, db_url: str):  # type: ignore[no-untyped-def]
    return slack_settings(
        emulator,
        db_url,
        SLACK_BOT_TOKEN="",
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET="oauth-client-secret",
    )


def install(service: BillingService, emulator: SlackEmulator) -> None:
    """What the OAuth redirect stores once Slack has granted the installation."""
    store = SQLAlchemyInstallationStore(client_id=CLIENT_ID, engine=service.db.engine)
    store.save(
        Installation(
            app_id=emulator.app_id,
            team_id=emulator.team_id,
            bot_token=emulator.bot_token,
            bot_id=emulator.bot_id,
            bot_user_id=emulator.bot_user_id,
            bot_scopes="commands,chat:write,app_mentions:read,im:history,users:read",
            user_id="U0ADMIN",
            installed_at=datetime(2026, 3, 1, tzinfo=UTC).timestamp(),
        )
    )


def test_an_installed_workspace_is_answered_with_its_stored_bot_token(
    billed: BillingService, emulator: SlackEmulator, db_url: str
) -> None:
    settings = oauth_settings(emulator, db_url)
    with running(settings, billed, emulator, Clock(NOW)) as slack:
        install(billed, emulator)
        assert "€1,469.06 unpaid" in as_text(slack.ask("U0ADMIN", "owed"))
        assert "1.469,06 € unpaid" in as_text(slack.ask_dm(DEV, "owed"))
    tables = sa.inspect(billed.db.engine).get_table_names()
    assert {"slack_installations", "slack_bots", "slack_oauth_states"} <= set(tables)


def test_a_workspace_that_did_not_install_the_app_is_refused(
    billed: BillingService, emulator: SlackEmulator, db_url: str
) -> None:
    with running(oauth_settings(emulator, db_url), billed, emulator) as slack:
        response, key = slack.command(DEV, "owed")
    assert response.status_code == 200
    [answer] = emulator.responses(key)
    assert "This workspace has no installation of the billing app." in answer["text"]


def test_install_page_and_redirect_keep_their_state_in_the_billing_database(
    billed: BillingService, emulator: SlackEmulator, db_url: str
) -> None:
    with running(oauth_settings(emulator, db_url), billed, emulator) as slack:
        page = slack.http.get("/slack/install")
        assert page.status_code == 200
        link = re.search(r'https://slack\.com/oauth/v2/authorize\?[^"]+', page.text)
        assert link and f"client_id={CLIENT_ID}" in link.group(0)
        state = re.search(r"state=([0-9a-f-]+)", link.group(0))
        assert state
        with billed.db.engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT state FROM slack_oauth_states")).all()
        assert [row[0] for row in stored] == [state.group(1)]

        forged = slack.http.get(
            "/slack/oauth_redirect",
            params={"code": "x", "state": "forged"},
            headers={"Cookie": "slack-app-oauth-state=forged"},
        )
        assert forged.status_code == 401

        granted = slack.http.get(
            "/slack/oauth_redirect",
            params={"code": "code-from-slack", "state": state.group(1)},
            headers={"Cookie": f"slack-app-oauth-state={state.group(1)}"},
        )
    # The code is exchanged at SLACK_API_URL (the emulator has no oauth.v2.access: refused).
    assert [c.method for c in emulator.calls_to("oauth.v2.access")] == ["oauth.v2.access"]
    assert granted.status_code >= 400
    with billed.db.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM slack_bots")).scalar() == 0
        assert connection.execute(sa.text("SELECT count(*) FROM slack_oauth_states")).scalar() == 0
