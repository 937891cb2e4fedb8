"""Build the benchmark dataset through the product's own import paths.

Full scale (issue 5): 4,000 organizations, 20,000 billing groups, 100,000 projects, three
currencies (JPY is zero-decimal), tiers, plans and coupons, 12 months of issued invoices and
5,000,000 usage events in the period being billed. ``scale`` builds a fraction of each count.

The calendar is relative to the day the benchmark runs: the period being billed is the current
calendar month, so ``/billing balance`` (which reads the real clock of ``billing-bot serve``)
rates that period's events, and run-billing runs "on the 1st" of the next month (``--at``).
Groups are created, and plans start, at local midnight on the 1st in their organization's zone,
so every group closes its periods on the same worst day.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

CURRENCIES = ("EUR", "USD", "JPY")
METRICS = ("requests.GET", "requests.POST", "storage.gb", "transfer.gb")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")
HISTORY_MONTHS = 12
# Events stay this far inside a UTC month, so they fall in the same month in every zone above.
EDGE = timedelta(hours=12)


def month_start(moment: datetime, months: int = 0) -> datetime:
    """Midnight UTC on the 1st of the month ``months`` after the one holding ``moment``."""
    index = moment.year * 12 + moment.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Calendar:
    """The history months and the period being billed (the current calendar month)."""

    billed_start: datetime  # UTC midnight on the 1st of the current month

    @classmethod
    def around(cls, now: datetime) -> Calendar:
        return cls(month_start(now))

    @property
    def history_start(self) -> datetime:
        return month_start(self.billed_start, -HISTORY_MONTHS)

    @property
    def billed_end(self) -> datetime:
        return month_start(self.billed_start, 1)

    def month(self, index: int) -> tuple[datetime, datetime]:
        """UTC bounds of history month ``index`` (0..11); 12 is the billed month."""
        return month_start(self.history_start, index), month_start(self.history_start, index + 1)

    def run_at(self, month_end: datetime) -> datetime:
        """When the billing run closes the month ending at ``month_end``: the 1st, 06:00 UTC,
        after midnight in every zone used (New York is the last, at 05:00 UTC)."""
        return month_end + timedelta(hours=6)

    @property
    def billing_at(self) -> datetime:
        return self.run_at(self.billed_end)


def local_first(utc_month: datetime, tz_name: str) -> str:
    """Local midnight on the 1st of ``utc_month``'s month in ``tz_name``, ISO with offset."""
    local = datetime(utc_month.year, utc_month.month, 1, tzinfo=ZoneInfo(tz_name))
    return local.isoformat()


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


def catalogue() -> dict[str, Any]:
    """Price lists, plans and coupons: loaded once, before the organizations."""
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
    return {"price_lists": price_lists(), "plans": plans, "coupons": coupons}


def admin_of(org: int) -> str:
    return f"UA{org:06d}"


def team_of(org: int) -> str:
    return f"T{org:07d}"


def organizations(sizes: Sizes, calendar: Calendar, seed: int = 7) -> list[dict[str, Any]]:
    """The organizations with their groups (one in five on a plan) and projects."""
    rng = random.Random(seed)
    orgs = []
    group_no = project_no = 0
    per_group = max(1, sizes.projects // max(1, sizes.groups))
    for o in range(sizes.organizations):
        tz_name = ZONES[o % len(ZONES)]
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
                "created_at": local_first(calendar.history_start, tz_name),
                "contacts": [{"slack_user_id": f"U{group_no:07d}"}],
            }
            if group_no % 5 == 0:
                group["subscription"] = {
                    "plan": f"pro-{currency.lower()}",
                    "start": local_first(calendar.month(1)[0], tz_name),
                }
            groups.append(group)
            group_no += 1
        projects = []
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
                "slack_team_id": team_of(o),
                "timezone": tz_name,
                "locale": "en_US",
                "members": [
                    {"slack_user_id": admin_of(o), "role": "admin"},
                    {"slack_user_id": f"UM{o:06d}", "role": "member"},
                ],
                "billing_groups": groups,
                "projects": projects,
            }
        )
    return orgs


def load_document(sizes: Sizes, calendar: Calendar, seed: int = 7) -> dict[str, Any]:
    """Everything in one document (the CLI loads it in chunks: see :func:`chunks`)."""
    return {**catalogue(), "organizations": organizations(sizes, calendar, seed)}


def chunks(document: dict[str, Any], per_chunk: int) -> list[dict[str, Any]]:
    """The organizations ``per_chunk`` at a time, the catalogue with the first chunk."""
    orgs = document["organizations"]
    catalogue = {k: v for k, v in document.items() if k != "organizations"}
    parts: list[dict[str, Any]] = []
    for start in range(0, max(1, len(orgs)), per_chunk):
        parts.append({"organizations": orgs[start : start + per_chunk]})
    parts[0].update(catalogue)
    return parts


