"""`/billing balance` rates all of an organization's groups at once (issuing.drafts).

The figures must be those of the per-group path (``draft_lines`` then ``price_period``) to the
last digit, and the number of queries must not grow with the number of groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event

from billing_core import issuing, queries
from billing_core.model import ActiveRedemption, Totals
from billing_core.periods import Period
from billing_core.rating import Line
from billing_core.services import BillingService
from tests.factories import at, document, event, org

TEAM, ADMIN = "T0ACME", "U0ADMIN"


def five_groups() -> dict[str, Any]:
    """Acme with EUR and JPY groups, a plan with an allowance, coupons and credits."""
    doc = document(
        plans=[
            {
                "key": "pro",
                "name": "Pro",
                "price_list": "standard-eur",
                "monthly_fee": "49.00",
                "included": {"requests.GET": "5000000", "transfer.gb": "50"},
            }
        ],
        coupons=[
            {"code": "WELCOME10", "percent_off": "10", "duration": "once"},
            {
                "code": "SAVE5",
                "amount_off": "5.00",
                "currency": "EUR",
                "duration": "repeating",
                "duration_periods": 3,
            },
            {"code": "HALF", "percent_off": "50", "duration": "forever"},
        ],
    )
    doc["price_lists"].append(
        {
            "key": "standard-jpy",
            "currency": "JPY",
            "metrics": [
                {"metric": "requests.GET", "category": "Requests", "unit_price": "0.01"},
                {
                    "metric": "storage.gb",
                    "category": "Storage",
                    "aggregation": "max",
                    "unit_price": "3",
                },
            ],
        }
    )
    acme = org(doc)
    acme["timezone"] = "Europe/Berlin"
    eng = acme["billing_groups"][0]
    eng["tax_rate"] = "0.19"

    def group(key: str, price_list: str, created: str, **extra: Any) -> dict[str, Any]:
        return {
            "key": key,
            "name": key.title(),
            "price_list": price_list,
            "payment_method": "card",
            "created_at": created,
            **extra,
        }

    acme["billing_groups"] += [
        group(
            "ops",
            "standard-eur",
            "2026-01-01T00:00:00+00:00",
            subscription={"plan": "pro", "start": "2026-01-15T00:00:00+01:00"},
            tax_rate="0.07",
        ),
        group("tokyo", "standard-jpy", "2026-01-01T00:00:00+00:00", tax_rate="0.10"),
        group("idle", "standard-eur", "2026-01-01T00:00:00+00:00"),
        group("fresh", "standard-eur", "2026-03-02T00:00:00+01:00"),
    ]
    acme["projects"] += [
        {"key": "app", "name": "App", "billing_group": "eng"},
        {"key": "api", "name": "API", "billing_group": "ops"},
        {"key": "batch", "name": "Batch", "billing_group": "ops"},
        {"key": "jp", "name": "Japan", "billing_group": "tokyo"},
        {"key": "jp2", "name": "Japan 2", "billing_group": "tokyo"},
        {"key": "new", "name": "New", "billing_group": "fresh"},
    ]
    acme["credits"] = [
        {"billing_group": "eng", "amount": "5.00", "reason": "trial"},
        {"billing_group": "eng", "amount": "3.00", "reason": "sorry"},
        {
            "billing_group": "ops",
            "amount": "20.00",
            "reason": "goodwill",
            "expires_at": "2026-12-31T00:00:00+00:00",
        },
        {"billing_group": "tokyo", "amount": "500", "reason": "welcome"},
    ]
    return doc


def usage(prefix: str, month: str) -> list[str]:
    """Some of every metric in every busy group during ``month`` (YYYY-MM), several projects."""
    day = f"{month}-1"
    return [
        event(f"{prefix}-1", "requests.GET", "3000000", f"{day}2T10:00:00+00:00"),
        event(f"{prefix}-2", "transfer.gb", "70.5", f"{day}3T10:00:00+00:00", "acme/app"),
        event(f"{prefix}-3", "transfer.gb", "45", f"{day}4T10:00:00+00:00"),
        event(f"{prefix}-4", "storage.gb", "12.5", f"{day}5T10:00:00+00:00", "acme/app"),
        event(f"{prefix}-5", "storage.gb", "9", f"{day}6T10:00:00+00:00", "acme/app"),
        event(f"{prefix}-6", "requests.GET", "4000000", f"{day}2T11:00:00+00:00", "acme/api"),
        event(f"{prefix}-7", "requests.GET", "2500000", f"{day}3T11:00:00+00:00", "acme/batch"),
        event(f"{prefix}-8", "transfer.gb", "80", f"{day}4T11:00:00+00:00", "acme/api"),
        event(f"{prefix}-9", "requests.GET", "123457", f"{day}5T11:00:00+00:00", "acme/jp"),
        event(f"{prefix}-10", "storage.gb", "40", f"{day}6T11:00:00+00:00", "acme/jp2"),
        event(f"{prefix}-11", "storage.gb", "35", f"{day}7T11:00:00+00:00", "acme/jp2"),
    ]


def late(prefix: str, month: str) -> list[str]:
    """Usage of ``month`` arriving after it was invoiced: tiers, peaks, a new project."""
    day = f"{month}-2"
    return [
        event(f"{prefix}-1", "transfer.gb", "40", f"{day}0T10:00:00+00:00", "acme/app"),
        event(f"{prefix}-2", "storage.gb", "15", f"{day}1T10:00:00+00:00", "acme/app"),
        event(f"{prefix}-3", "storage.gb", "1", f"{day}1T11:00:00+00:00"),
        event(f"{prefix}-4", "requests.GET", "1000000", f"{month}-12T10:00:00Z", "acme/batch"),
        event(f"{prefix}-5", "requests.GET", "7", f"{day}2T11:00:00+00:00", "acme/jp"),
        event(f"{prefix}-6", "storage.gb", "60", f"{day}3T11:00:00+00:00", "acme/jp"),
    ]


def per_group_and_at_once(
    service: BillingService, now: datetime, team: str = TEAM
) -> tuple[list[Figures], list[issuing.Draft]]:
    """Every group's draft as the per-group functions see it, and as ``issuing.drafts`` does."""
    admin = service.actor(team_id=team, user_id=ADMIN)
    with service.db.transaction() as session:
        groups, _held = queries.groups_for_rating(session, admin.organization_id, None)
        one_by_one = []
        for group in groups:
            ctx = issuing.group_context(session, group)
            period, lines = issuing.draft_lines(session, ctx, now)
            totals, redemptions = issuing.price_period(session, ctx, period, lines)
            one_by_one.append(figures(group.key, period, lines, totals, redemptions))
        contexts = [issuing.group_context(session, group) for group in groups]
        return one_by_one, issuing.drafts(session, contexts, now)


