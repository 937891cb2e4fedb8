"""Billing periods: calendar months in the organization's zone, or subscription anniversaries.

A group's periods are a chain of boundaries starting at its ``created_at``: local month starts
until a subscription begins, the subscription start itself (cutting the running period short),
then the subscription's monthly anniversaries at local midnight, clamped to month end.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing_core.errors import InvalidInput


def require_aware(moment: datetime, what: str = "datetime") -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInput(f"{what} {moment.isoformat()} has no UTC offset")
    return moment


def zone(name: str, *, path: str | None = None) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"{name!r} is not an IANA time zone", path=path) from None


def parse_timestamp(value: object, *, path: str | None = None) -> datetime:
    """ISO 8601 with an explicit offset; naive times are refused."""
    if not isinstance(value, str):
        raise InvalidInput("expected an ISO 8601 timestamp string", path=path)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{value!r} is not an ISO 8601 timestamp", path=path) from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{value!r} has no UTC offset (add +00:00)", path=path)
    return moment


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """Midnight of ``day`` in ``tz`` (for the rare zone that skips midnight, the first instant)."""
    candidate = datetime.combine(day, time(0), tzinfo=tz)
    # A skipped local midnight (DST at 00:00) normalises forward via a UTC round trip.
    return candidate.astimezone(ZoneInfo("UTC")).astimezone(tz)


def add_months(day: date, months: int, anchor_day: int) -> date:
    """The ``anchor_day`` of the month ``months`` after ``day``'s month, clamped to month end."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(anchor_day, last))


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open interval [start, end) of aware datetimes."""

    start: datetime
    end: datetime

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class Schedule:
    """How one billing group's periods run."""

    tz: ZoneInfo
    created_at: datetime
    subscription_start: datetime | None = None

    def _next_month_start(self, after: datetime) -> datetime:
        local = after.astimezone(self.tz).date()
        return local_midnight(add_months(local, 1, 1), self.tz)

    def _next_anniversary(self, after: datetime) -> datetime:
        assert self.subscription_start is not None  # noqa: S101
        start_local = self.subscription_start.astimezone(self.tz).date()
        local = after.astimezone(self.tz).date()
        months = (local.year - start_local.year) * 12 + (local.month - start_local.month)
        k = max(months, 0)
        while True:
            candidate = local_midnight(add_months(start_local, k, start_local.day), self.tz)
            if candidate > after:
                return candidate
            k += 1

    def next_boundary(self, after: datetime) -> datetime:
        """The end of the period that starts at ``after``."""
        sub = self.subscription_start
        if sub is not None and after < sub:
            return min(self._next_month_start(after), sub)
        if sub is not None:
            return self._next_anniversary(after)
        return self._next_month_start(after)

    def first(self) -> Period:
        return Period(self.created_at, self.next_boundary(self.created_at))

    def periods(self) -> Iterator[Period]:
        """Every period from the first on, forever."""
        start = self.created_at
        while True:
            end = self.next_boundary(start)
            yield Period(start, end)
            start = end

    def period_after(self, period: Period) -> Period:
        return Period(period.end, self.next_boundary(period.end))

    def containing(self, moment: datetime) -> Period:
        """The period holding ``moment``; moments before ``created_at`` belong to the first."""
        if moment < self.created_at:
            return self.first()
        # Jump close to the moment instead of walking from created_at one month at a time.
        start = self.created_at
        hop = moment - timedelta(days=40)
        if hop > start:
            if self.subscription_start is not None and self.subscription_start <= hop:
                start = max(self.subscription_start, start)
                start = self._anniversary_on_or_before(hop, start)
            elif self.subscription_start is None or hop < self.subscription_start:
                start = max(start, self._month_start_on_or_before(hop))
        while True:
            end = self.next_boundary(start)
            if moment < end:
                return Period(start, end)
            start = end

    def _month_start_on_or_before(self, moment: datetime) -> datetime:
        local = moment.astimezone(self.tz).date().replace(day=1)
        return local_midnight(local, self.tz)

    def _anniversary_on_or_before(self, moment: datetime, floor: datetime) -> datetime:
        assert self.subscription_start is not None  # noqa: S101
        start_local = self.subscription_start.astimezone(self.tz).date()
        local = moment.astimezone(self.tz).date()
        k = (local.year - start_local.year) * 12 + (local.month - start_local.month) - 1
        if k < 1:
            return floor
        return max(floor, local_midnight(add_months(start_local, k, start_local.day), self.tz))

    def is_subscribed(self, period: Period) -> bool:
        return self.subscription_start is not None and period.start >= self.subscription_start


def local_date(moment: datetime, tz: ZoneInfo) -> date:
    return moment.astimezone(tz).date()