def projects_of(document: dict[str, Any]) -> list[str]:
    return [f"{o['key']}/{p['key']}" for o in document["organizations"] for p in o["projects"]]


def write_events(
    path: Path,
    projects: list[str],
    count: int,
    start: datetime,
    end: datetime,
    *,
    prefix: str,
    seed: int = 11,
) -> None:
    """``count`` events spread over [start + EDGE, end - EDGE), as JSON Lines."""
    rng = random.Random(seed)
    first = start + EDGE
    span = int((end - EDGE - first).total_seconds())
    with path.open("w", encoding="utf-8") as out:
        lines = []
        for i in range(count):
            metric = METRICS[i % 4]
            quantity = (
                str(rng.randint(1, 200_000))
                if metric.startswith("requests")
                else f"{rng.randint(1, 5000)}.{rng.randint(0, 99):02d}"
            )
            moment = first + timedelta(seconds=rng.randrange(span))
            lines.append(
                json.dumps(
                    {
                        "id": f"{prefix}-{i}",
                        "project": rng.choice(projects),
                        "metric": metric,
                        "quantity": quantity,
                        "timestamp": moment.isoformat(),
                    }
                )
            )
            if len(lines) >= 10_000:
                out.write("\n".join(lines) + "\n")
                lines = []
        if lines:
            out.write("\n".join(lines) + "\n")


# -- the reminder fan-out's own small world ------------------------------------------------


@dataclass(frozen=True)
class FanOut:
    """``messages`` invoice notices: half to distinct users' DMs, half to shared channels.

    A shared channel (a finance team's) gets ``per_channel`` notices, so at one message per
    second per channel the limit, not the sender, sets the pace: (per_channel - 1) seconds.
    """

    messages: int
    per_channel: int

    @classmethod
    def at(cls, scale: float) -> FanOut:
        messages = max(100, round(10_000 * scale))
        per_channel = min(messages // 2, max(5, round(100 * scale**0.5)))
        return cls(messages, per_channel)

    def recipient(self, index: int) -> dict[str, str]:
        if index % 2 == 0:
            return {"slack_user_id": f"UF{index:07d}"}
        return {"slack_channel_id": self.channel(index)}

    def channel(self, index: int) -> str:
        channels = max(1, (self.messages // 2) // self.per_channel)
        return f"CFIN{(index // 2) % channels:05d}"

    def users(self) -> list[str]:
        return [f"UF{i:07d}" for i in range(0, self.messages, 2)]

    def channels(self) -> list[str]:
        return sorted({self.channel(i) for i in range(1, self.messages, 2)})

    def limit_seconds(self, per_second: float) -> float:
        """What the per-channel limit allows: the busiest channel's posts, 1/rate apart."""
        counts: dict[str, int] = {}
        for i in range(self.messages):
            key = self.channel(i) if i % 2 else f"DUF{i:07d}"
            counts[key] = counts.get(key, 0) + 1
        return (max(counts.values()) - 1) / per_second


def fanout_document(fan: FanOut, calendar: Calendar) -> dict[str, Any]:
    """One organization per 50 groups, one group per notice, one project per group."""
    orgs = []
    per_org = 50
    for o in range(0, fan.messages, per_org):
        count = min(per_org, fan.messages - o)
        groups = [
            {
                "key": f"g{o + i}",
                "name": f"Group {o + i}",
                "price_list": "std-eur",
                "payment_method": "bank_transfer",
                "created_at": calendar.billed_start.isoformat(),
                "contacts": [fan.recipient(o + i)],
            }
            for i in range(count)
        ]
        orgs.append(
            {
                "key": f"fan{o // per_org}",
                "name": f"Fan-out {o // per_org}",
                "slack_team_id": f"TF{o // per_org:06d}",
                "timezone": "UTC",
                "locale": "en_US",
                "members": [{"slack_user_id": f"UFA{o // per_org:05d}", "role": "admin"}],
                "billing_groups": groups,
                "projects": [
                    {"key": f"p{o + i}", "name": f"P {o + i}", "billing_group": f"g{o + i}"}
                    for i in range(count)
                ],
            }
        )
    return {**catalogue(), "organizations": orgs}


def fanout_events(fan: FanOut, calendar: Calendar) -> list[str]:
    moment = (calendar.billed_start + timedelta(days=3)).isoformat()
    return [
        json.dumps(
            {
                "id": f"fan-{i}",
                "project": f"fan{i // 50}/p{i}",
                "metric": "transfer.gb",
                "quantity": "250",
                "timestamp": moment,
            }
        )
        for i in range(fan.messages)
    ]