Figures = tuple[str, Period, list[str], str, list[str]]


def figures(
    key: str,
    period: Period,
    lines: list[Line],
    totals: Totals,
    redemptions: list[tuple[ActiveRedemption, str]],
) -> Figures:
    """Everything shown, with each Decimal's exact digits (1.0 and 1.00 are told apart)."""
    return (
        key,
        period,
        [repr(line) for line in lines],
        repr(totals),
        [repr(r) for r in redemptions],
    )


def test_the_organization_draft_is_the_per_group_draft_to_the_digit(
    service: BillingService,
) -> None:
    service.load(five_groups(), at=at("2026-01-01T00:00:00+00:00"))
    admin = service.actor(team_id=TEAM, user_id=ADMIN)
    for code, group in (("WELCOME10", "eng"), ("SAVE5", "ops"), ("HALF", "tokyo")):
        service.redeem_coupon(admin, code=code, group_key=group, at=at("2026-01-02T00:00:00Z"))
    seen: list[issuing.Draft] = []

    def same_figures(now: datetime) -> None:
        one_by_one, drafts = per_group_and_at_once(service, now)
        at_once = [
            figures(d.ctx.group.key, d.period, d.lines, d.totals, d.redemptions) for d in drafts
        ]
        assert at_once == one_by_one
        assert [f[0] for f in at_once] == ["eng", "fresh", "idle", "ops", "tokyo"]
        seen.extend(drafts)

    assert not service.import_usage(usage("jan", "2026-01")).rejected
    same_figures(at("2026-01-20T12:00:00+00:00"))  # first periods, nothing closed yet
    service.run_billing(at=at("2026-02-01T00:05:00+00:00"))
    assert not service.import_usage(usage("feb", "2026-02")).rejected
    assert not service.import_usage(late("late-jan", "2026-01")).rejected
    same_figures(at("2026-02-20T12:00:00+00:00"))
    # February has ended but is not closed: its usage is left to it, January's late usage is not
    same_figures(at("2026-03-10T12:00:00+00:00"))
    service.run_billing(at=at("2026-03-01T00:05:00+00:00"))
    fresh = event("new-1", "requests.GET", "900000", "2026-03-03T10:00:00+00:00", "acme/new")
    assert not service.import_usage([*usage("mar", "2026-03"), fresh]).rejected
    assert not service.import_usage(late("late-feb", "2026-02")).rejected
    # a second wave for January, after its first late usage was billed in February
    assert not service.import_usage(late("later-jan", "2026-01")[:3]).rejected
    same_figures(at("2026-03-10T12:00:00+00:00"))
    same_figures(at("2026-03-31T21:59:59+00:00"))  # Berlin's last second of March
    # The comparison covered what could differ: late lines of several periods, a plan, coupons,
    # credits, two currencies, a group in its first period, one with nothing at all.
    late_periods = {(d.ctx.group.key, line.late_period) for d in seen for line in d.lines}
    assert {g for g, p in late_periods if p is not None} == {"eng", "ops", "tokyo"}
    assert len({p for g, p in late_periods if g == "eng" and p is not None}) == 2
    assert any(line.kind == "subscription" for d in seen for line in d.lines)
    assert {d.ctx.group.key for d in seen if d.totals.discount.amount > 0} == {
        "eng",
        "ops",
        "tokyo",
    }
    assert {d.ctx.group.key for d in seen if d.totals.credits_applied.amount > 0} >= {
        "eng",
        "tokyo",
    }
    assert {d.totals.total.currency for d in seen} == {"EUR", "JPY"}
    assert any(d.ctx.group.key == "fresh" and d.lines for d in seen)
    assert all(not d.lines for d in seen if d.ctx.group.key == "idle")


