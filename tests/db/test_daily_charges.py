"""The per-day breakdown behind `/billing usage` adds up to the balance, tiers included."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from billing_core.money import Money
from billing_core.services import BillingService
from tests.factories import at, document, event


def test_each_day_shows_what_it_added_and_the_days_add_up_to_the_balance(
    service: BillingService,
) -> None:
    service.load(document(), at=at("2026-01-01T00:00:00+00:00"))
    service.import_usage(
        [
            event("t1", "transfer.gb", "60", "2026-01-01T10:00:00+00:00"),
            event("t2", "transfer.gb", "60", "2026-01-02T10:00:00+00:00"),
            event("r1", "requests.GET", "1000000", "2026-01-02T11:00:00+00:00"),
            event("r2", "requests.GET", "500000", "2026-01-03T11:00:00+00:00"),
            event("future", "requests.GET", "500000", "2026-01-05T11:00:00+00:00"),
        ]
    )
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    now = at("2026-01-04T12:00:00+00:00")
    [daily] = service.daily_charges(admin, at=now)
    assert daily.days == (date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3), date(2026, 1, 4))

    def eur(*amounts: str) -> tuple[Money, ...]:
        return tuple(Money(Decimal(a), "EUR") for a in amounts)

    # transfer: day 1 brings 60 GB (free tier); day 2 reaches 120 GB: 20 x 0.09 = 1.80
    assert daily.by_category["Transfer"] == eur("0", "1.80", "0", "0")
    # requests: 1,000,000 x 0.0000004 = 0.40, then 500,000 -> 0.20; the 5th is not here yet
    assert daily.by_category["Requests"] == eur("0", "0.40", "0.20", "0")
    [balance] = service.balance(admin, at=now)
    days_total = sum(
        (m for amounts in daily.by_category.values() for m in amounts), Money.zero("EUR")
    )
    # the balance counts usage stamped later in the open period too (the 5th): 0.20 more
    assert balance.totals.subtotal == days_total + Money(Decimal("0.20"), "EUR")
