"""The Slack app: Bolt listeners in front of bot.handlers.

A slash command is worked out in the worker pool while the request thread waits up to
ANSWER_IN_ACK_WITHIN: an answer ready by then goes back in the ack itself (one round trip, the
usual case); otherwise the ack goes empty and the answer follows through response_url when it
is ready, so even a locked database or a busy pool cannot make Slack see a timeout. Every
other listener acks at once, without touching the database, and does its work in a Bolt lazy
listener (``process_before_response=True``). Answers go privately to the asker: ephemeral
(in the ack or through response_url), the DM itself, or chat.postEphemeral for @mentions.
Files (invoice PDFs, usage charts, the export) are uploaded to the asker's DM first
(files_upload_v2), and the answer then says where they went, or that Slack refused them.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.error import HTTPError

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.authorization.authorize import InstallationStoreAuthorize
from slack_bolt.oauth.oauth_settings import OAuthSettings
from slack_sdk import WebClient, WebhookClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.web import SlackResponse

from billing_core.services import BillingService
from billing_core.settings import Settings
from bot import views
from bot.commands import strip_invocation
from bot.directory import Directory
from bot.handlers import Asker, Clock, Handlers, Outcome
from bot.views.admin import CANCEL_ACTION, CONFIRM_ACTION
from bot.views.invoices import PAY_ACTION, PDF_ACTION

log = logging.getLogger("billing_bot.slack")

# What the app asks for when installed (OAuth mode); the manifest lists the same.
SCOPES = (
    "commands",
    "chat:write",
    "app_mentions:read",
    "im:history",
    "users:read",
    "im:write",  # conversations.open: files go to the asker's DM
    "files:write",  # files_upload_v2
)
# How long a slash command's ack waits for its answer (Slack wants the ack within 3 s).
ANSWER_IN_ACK_WITHIN = 1.0
INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"
OAUTH_STATE_SECONDS = 600


class _TokenFromEnvironmentNotice(logging.Filter):
    """Drop Bolt's "`token` will be unused" warning.

    Bolt reads SLACK_BOT_TOKEN from the environment by itself and warns that it is ignored when
    a client is given; our client already carries that very token (or OAuth supplies one).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


_BOLT_APP_LOGGER = logging.getLogger("slack_bolt.App")
if not any(isinstance(f, _TokenFromEnvironmentNotice) for f in _BOLT_APP_LOGGER.filters):
    _BOLT_APP_LOGGER.addFilter(_TokenFromEnvironmentNotice())


def build_app(
    settings: Settings,
    service: BillingService,
    *,
    clock: Clock | None = None,
    executor: Executor | None = None,
    socket_mode: bool = False,
    answer_within: float = ANSWER_IN_ACK_WITHIN,
) -> App:
    """A Bolt app answering SPEC 6, in single-token or OAuth (multi-workspace) mode.

    OAuth mode is chosen when SLACK_CLIENT_ID/SECRET are set; its installations and OAuth
    states live in the billing database. Over HTTP, SLACK_SIGNING_SECRET is required.
    """
    if not socket_mode:
        settings.require("slack_signing_secret")
    handlers = Handlers(
        service,
        command=settings.slack_command,
        payment_url=settings.payment_url,
        default_locale=settings.default_locale,
        clock=clock,
        seller_name=settings.seller_name,
        seller_address=settings.seller_address,
    )
    oauth = bool(settings.slack_client_id or settings.slack_client_secret)
    client = WebClient(
        token=None if oauth else settings.slack_bot_token,
        base_url=settings.slack_api_url,
        retry_handlers=[
            ConnectionErrorRetryHandler(),
            RateLimitErrorRetryHandler(max_retry_count=2),
        ],
    )
    work = executor or ThreadPoolExecutor(thread_name_prefix="billing-slack")
    common: dict[str, Any] = {
        "client": client,
        "signing_secret": settings.slack_signing_secret or "",
        "process_before_response": True,
        "listener_executor": work,
    }
    if oauth:
        app = App(**common, **_oauth(settings, service, client))
    else:
        settings.require("slack_bot_token")
        app = App(**common)
    bot = SlackBot(
        handlers, audit_channel=settings.audit_channel, work=work, answer_within=answer_within
    )
    bot.register(app, settings.slack_command)
    return app


