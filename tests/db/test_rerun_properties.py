"""Property tests on a real database: reruns change nothing, and nothing is lost or doubled."""

from __future__ import annotations

import copy
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_core.services import BillingService
from tests.factories import at, document, event, org

START = at("2026-01-01T00:00:00+00:00")
END = at("2026-04-01T00:00:00+00:00")
METRICS = ("requests.GET", "storage.gb", "transfer.gb")

events_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=89 * 24),  # hour offset within the quarter
        st.sampled_from(METRICS),
        st.decimals(min_value=0, max_value=10**7, places=2, allow_nan=False),
        st.sampled_from(("web", "api")),
    ),
    min_size=1,
    max_size=25,
)
run_times = st.lists(st.integers(min_value=0, max_value=89 * 24), max_size=4)

PROPERTY = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_counter = iter(range(10**9))


def _org(service: BillingService, tag: str) -> str:
    """A fresh organization per example (examples share one database)."""
    key = f"o{tag}"
    doc = document()
    o = org(doc)
    o.update(key=key, slack_team_id=f"T{tag}")
    o["projects"] = [
        {"key": "web", "name": "Web", "billing_group": "eng"},
        {"key": "api", "name": "Api", "billing_group": "eng"},
    ]
    doc["price_lists"][0]["key"] = "standard-eur"
    service.load(doc, at=START)
    return key


def _lines(key: str, tag: str, events: list[tuple[int, str, Decimal, str]]) -> list[str]:
    return [
        event(
            f"{tag}-{i}",
            metric,
            str(qty),
            (START + timedelta(hours=h)).isoformat(),
            project=f"{key}/{project}",
        )
        for i, (h, metric, qty, project) in enumerate(events)
    ]


def _without_numbers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    for d in docs:
        d = copy.deepcopy(d)
        d.pop("number")
        d.pop("organization")
        result.append(d)
    return sorted(result, key=lambda d: d["period_start"])


@PROPERTY
@given(events=events_strategy, stops=run_times)
def test_billing_in_steps_or_twice_equals_billing_once(
    service: BillingService, events: list[tuple[int, str, Decimal, str]], stops: list[int]
) -> None:
    n = next(_counter)
    stepwise, once = _org(service, f"{n}a"), _org(service, f"{n}b")
    service.import_usage(_lines(stepwise, f"{n}a", events))
    service.import_usage(_lines(once, f"{n}b", events))
    for hours in sorted(stops):
        service.run_billing(at=START + timedelta(hours=hours))
    service.run_billing(at=END)
    first = service.export_invoices(org_key=stepwise)
    service.run_billing(at=END)
    assert service.export_invoices(org_key=stepwise) == first
    assert _without_numbers(first) == _without_numbers(service.export_invoices(org_key=once))


@PROPERTY
@given(events=events_strategy, stops=run_times, cut=st.integers(min_value=0, max_value=25))
def test_usage_arriving_late_is_billed_exactly_once(
    service: BillingService,
    events: list[tuple[int, str, Decimal, str]],
    stops: list[int],
    cut: int,
) -> None:
    n = next(_counter)
    key = _org(service, f"{n}l")
    # a charge in every month, so every period is invoiced and late usage has a next invoice
    anchors = [
        event(
            f"{n}l-anchor-{m}",
            "requests.GET",
            "1000000",
            f"2026-0{m}-01T00:00:00+00:00",
            project=f"{key}/web",
        )
        for m in (1, 2, 3)
    ]
    lines = _lines(key, f"{n}l", events)
    early, late = anchors + lines[:cut], lines[cut:]
    service.import_usage(early)
    for hours in sorted(stops):
        service.run_billing(at=START + timedelta(hours=hours))
    service.import_usage(late)  # some of it belongs to periods invoiced already
    service.run_billing(at=END)
    docs = service.export_invoices(org_key=key)
    assert [d["period_start"][:7] for d in docs] == ["2026-01", "2026-02", "2026-03"]
    for metric in ("requests.GET", "transfer.gb"):  # summed metrics: quantities are conserved
        billed = sum(
            (
                Decimal(line["quantity"])
                for d in docs
                for line in d["lines"]
                if line["metric"] == metric
            ),
            Decimal(0),
        )
        imported = sum((q for _, m, q, _ in events if m == metric), Decimal(0))
        if metric == "requests.GET":
            imported += 3_000_000
        assert billed == imported, metric
    for d in docs:
        subtotal = sum((Decimal(line["amount"]) for line in d["lines"]), Decimal(0))
        assert Decimal(d["subtotal"]) == subtotal
        for line in d["lines"]:
            assert Decimal(line["amount"]) >= 0
            shares = sum((Decimal(p["amount"]) for p in line["projects"]), Decimal(0))
            assert shares == Decimal(line["amount"])