@contextmanager
def counted(service: BillingService) -> Iterator[list[str]]:
    """The statements the billing code sends (not SQLite's BEGIN, nor a pool ping)."""
    statements: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN") and statement.strip() != "SELECT 1":
            statements.append(statement)

    sa_event.listen(service.db.engine, "before_cursor_execute", on_execute)
    try:
        yield statements
    finally:
        sa_event.remove(service.db.engine, "before_cursor_execute", on_execute)


def test_balance_takes_a_fixed_number_of_queries_whatever_the_number_of_groups(
    service: BillingService,
) -> None:
    doc = document(coupons=[{"code": "HALF", "percent_off": "50", "duration": "forever"}])
    small = org(doc)
    big = {
        **small,
        "key": "big",
        "name": "Big",
        "slack_team_id": "T0BIG",
        "billing_groups": [],
        "projects": [],
    }
    doc["organizations"].append(big)
    for organization, count in ((small, 2), (big, 6)):
        template = small["billing_groups"][0]
        organization["billing_groups"] = [{**template, "key": f"g{i}"} for i in range(count)]
        organization["projects"] = [
            {"key": f"p{i}", "name": f"P{i}", "billing_group": f"g{i}"} for i in range(count)
        ]
        organization["credits"] = [
            {"billing_group": f"g{i}", "amount": "100.00", "reason": "trial"} for i in range(count)
        ]
    service.load(doc, at=at("2026-01-01T00:00:00+00:00"))

    def busy(prefix: str, day: str, organization: str, count: int, peak: str = "3") -> list[str]:
        return [
            event(
                f"{prefix}-{organization}-{i}-{m}", m, q, f"{day}T10:00:00Z", f"{organization}/p{i}"
            )
            for i in range(count)
            for m, q in (("requests.GET", "2000000"), ("transfer.gb", "150"), ("storage.gb", peak))
        ]

    everyone = [("acme", 2), ("big", 6)]
    assert not service.import_usage(
        [e for o, n in everyone for e in busy("jan", "2026-01-10", o, n)]
    ).rejected
    service.run_billing(at=at("2026-02-01T00:05:00+00:00"))
    assert not service.import_usage(
        [e for o, n in everyone for e in busy("feb", "2026-02-10", o, n)]
        + [e for o, n in everyone for e in busy("late", "2026-01-20", o, n, "5")]
    ).rejected
    asked = {}
    for team, count in (("T0ACME", 2), ("T0BIG", 6)):
        admin = service.actor(team_id=team, user_id="U0ADMIN")
        for i in range(count):
            service.redeem_coupon(admin, code="HALF", group_key=f"g{i}", at=at("2026-02-02T00:00Z"))
        with counted(service) as statements:
            balances = service.balance(admin, at=at("2026-02-20T12:00:00+00:00"))
        assert len(balances) == count
        # each with its February usage, January's late usage, its coupon and its credit
        assert all(len(b.lines) == 6 for b in balances), [len(b.lines) for b in balances]
        assert all(b.coupon_codes == ("HALF",) for b in balances)
        assert all(b.totals.credits_applied.amount > 0 for b in balances)
        asked[count] = statements
        # Every group in one window, closed by one run: drafts' statements built once (usage
        # and late usage) answer, with the per-group path's figures to the digit.
        one_by_one, drafts = per_group_and_at_once(service, at("2026-02-20T12:00:00Z"), team)
        assert len({d.period for d in drafts}) == 1
        at_once = [
            figures(d.ctx.group.key, d.period, d.lines, d.totals, d.redemptions) for d in drafts
        ]
        assert at_once == one_by_one
    # groups with their organization, price lists, plans (none here), their last closes, usage,
    # late usage, what was billed of those late usage's periods, redemptions, credits
    assert len(asked[6]) == len(asked[2]) <= 8, asked[6]