def _oauth(settings: Settings, service: BillingService, client: WebClient) -> dict[str, Any]:
    # Imported here: only OAuth mode needs them (and through them SQLAlchemy's asyncio extra).
    from slack_sdk.oauth.installation_store.sqlalchemy import (  # noqa: PLC0415
        SQLAlchemyInstallationStore,
    )
    from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore  # noqa: PLC0415

    settings.require("slack_client_id", "slack_client_secret")
    if settings.slack_bot_token:
        log.warning("SLACK_CLIENT_ID is set: OAuth mode, SLACK_BOT_TOKEN is not used")
    client_id, secret = settings.slack_client_id, settings.slack_client_secret
    assert client_id is not None and secret is not None  # noqa: S101 - required just above
    engine = service.db.engine
    installations = SQLAlchemyInstallationStore(client_id=client_id, engine=engine)
    states = SQLAlchemyOAuthStateStore(expiration_seconds=OAUTH_STATE_SECONDS, engine=engine)
    # The slack_sdk tables sit beside the billing schema; create_all only adds missing ones.
    installations.create_tables()  # type: ignore[no-untyped-call]
    states.create_tables()  # type: ignore[no-untyped-call]
    return {
        "user_facing_authorize_error_message": (
            "This workspace has no installation of the billing app. "
            f"An admin of the workspace can install it at {INSTALL_PATH} on this app's server."
        ),
        "oauth_settings": OAuthSettings(
            client_id=client_id,
            client_secret=secret,
            scopes=list(SCOPES),
            installation_store=installations,
            state_store=states,
            install_path=INSTALL_PATH,
            redirect_uri_path=REDIRECT_PATH,
        ),
        # Cached, so that after a workspace's first request the ack no longer waits on the
        # database to find its bot token.
        "authorize": InstallationStoreAuthorize(
            logger=log,
            installation_store=installations,
            client_id=client_id,
            client_secret=secret,
            cache_enabled=True,
            client=client,
        ),
    }


def _ack(ack: Any) -> None:
    ack()


def is_user_dm(event: dict[str, Any]) -> bool:
    """A person's own message in a DM with the bot (not an edit, not a bot's post)."""
    return (
        event.get("channel_type") == "im"
        and event.get("subtype") is None
        and not event.get("bot_id")
        and bool(event.get("user"))
    )


def skip_timeout_retries(req: BoltRequest, next_: Any) -> BoltResponse | None:
    """Drop Events API retries caused by a slow ack: the first delivery is already handled.

    Our ack is immediate, so ``http_timeout`` means the network was slow, not that the work was
    lost; answering twice would post the same reply twice. Other retries are processed.
    """
    reason = req.headers.get("x-slack-retry-reason", [""])
    if reason and reason[0] == "http_timeout":
        return BoltResponse(status=200, body="")
    result: BoltResponse | None = next_()
    return result


class DeliveryError(Exception):
    """Slack did not take an answer."""


