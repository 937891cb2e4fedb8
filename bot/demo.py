"""``billing-bot demo``: a demo organization with a few months of history, then what it owes."""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.db.migrate import upgrade
from billing_core.errors import CouponRefused
from billing_core.periods import add_months, local_midnight
from billing_core.services import BillingService
from billing_core.settings import Settings, mask_url
from bot.format import parse_locale
from bot.textview import render_summary

TEAM = "T0DEMO"
ADMIN = "U0DEMOADMIN"
TZ = ZoneInfo("Europe/Berlin")


def demo_document(created: datetime) -> dict[str, object]:
    return {
        "price_lists": [
            {
                "key": "demo-eur",
                "currency": "EUR",
                "metrics": [
                    {"metric": "requests.GET", "category": "Requests", "unit_price": "0.0000004"},
                    {"metric": "requests.POST", "category": "Requests", "unit_price": "0.000002"},
                    {
                        "metric": "storage.gb",
                        "category": "Storage",
                        "aggregation": "max",
                        "unit_price": "0.021",
                    },
                    {
                        "metric": "transfer.gb",
                        "category": "Transfer",
                        "tiers": [
                            {"up_to": "100", "unit_price": "0"},
                            {"up_to": None, "unit_price": "0.09"},
                        ],
                    },
                ],
            }
        ],
        "plans": [
            {
                "key": "demo-pro",
                "name": "Pro",
                "price_list": "demo-eur",
                "monthly_fee": "49.00",
                "included": {"requests.GET": "50000000"},
            }
        ],
        "coupons": [
            {"code": "DEMO10", "percent_off": "10", "duration": "repeating", "duration_periods": 3}
        ],
        "organizations": [
            {
                "key": "demo",
                "name": "Demo GmbH",
                "slack_team_id": TEAM,
                "timezone": "Europe/Berlin",
                "locale": "de_DE",
                "members": [
                    {"slack_user_id": ADMIN, "role": "admin"},
                    {"slack_user_id": "U0DEMODEV", "role": "member"},
                ],
                "billing_groups": [
                    {
                        "key": "eng",
                        "name": "Engineering",
                        "price_list": "demo-eur",
                        "payment_method": "card",
                        "payment_terms_days": 14,
                        "tax_rate": "0.19",
                        "billing_address": "Demo GmbH, Hauptstr. 1, 10115 Berlin",
                        "vat_id": "DE123456789",
                        "created_at": created.isoformat(),
                        "contacts": [
                            {"slack_user_id": "U0DEMOFIN", "email": "finance@demo.example"},
                            {"slack_channel_id": "C0DEMOBILL"},
                        ],
                    },
                    {
                        "key": "research",
                        "name": "Research",
                        "payment_method": "bank_transfer",
                        "payment_terms_days": 30,
                        "tax_rate": "0.19",
                        "created_at": created.isoformat(),
                        "subscription": {
                            "plan": "demo-pro",
                            "start": (created + timedelta(days=14)).isoformat(),
                        },
                        "contacts": [{"slack_user_id": "U0DEMOFIN"}],
                    },
                ],
                "units": [{"key": "rnd", "name": "R&D"}],
                "projects": [
                    {"key": "web", "name": "Website", "billing_group": "eng"},
                    {"key": "api", "name": "Public API", "billing_group": "eng"},
                    {"key": "lab", "name": "Lab", "billing_group": "research", "unit": "rnd"},
                ],
                "credits": [
                    {
                        "billing_group": "eng",
                        "amount": "25.00",
                        "reason": "welcome",
                        "key": "demo-welcome",
                    }
                ],
            }
        ],
    }


def _amount(seed: str, low: int, high: int) -> int:
    """A stable pseudo-random number, so a rerun imports the very same events."""
    digest = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
    return low + digest % (high - low + 1)


def demo_events(start: date, until: datetime) -> list[str]:
    lines = []
    day = start
    while (moment := datetime(day.year, day.month, day.day, 12, tzinfo=UTC)) < until:
        for project, metric, low, high in (
            ("web", "requests.GET", 2_000_000, 9_000_000),
            ("api", "requests.GET", 500_000, 3_000_000),
            ("api", "requests.POST", 50_000, 400_000),
            ("web", "storage.gb", 40, 60),
            ("api", "transfer.gb", 2, 9),
            ("lab", "requests.GET", 1_000_000, 2_500_000),
            ("lab", "storage.gb", 100, 140),
        ):
            event_id = f"demo-{project}-{metric}-{day.isoformat()}"
            lines.append(
                json.dumps(
                    {
                        "id": event_id,
                        "project": f"demo/{project}",
                        "metric": metric,
                        "quantity": str(_amount(event_id, low, high)),
                        "timestamp": moment.isoformat(),
                    }
                )
            )
        day += timedelta(days=1)
    return lines


def run_demo(settings: Settings, *, now: datetime) -> int:
    upgrade(settings.database_url)
    service = BillingService(
        Database(settings.database_url), invoice_prefix=settings.invoice_prefix
    )
    today = now.astimezone(TZ).date()
    created = local_midnight(add_months(today, -3, 1), TZ)
    with service.db.transaction() as session:
        known = session.scalar(
            select(t.BillingGroup.created_at)
            .join(t.Organization, t.Organization.id == t.BillingGroup.organization_id)
            .where(t.Organization.key == "demo", t.BillingGroup.key == "eng")
        )
    if known is not None:  # keep the first run's history: billed groups never move
        created = known.astimezone(TZ)
    print(f"Demo database: {mask_url(settings.database_url)}")
    summary = service.load(demo_document(created), at=now)
    print(f"  load: {summary.describe()}")
    report = service.import_usage(demo_events(created.date(), now))
    print(f"  usage: {report.describe('events')}")
    first_end = local_midnight(add_months(created.date(), 1, 1), TZ)
    run = service.run_billing(at=first_end + timedelta(hours=1))
    actor = service.actor(team_id=TEAM, user_id=ADMIN)
    try:
        service.redeem_coupon(
            actor, code="DEMO10", group_key="eng", at=first_end + timedelta(days=2)
        )
        print("  coupon DEMO10 redeemed for eng")
    except CouponRefused:
        pass
    later = service.run_billing(at=now)
    print(f"  billing: {len(run.issued) + len(later.issued)} invoices issued")
    first = service.invoices(actor, group_key="eng", limit=100)
    if first:
        oldest = first[-1]
        pay = json.dumps(
            {
                "reference": "demo-payment-1",
                "billing_group": "demo/eng",
                "amount": oldest.amount_due.to_str(),
                "currency": "EUR",
                "method": "card",
                "received_at": (first_end + timedelta(days=5)).isoformat(),
            }
        )
        paid = service.import_payments([pay], at=now)
        print(f"  payments: {paid.describe('payments')}")
    locale = parse_locale("de_DE")
    assert locale is not None  # noqa: S101
    print()
    print(render_summary(service, actor, now=now, locale=locale))
    print()
    print("Ask it yourself (type `help`, `invoices`, `assign lab eng`, then `confirm`):")
    # The command as it was started (.venv/bin/billing-bot when not on PATH), so it can be pasted.
    command = sys.argv[0] if sys.argv and sys.argv[0].endswith("billing-bot") else "billing-bot"
    print(f"  {command} console --team {TEAM} --user {ADMIN}")
    service.db.dispose()
    return 0
