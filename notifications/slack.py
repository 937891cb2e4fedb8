"""Delivering one outbox row to Slack, and telling which failures are worth another try.

The WebClient is built WITHOUT slack_sdk's retry handlers: retries belong to the outbox, which
records each try before it is made and spaces them out over runs (Retry-After, backoff).
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from babel import Locale
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from billing_core.settings import Settings
from bot.format import parse_locale
from bot.views.base import Reply
from notifications.render import alert_message, invoice_message
from notifications.store import Delivered, Failed, Message, Outcome

log = logging.getLogger(__name__)

SLACK_TIMEOUT_SECONDS = 10
HISTORY_PAGES = 5  # the in-doubt check reads at most this many pages of 200 messages
DEFAULT_RETRY_AFTER = timedelta(seconds=30)

# ok:false errors that say "try again later" rather than "this can never work".
RETRYABLE_ERRORS = frozenset(
    {
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "ratelimited",
        "rate_limited",
        "team_added_to_org",
    }
)
# The token or its scopes are wrong: nothing will go through until an operator fixes them, so
# the run stops and the row keeps its place (each such run still counts as a try).
CONFIG_ERRORS = frozenset(
    {"not_authed", "invalid_auth", "token_revoked", "token_expired", "missing_scope"}
)


def make_client(settings: Settings) -> WebClient:
    """A Web API client for SLACK_API_URL with a short timeout and no automatic retries."""
    return WebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_api_url,
        timeout=SLACK_TIMEOUT_SECONDS,
        retry_handlers=[],
    )


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            return None if value is None else str(value)
    return None


def classify(exc: SlackApiError, *, in_doubt: bool) -> Failed:
    """A Web API refusal as a retry decision."""
    response = exc.response
    status = int(response.status_code)
    data = response.data if isinstance(response.data, dict) else {}
    error = str(data.get("error") or f"HTTP {status}")
    if status == 429:
        raw = _header(response.headers, "retry-after")
        try:
            wait = timedelta(seconds=max(1, int(raw))) if raw else DEFAULT_RETRY_AFTER
        except ValueError:
            wait = DEFAULT_RETRY_AFTER
        return Failed(
            f"ratelimited (Retry-After {int(wait.total_seconds())} s)", False, in_doubt, wait
        )
    if status >= 500 or error in RETRYABLE_ERRORS or error.startswith("Received a response"):
        return Failed(f"{error} (HTTP {status})", False, in_doubt)
    if error in CONFIG_ERRORS:
        return Failed(error, False, in_doubt)
    return Failed(error, True, in_doubt)


def stop_reason(outcome: Outcome) -> str | None:
    """Why the other rows of this run should wait for a later run (a refused bot token).

    A 429 does not stop the run: only its recipient waits for Retry-After (see jobs)."""
    if not isinstance(outcome, Failed) or outcome.retry_after is not None:
        return None
    if outcome.error in CONFIG_ERRORS:
        return f"Slack refused the bot token: {outcome.error}"
    return None


class Deliverer:
    """Posts outbox rows through one WebClient; caches user locales and DMs for one run.

    Several threads may deliver at once: the WebClient makes each call its own HTTP request,
    and the caches only ever gain entries (a race costs one extra look-up at worst).
    """

    def __init__(self, client: WebClient | None, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._locales: dict[str, Locale | None] = {}
        self._dms: dict[str, str] = {}

    @property
    def api(self) -> WebClient:
        if self.client is None:
            raise RuntimeError("this Deliverer has no Slack client (dry run without a token)")
        return self.client

    def deliver(self, message: Message, *, in_doubt: bool) -> Outcome:
        """One try: open the DM, look for an earlier post if in doubt, post."""
        posting = False
        try:
            channel = self.channel_of(message.recipient)
            if in_doubt:
                ts = self.find_posted(channel, message.key)
                if ts is not None:
                    return Delivered(channel, ts, found_in_history=True)
            locale = self.locale_for(message.recipient, message.org_locale)
            reply = render_message(message, locale, payment_url=self.settings.payment_url)
            posting = True
            response = self.api.chat_postMessage(
                channel=channel,
                **reply.message(),
                metadata={
                    "event_type": message.event_type,
                    "event_payload": {
                        "outbox_key": message.key,
                        "invoice": message.number,
                        "step": message.step,
                    },
                },
                unfurl_links=False,
                unfurl_media=False,
            )
            return Delivered(str(response["channel"]), str(response["ts"]))
        except SlackApiError as exc:
            return classify(exc, in_doubt=in_doubt)
        except (OSError, http.client.HTTPException) as exc:
            # A timeout or dropped connection during the post leaves it in doubt: Slack may
            # have stored the message before the answer was lost.
            reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            return Failed(reason, False, in_doubt or posting)

    def channel_of(self, recipient: str) -> str:
        kind, _, ident = recipient.partition(":")
        if kind != "user":
            return ident
        if ident not in self._dms:
            response = self.api.conversations_open(users=ident)
            self._dms[ident] = str(response["channel"]["id"])
        return self._dms[ident]

    def find_posted(self, channel: str, key: str) -> str | None:
        """The ts of a message in ``channel`` whose metadata carries ``key``, if any."""
        cursor: str | None = None
        for _ in range(HISTORY_PAGES):
            page = self.api.conversations_history(
                channel=channel, include_all_metadata=True, limit=200, cursor=cursor
            )
            for item in page.get("messages") or []:
                payload = (item.get("metadata") or {}).get("event_payload") or {}
                if payload.get("outbox_key") == key:
                    return str(item["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                break
        return None

    def locale_for(self, recipient: str, org_locale: str | None) -> Locale:
        """The user's Slack locale (users.info), else the organization's, else DEFAULT_LOCALE."""
        kind, _, ident = recipient.partition(":")
        user_locale: Locale | None = None
        if kind == "user" and self.client is not None:
            if ident not in self._locales:
                response = self.client.users_info(user=ident, include_locale=True)
                self._locales[ident] = parse_locale((response.get("user") or {}).get("locale"))
            user_locale = self._locales[ident]
        return user_locale or parse_locale(org_locale) or Locale.parse(self.settings.default_locale)


def render_message(message: Message, locale: Locale, *, payment_url: str | None) -> Reply:
    """The Block Kit message (with its text fallback) for an outbox row."""
    if message.give_up is not None:
        return alert_message(message.give_up)
    return invoice_message(
        message.note,
        reminder=message.event_type == "billing_reminder",
        locale=locale,
        today=message.local_now.date(),
        payment_url=payment_url,
    )
