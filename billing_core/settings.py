"""Settings, read once from the environment and ``.env``; secrets masked in ``repr``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values

from billing_core.errors import InvalidInput

SECRETS = frozenset(
    {
        "slack_bot_token",
        "slack_signing_secret",
        "slack_app_token",
        "slack_client_secret",
        "billing_api_token",
        "stripe_webhook_secret",
    }
)


def _offsets(raw: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise InvalidInput(
            f"REMINDER_OFFSETS must be whole days separated by commas, got {raw!r}"
        ) from None
    if not values or list(values) != sorted(set(values)):
        raise InvalidInput("REMINDER_OFFSETS must be increasing whole days, such as -3,0,3,7")
    return values


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///billing.db"
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_client_id: str | None = None
    slack_client_secret: str | None = field(default=None, repr=False)
    slack_api_url: str = "https://slack.com/api/"
    slack_command: str = "/billing"
    billing_api_token: str | None = field(default=None, repr=False)
    invoice_prefix: str = "INV"
    reminder_offsets: tuple[int, ...] = (-3, 0, 3, 7)
    audit_channel: str | None = None
    default_locale: str = "en_US"
    payment_url: str | None = None
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    seller_name: str = "billing-bot"
    seller_address: str | None = None

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRETS and value:
                value = "***"
            elif f.name == "database_url":
                value = mask_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
    ) -> Settings:
        """Environment variables win over ``.env``; a malformed value names its variable."""
        values: dict[str, str] = {}
        if env_file is not None and env_file.is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            raw = values.get(f.name.upper())
            if raw is None or raw == "":
                continue
            if f.name == "reminder_offsets":
                kwargs[f.name] = _offsets(raw)
            else:
                kwargs[f.name] = raw.strip()
        settings = cls(**kwargs)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        from babel import Locale, UnknownLocaleError  # noqa: PLC0415
        from sqlalchemy.engine import make_url  # noqa: PLC0415
        from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

        try:
            make_url(self.database_url)
        except (ArgumentError, ValueError) as exc:
            # ValueError: a port that is not a number; neither message may echo the URL.
            why = "a port that is not a number" if isinstance(exc, ValueError) else "unparsable"
            raise InvalidInput(
                f"DATABASE_URL is not a SQLAlchemy URL ({why}): {mask_url(self.database_url)!r}"
            ) from None
        if not self.slack_api_url.startswith(("http://", "https://")):
            raise InvalidInput("SLACK_API_URL must be an http(s) URL")
        if not self.slack_command.startswith("/") or " " in self.slack_command:
            raise InvalidInput(f"SLACK_COMMAND must look like /billing, got {self.slack_command!r}")
        if not self.invoice_prefix.replace("-", "").isalnum():
            raise InvalidInput(
                f"INVOICE_PREFIX may hold letters and digits, got {self.invoice_prefix!r}"
            )
        try:
            Locale.parse(self.default_locale)
        except (UnknownLocaleError, ValueError):
            raise InvalidInput(f"DEFAULT_LOCALE {self.default_locale!r} is not a locale") from None
        if self.payment_url is not None and "{number}" not in self.payment_url:
            raise InvalidInput("PAYMENT_URL must contain {number}, where the invoice number goes")
        if self.audit_channel is not None and self.audit_channel[:1] not in ("C", "G"):
            raise InvalidInput(
                f"AUDIT_CHANNEL must be a channel id such as C0123, got {self.audit_channel!r}"
            )

    def require(self, *names: str) -> None:
        """Fail at start, naming the variable, when a mode needs a setting that is missing."""
        for name in names:
            if not getattr(self, name):
                raise InvalidInput(f"{name.upper()} is required for this command but is not set")


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs and messages.

    A string without ``://`` is not a URL one can split reliably: everything before its last
    ``@`` (where user and password would be) is masked.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***@" + url.rpartition("@")[2] if "@" in url else url
    if "@" not in rest:
        return url
    credentials, at, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
