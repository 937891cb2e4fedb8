"""Build the benchmark dataset through the product's own import paths.

Full scale (issue 5): 4,000 organizations, 20,000 billing groups, 100,000 projects, three
currencies (JPY is zero-decimal), tiers, plans and coupons, 12 months of issued invoices and
5,000,000 usage events in the period being billed. ``scale`` builds a fraction of each count.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CURRENCIES = ("EUR", "USD", "JPY")
METRICS = ("requests.GET", "requests.POST", "storage.gb", "transfer.gb")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")
HISTORY_START = datetime(2025, 11, 1, tzinfo=UTC)
BILLED_PERIOD_START = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Sizes:
    organizations: int
    groups: int
    projects: int
    events: int
    history_events: int

    @classmethod
    def at(cls, scale: float) -> Sizes:
        def n(full: int) -> int:
            return max(1, round(full * scale))

        return cls(n(4_000), n(20_000), n(100_000), n(5_000_000), n(600_000))


def price_lists() -> list[dict[str, Any]]:
    lists = []
    for currency in CURRENCIES:
        factor = "100" if currency == "JPY" else "1"
        lists.append(
            {
                "key": f"std-{currency.lower()}",
                "currency": currency,
                "metrics": [
                    {
                        "metric": "requests.GET",
                        "category": "Requests",
                        "unit_price": "0.0000004" if factor == "1" else "0.00004",
                    },
                    {
                        "metric": "requests.POST",
                        "category": "Requests",
                        "unit_price": "0.000002" if factor == "1" else "0.0002",
                    },
                    {
                        "metric": "storage.gb",
                        "category": "Storage",
                        "aggregation": "max",
                        "unit_price": "0.021" if factor == "1" else "2.1",
                    },
                    {
                        "metric": "transfer.gb",
                        "category": "Transfer",
                        "tiers": [
                            {"up_to": "100", "unit_price": "0"},
                            {"up_to": "10000", "unit_price": "0.09" if factor == "1" else "9"},
                            {"up_to": None, "unit_price": "0.05" if factor == "1" else "5"},
                        ],
                    },
                ],
            }
        )
    return lists


def load_document(sizes: Sizes, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    plans = [
        {
            "key": f"pro-{c.lower()}",
            "name": "Pro",
            "price_list": f"std-{c.lower()}",
            "monthly_fee": "4900" if c == "JPY" else "49.00",
            "included": {"requests.GET": "5000000"},
        }
        for c in CURRENCIES
    ]
    coupons = [
        {"code": "TEN", "percent_off": "10", "duration": "forever"},
        {"code": "WELCOME", "percent_off": "20", "duration": "repeating", "duration_periods": 3},
    ]
    orgs = []
    group_no = project_no = 0
    for o in range(sizes.organizations):
        groups = []
        share = sizes.groups // sizes.organizations + (o < sizes.groups % sizes.organizations)
        for _ in range(share):
            currency = CURRENCIES[group_no % 3]
            group: dict[str, Any] = {
                "key": f"g{group_no}",
                "name": f"Group {group_no}",
                "price_list": f"std-{currency.lower()}",
                "payment_method": "card",
                "payment_terms_days": 14,
                "tax_rate": rng.choice(["0.19", "0.07", None]),
                "created_at": HISTORY_START.isoformat(),
                "contacts": [{"slack_user_id": f"U{group_no:07d}"}],
            }
            if group_no % 5 == 0:
                group["subscription"] = {
                    "plan": f"pro-{currency.lower()}",
                    "start": (HISTORY_START + timedelta(days=14)).isoformat(),
                }
            groups.append(group)
            group_no += 1
        projects = []
        per_group = max(1, sizes.projects // max(1, sizes.groups))
        for g in groups:
            for _ in range(per_group):
                projects.append(
                    {
                        "key": f"p{project_no}",
                        "name": f"Project {project_no}",
                        "billing_group": g["key"],
                    }
                )
                project_no += 1
        orgs.append(
            {
                "key": f"org{o}",
                "name": f"Org {o}",
                "slack_team_id": f"T{o:07d}",
                "timezone": ZONES[o % len(ZONES)],
                "locale": "en_US",
                "members": [
                    {"slack_user_id": f"UA{o:06d}", "role": "admin"},
                    {"slack_user_id": f"UM{o:06d}", "role": "member"},
                ],
                "billing_groups": groups,
                "projects": projects,
            }
        )
    return {"price_lists": price_lists(), "plans": plans, "coupons": coupons, "organizations": orgs}


def projects_of(document: dict[str, Any]) -> list[str]:
    return [f"{o['key']}/{p['key']}" for o in document["organizations"] for p in o["projects"]]


def write_events(
    path: Path,
    projects: list[str],
    count: int,
    start: datetime,
    days: int,
    *,
    prefix: str,
    seed: int = 11,
) -> None:
    """``count`` events spread over ``days`` days from ``start``, as JSON Lines."""
    rng = random.Random(seed)
    span = days * 86_400
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            metric = METRICS[i % 4]
            quantity = (
                str(rng.randint(1, 200_000))
                if metric.startswith("requests")
                else f"{rng.randint(1, 5000)}.{rng.randint(0, 99):02d}"
            )
            moment = start + timedelta(seconds=rng.randrange(span))
            out.write(
                json.dumps(
                    {
                        "id": f"{prefix}-{i}",
                        "project": rng.choice(projects),
                        "metric": metric,
                        "quantity": quantity,
                        "timestamp": moment.isoformat(),
                    }
                )
                + "\n"
            )
