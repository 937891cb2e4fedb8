"""What Slack knows about a user (locale, guest or not), from users.info, cached for a while."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from babel import Locale
from slack_sdk import WebClient

from bot.format import parse_locale

log = logging.getLogger("billing_bot.directory")


@dataclass(frozen=True, slots=True)
class Profile:
    locale: Locale | None
    is_guest: bool


class Directory:
    """users.info answers per (team, user), kept ``ttl`` seconds.

    Locales and guest flags change rarely, and asking Slack on every command would spend the
    users.info rate limit (Tier 4) on repeats.
    """

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Profile]] = {}
        self._lock = threading.Lock()

    def profile(self, client: WebClient, *, team_id: str, user_id: str) -> Profile:
        """The user's locale and guest flag; a failed lookup counts as a guest (fail closed)."""
        slot = (team_id, user_id)
        with self._lock:
            hit = self._cache.get(slot)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        try:
            user = client.users_info(user=user_id, include_locale=True)["user"]
        except Exception as exc:  # any failure: answer anyway, without Slack's view of the user
            log.warning("users.info failed for %s in %s: %s", user_id, team_id, _reason(exc))
            # Not cached: the next request asks again. Members are unaffected (the database
            # says who they are); only open-read access for non-members is withheld.
            return Profile(locale=None, is_guest=True)
        profile = Profile(
            locale=parse_locale(user.get("locale")),
            is_guest=bool(user.get("is_restricted") or user.get("is_ultra_restricted")),
        )
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[slot] = (self.clock() + self.ttl, profile)
        return profile


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    error = response.get("error") if response is not None and hasattr(response, "get") else None
    return str(error) if error else type(exc).__name__
