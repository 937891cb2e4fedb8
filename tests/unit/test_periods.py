"""Billing periods: local calendar months, subscription anniversaries, time zones (SPEC 5.2)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from billing_core.errors import InvalidInput
from billing_core.periods import (
    Period,
    Schedule,
    add_months,
    local_date,
    local_midnight,
    parse_timestamp,
    require_aware,
    zone,
)

BERLIN = ZoneInfo("Europe/Berlin")
SANTIAGO = ZoneInfo("America/Santiago")


def utc_length(period: Period) -> timedelta:
    # Subtracting two datetimes that share a ZoneInfo gives wall-clock time; elapsed time
    # needs UTC.
    return period.end.astimezone(UTC) - period.start.astimezone(UTC)


def first_periods(schedule: Schedule, count: int) -> list[Period]:
    return list(islice(schedule.periods(), count))


def berlin(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=BERLIN)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_periods_are_calendar_months_in_the_organizations_zone() -> None:
    schedule = Schedule(BERLIN, created_at=berlin(2026, 1, 1))

    starts = [p.start for p in first_periods(schedule, 4)]

    assert starts == [
        berlin(2026, 1, 1),
        berlin(2026, 2, 1),
        berlin(2026, 3, 1),
        berlin(2026, 4, 1),
    ]
    # Local midnight in winter is 23:00 UTC the evening before.
    assert starts[1].astimezone(UTC) == utc(2026, 1, 31, 23)


def test_october_period_in_berlin_spans_the_dst_change_and_lasts_31_days_and_an_hour() -> None:
    schedule = Schedule(BERLIN, created_at=berlin(2026, 8, 1))

    october = schedule.containing(berlin(2026, 10, 15))

    # 1 Oct 00:00 CEST (+02:00) is 30 Sep 22:00 UTC; 1 Nov 00:00 CET (+01:00) is 31 Oct 23:00 UTC.
    assert october.start.astimezone(UTC) == utc(2026, 9, 30, 22)
    assert october.end.astimezone(UTC) == utc(2026, 10, 31, 23)
    # Clocks went back on 25 Oct, so the month holds one extra hour: 31 days + 1 hour.
    assert utc_length(october) == timedelta(days=31, hours=1)


def test_march_period_in_berlin_is_an_hour_short() -> None:
    schedule = Schedule(BERLIN, created_at=berlin(2027, 1, 1))

    march = schedule.containing(berlin(2027, 3, 20))

    # 1 Mar 00:00 CET = 28 Feb 23:00 UTC; 1 Apr 00:00 CEST = 31 Mar 22:00 UTC: 31 days - 1 hour.
    assert (march.start, march.end) == (berlin(2027, 3, 1), berlin(2027, 4, 1))
    assert utc_length(march) == timedelta(days=30, hours=23)


def test_first_period_starts_at_created_at_and_ends_at_the_next_month_start() -> None:
    created = utc(2026, 3, 17, 10, 30)
    schedule = Schedule(ZoneInfo("UTC"), created_at=created)

    assert schedule.first() == Period(created, utc(2026, 4, 1))
    assert first_periods(schedule, 2) == [
        Period(created, utc(2026, 4, 1)),
        Period(utc(2026, 4, 1), utc(2026, 5, 1)),
    ]


def test_subscription_anchored_on_the_31st_clamps_through_a_leap_february() -> None:
    schedule = Schedule(
        ZoneInfo("UTC"), created_at=utc(2028, 1, 1), subscription_start=utc(2028, 1, 31)
    )

    periods = first_periods(schedule, 6)

    # The month start runs until the subscription starts, then the 31st clamped to month end:
    # Jan 31 -> Feb 29 (2028 is a leap year) -> Mar 31 -> Apr 30 -> May 31 -> Jun 30.
    assert [(p.start, p.end) for p in periods] == [
        (utc(2028, 1, 1), utc(2028, 1, 31)),
        (utc(2028, 1, 31), utc(2028, 2, 29)),
        (utc(2028, 2, 29), utc(2028, 3, 31)),
        (utc(2028, 3, 31), utc(2028, 4, 30)),
        (utc(2028, 4, 30), utc(2028, 5, 31)),
        (utc(2028, 5, 31), utc(2028, 6, 30)),
    ]


def test_clamping_does_not_stick_after_a_short_month() -> None:
    # Anchored on the 30th: Feb 2027 has 28 days, March goes back to the 30th, not the 28th.
    schedule = Schedule(
        ZoneInfo("UTC"), created_at=utc(2027, 1, 30), subscription_start=utc(2027, 1, 30)
    )

    ends = [p.end for p in first_periods(schedule, 3)]

    assert ends == [utc(2027, 2, 28), utc(2027, 3, 30), utc(2027, 4, 30)]


def test_subscription_starting_mid_period_cuts_the_running_period_at_its_start() -> None:
    schedule = Schedule(
        BERLIN, created_at=berlin(2026, 8, 1), subscription_start=berlin(2026, 9, 15)
    )

    periods = first_periods(schedule, 4)

    assert [(p.start, p.end) for p in periods] == [
        (berlin(2026, 8, 1), berlin(2026, 9, 1)),
        (berlin(2026, 9, 1), berlin(2026, 9, 15)),  # cut short by the subscription
        (berlin(2026, 9, 15), berlin(2026, 10, 15)),
        (berlin(2026, 10, 15), berlin(2026, 11, 15)),  # local midnight on both sides of DST
    ]
    assert not schedule.is_subscribed(periods[1])
    assert schedule.is_subscribed(periods[2])


def test_anniversaries_begin_at_local_midnight_even_when_the_subscription_starts_later() -> None:
    start = berlin(2026, 9, 15, 14)
    schedule = Schedule(BERLIN, created_at=berlin(2026, 9, 1), subscription_start=start)

    periods = first_periods(schedule, 3)

    assert [p.start for p in periods] == [berlin(2026, 9, 1), start, berlin(2026, 10, 15)]


def test_subscription_before_created_at_anchors_the_first_period() -> None:
    schedule = Schedule(
        ZoneInfo("UTC"), created_at=utc(2026, 5, 10), subscription_start=utc(2026, 1, 20)
    )

    assert first_periods(schedule, 2) == [
        Period(utc(2026, 5, 10), utc(2026, 5, 20)),
        Period(utc(2026, 5, 20), utc(2026, 6, 20)),
    ]


def test_a_skipped_local_midnight_starts_the_period_at_the_first_instant_of_the_day() -> None:
    # Chile moved clocks from 00:00 to 01:00 on 7 Sep 2025: that day has no midnight.
    schedule = Schedule(
        SANTIAGO,
        created_at=datetime(2025, 7, 1, tzinfo=SANTIAGO),
        subscription_start=datetime(2025, 7, 7, tzinfo=SANTIAGO),
    )

    september = schedule.containing(datetime(2025, 9, 10, tzinfo=SANTIAGO))

    # 00:00 at -04:00 would be 04:00 UTC, which is 01:00 at the new offset -03:00.
    assert september.start.astimezone(UTC) == utc(2025, 9, 7, 4)
    assert september.start.astimezone(SANTIAGO).hour == 1
    assert local_midnight(date(2025, 9, 7), SANTIAGO).astimezone(UTC) == utc(2025, 9, 7, 4)


def test_period_is_half_open() -> None:
    period = Period(utc(2026, 1, 1), utc(2026, 2, 1))

    assert utc(2026, 1, 1) in period
    assert utc(2026, 1, 31, 23, 59) in period
    assert utc(2026, 2, 1) not in period
    assert utc(2025, 12, 31, 23, 59) not in period


def test_a_moment_on_a_boundary_belongs_to_the_period_it_starts() -> None:
    schedule = Schedule(BERLIN, created_at=berlin(2026, 1, 1))

    period = schedule.containing(berlin(2026, 3, 1))

    assert period == Period(berlin(2026, 3, 1), berlin(2026, 4, 1))
    assert schedule.containing(period.start - timedelta(microseconds=1)).end == period.start


def test_moments_before_created_at_belong_to_the_first_period() -> None:
    schedule = Schedule(BERLIN, created_at=berlin(2026, 8, 1))

    assert schedule.containing(berlin(2026, 7, 20)) == schedule.first()


def test_containing_agrees_with_walking_the_periods_years_later() -> None:
    # Far enough from created_at that containing() takes its shortcut instead of walking.
    schedule = Schedule(
        BERLIN, created_at=berlin(2026, 8, 1), subscription_start=berlin(2027, 1, 31)
    )
    moments = [berlin(2029, 3, 30, 23), berlin(2029, 2, 28), berlin(2030, 12, 31, 12)]

    for moment in moments:
        walked = next(p for p in schedule.periods() if moment < p.end)
        assert schedule.containing(moment) == walked
        assert moment in walked


def test_period_after_is_the_next_period() -> None:
    schedule = Schedule(BERLIN, created_at=berlin(2026, 8, 1))
    first, second = first_periods(schedule, 2)

    assert schedule.period_after(first) == second


@pytest.mark.parametrize(
    ("day", "months", "anchor", "expected"),
    [
        (date(2028, 1, 31), 1, 31, date(2028, 2, 29)),
        (date(2027, 1, 31), 1, 31, date(2027, 2, 28)),
        (date(2028, 2, 29), 1, 31, date(2028, 3, 31)),
        (date(2026, 11, 15), 2, 15, date(2027, 1, 15)),
        (date(2026, 12, 1), 1, 1, date(2027, 1, 1)),
    ],
)
def test_add_months_clamps_the_anchor_to_month_end(
    day: date, months: int, anchor: int, expected: date
) -> None:
    assert add_months(day, months, anchor) == expected


def test_local_date_is_the_calendar_day_in_the_zone() -> None:
    # CET is +01:00: 22:30 UTC on 31 Oct is 23:30 the same day in Berlin.
    assert local_date(utc(2026, 10, 31, 22, 30), BERLIN) == date(2026, 10, 31)
    # 23:30 UTC on 31 Oct is 00:30 on 1 Nov in Berlin.
    assert local_date(utc(2026, 10, 31, 23, 30), BERLIN) == date(2026, 11, 1)


def test_timestamps_must_carry_an_offset() -> None:
    assert parse_timestamp("2026-11-01T00:05:00+00:00") == utc(2026, 11, 1, 0, 5)
    with pytest.raises(InvalidInput, match="no UTC offset"):
        parse_timestamp("2026-11-01T00:05:00")
    with pytest.raises(InvalidInput, match="not an ISO 8601"):
        parse_timestamp("yesterday")
    with pytest.raises(InvalidInput):
        parse_timestamp(1_700_000_000)
    with pytest.raises(InvalidInput, match="no UTC offset"):
        require_aware(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive value is the point


def test_unknown_time_zones_are_refused() -> None:
    assert zone("Europe/Berlin") == BERLIN
    with pytest.raises(InvalidInput, match="IANA"):
        zone("Mars/Olympus_Mons", path="organizations[0].timezone")