class SlackBot:
    """Listeners: each acks, then (lazily) asks bot.handlers and delivers the answer."""

    def __init__(
        self,
        handlers: Handlers,
        *,
        audit_channel: str | None,
        directory: Directory | None = None,
        work: Executor | None = None,
        answer_within: float = ANSWER_IN_ACK_WITHIN,
    ) -> None:
        self.handlers = handlers
        self.audit_channel = audit_channel
        self.directory = directory or Directory()
        self.work = work or ThreadPoolExecutor(thread_name_prefix="billing-slack")
        self.answer_within = answer_within

    def register(self, app: App, command: str) -> None:
        app.middleware(skip_timeout_retries)
        app.command(command)(self.on_command)
        app.action(re.compile(f"^({CONFIRM_ACTION}|{CANCEL_ACTION})$"))(
            ack=_ack, lazy=[self.on_button]
        )
        app.action(PDF_ACTION)(ack=_ack, lazy=[self.on_download])
        # A URL button still sends Slack an interaction; ack it so the user sees no warning.
        app.action(PAY_ACTION)(_ack)
        app.event("app_mention")(ack=_ack, lazy=[self.on_mention])
        app.event("message", matchers=[is_user_dm])(ack=_ack, lazy=[self.on_dm])
        app.event("message")(_ack)  # edits, bot posts, channel chatter: nothing to answer
        app.event("app_home_opened")(ack=_ack, lazy=[self.on_home])
        app.error(self.on_error)

    # -- listeners ------------------------------------------------------------------------

    def on_command(self, ack: Any, body: dict[str, Any], client: WebClient) -> None:
        """In the request thread: the answer in the ack if it is ready within answer_within,
        else an empty ack now and the answer through response_url once it is."""
        job = self.work.submit(self._command, body, client)
        try:
            outcome = job.result(timeout=self.answer_within) if self.answer_within > 0 else None
        except FutureTimeout:
            outcome = None
        except Exception as exc:
            ack(**_failed(exc, body).message())
            return
        if outcome is None:
            ack()
            url = body.get("response_url")
            job.add_done_callback(lambda done: self._answer_later(url, client, done))
            return
        ack(response_type="ephemeral", **outcome.reply.message())
        if outcome.change is not None and self.audit_channel:
            self.work.submit(self._audit, client, outcome)

    def _command(self, body: dict[str, Any], client: WebClient) -> Outcome:
        asker = self._asker(client, body.get("team_id"), body.get("user_id"))
        return self._hand_over(client, asker, self.handlers.command(asker, body.get("text") or ""))

    def _answer_later(self, url: object, client: WebClient, done: Future[Outcome]) -> None:
        """The answer that missed the ack, through response_url; in the pool, never in the
        request thread (which may not have sent the ack yet)."""

        def deliver() -> None:
            try:
                outcome = done.result()
            except Exception as exc:
                outcome = Outcome(_failed(exc, {}), None)
            self._respond(url, outcome, replace=False)
            self._audit(client, outcome)

        self.work.submit(deliver)

    # -- lazy listeners (they run after the ack) -----------------------------------------

    def on_button(self, body: dict[str, Any], client: WebClient) -> None:
        asker, action = self._clicked(client, body)
        outcome = self.handlers.button(asker, action.get("action_id", ""), action.get("value", ""))
        # Replacing the question removes its buttons: a second click has nothing to press.
        self._respond(body.get("response_url"), outcome, replace=True)
        self._audit(client, outcome)

    def on_download(self, body: dict[str, Any], client: WebClient) -> None:
        asker, action = self._clicked(client, body)
        outcome = self.handlers.button(asker, PDF_ACTION, action.get("value", ""))
        outcome = self._hand_over(client, asker, outcome)
        # Answered beside the invoice, not in its place: it keeps its buttons.
        self._respond(body.get("response_url"), outcome, replace=False)

    def on_dm(self, body: dict[str, Any], event: dict[str, Any], client: WebClient) -> None:
        asker = self._asker(client, body.get("team_id"), event.get("user"))
        text = strip_invocation(event.get("text") or "", command=self.handlers.command_name)
        outcome = self._hand_over(client, asker, self.handlers.command(asker, text))
        self._deliver(
            "DM answer",
            lambda: client.chat_postMessage(
                channel=event["channel"],
                thread_ts=event.get("thread_ts"),
                **outcome.reply.message(),
            ),
        )
        self._audit(client, outcome)

    def on_mention(self, body: dict[str, Any], event: dict[str, Any], client: WebClient) -> None:
        asker = self._asker(client, body.get("team_id"), event.get("user"))
        text = strip_invocation(event.get("text") or "", command=self.handlers.command_name)
        outcome = self._hand_over(client, asker, self.handlers.command(asker, text))
        self._deliver(
            "mention answer",
            lambda: client.chat_postEphemeral(
                channel=event["channel"],
                user=event["user"],
                thread_ts=event.get("thread_ts"),
                **outcome.reply.message(),
            ),
        )
        self._audit(client, outcome)

    def on_home(self, body: dict[str, Any], event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab", "home") != "home":
            return
        asker = self._asker(client, body.get("team_id"), event.get("user"))
        view = views.home_view(self.handlers.home(asker))
        self._deliver("home tab", lambda: client.views_publish(user_id=event["user"], view=view))

    def on_error(self, error: Exception, body: dict[str, Any]) -> None:
        """Bolt's last resort (a listener raised before our own error path could answer)."""
        log.error(
            "unhandled error in a Slack listener (%s, team %s)",
            type(error).__name__,
            body.get("team_id") or (body.get("team") or {}).get("id"),
            exc_info=error,
        )

    # -- delivery ------------------------------------------------------------------------

    def _clicked(self, client: WebClient, body: dict[str, Any]) -> tuple[Asker, dict[str, Any]]:
        """Who clicked, and the action they clicked."""
        user = body.get("user") or {}
        team = (body.get("team") or {}).get("id") or user.get("team_id")
        action: dict[str, Any] = (body.get("actions") or [{}])[0]
        return self._asker(client, team, user.get("id")), action

    def _asker(self, client: WebClient, team_id: object, user_id: object) -> Asker:
        team, user = str(team_id or ""), str(user_id or "")
        profile = self.directory.profile(client, team_id=team, user_id=user)
        return Asker(team, user, is_guest=profile.is_guest, locale=profile.locale)

    def _respond(self, url: object, outcome: Outcome, *, replace: bool) -> None:
        """Answer through response_url: ephemeral, or in place of the message clicked."""
        if not isinstance(url, str) or not url:
            log.error("a request without response_url cannot be answered")
            return
        payload: dict[str, Any] = {**outcome.reply.message()}
        if replace:
            payload["replace_original"] = True
        else:
            payload["response_type"] = "ephemeral"
        webhook = WebhookClient(
            url,
            retry_handlers=[
                ConnectionErrorRetryHandler(),
                RateLimitErrorRetryHandler(max_retry_count=2),
                ServerErrorRetryHandler(max_retry_count=2),
            ],
        )

        def send() -> None:
            response = webhook.send_dict(payload)
            if response.status_code != 200:
                raise DeliveryError(f"response_url answered HTTP {response.status_code}")

        self._deliver("response_url answer", send)

    def _hand_over(self, client: WebClient, asker: Asker, outcome: Outcome) -> Outcome:
        """Upload the outcome's files to the asker's DM; the answer says where they went.

        When Slack does not take them, the answer says so instead (with a reference for the
        log): the files were made, but the user has nothing, and must not be told otherwise.
        """
        files = outcome.files
        if files is None:
            return outcome
        try:
            dm = client.conversations_open(users=asker.user_id)["channel"]["id"]
            client.files_upload_v2(
                channel=dm,
                file_uploads=[
                    {"filename": u.filename, "title": u.title, "content": u.content}
                    for u in files.uploads
                ],
                initial_comment=files.comment,
            )
        except Exception as exc:
            if isinstance(exc, HTTPError):
                exc.close()  # slack_sdk's upload step leaves urllib's failed response open
            reference = uuid.uuid4().hex[:10]
            log.error(
                "could not upload %s for user %s in %s (reference %s): %s",
                ", ".join(u.filename for u in files.uploads),
                asker.user_id,
                asker.team_id,
                reference,
                _reason(exc),
            )
            failed = views.upload_failed(reference, count=len(files.uploads))
            return Outcome(failed, outcome.change)
        count = len(files.uploads)
        where = (
            "The file is" if count == 1 else f"The {count} files are"
        ) + " in your direct messages with me."
        return Outcome(views.delivered(outcome.reply, where), outcome.change)

    def _audit(self, client: WebClient, outcome: Outcome) -> None:
        """Post an admin change to AUDIT_CHANNEL (the service already wrote the audit log)."""
        change = outcome.change
        if change is None or not self.audit_channel:
            return
        channel = self.audit_channel
        line = views.audit_line(change)
        self._deliver(
            f"audit line for {change.action} {change.subject}",
            lambda: client.chat_postMessage(channel=channel, **line.message()),
        )

    @staticmethod
    def _deliver(what: str, send: Callable[[], object]) -> None:
        # The work is done and committed; a failed delivery can only be logged (never raised
        # into Bolt, which would log the request body).
        try:
            send()
        except Exception as exc:
            log.error("could not deliver the %s: %s", what, _reason(exc))


def _failed(exc: Exception, body: dict[str, Any]) -> views.Reply:
    """A command that raised where no refusal was expected: logged with a reference (never
    the request, which may hold a token), and the asker told so rather than left waiting."""
    reference = uuid.uuid4().hex[:10]
    log.error(
        "a /billing command failed (team %s, reference %s)",
        body.get("team_id"),
        reference,
        exc_info=exc,
    )
    return views.apology(reference)


def _reason(exc: Exception) -> str:
    """Slack's error code when there is one (never the request, which may hold a token)."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, SlackResponse):
        return str(response.get("error") or response.status_code)
    return f"{type(exc).__name__}: {exc}"
