"""Builders for load documents, usage and payment lines used across the tests."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

BASE: dict[str, Any] = {
    "price_lists": [
        {
            "key": "standard-eur",
            "currency": "EUR",
            "metrics": [
                {"metric": "requests.GET", "category": "Requests", "unit_price": "0.0000004"},
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
    "plans": [],
    "coupons": [],
    "organizations": [
        {
            "key": "acme",
            "name": "Acme Inc",
            "slack_team_id": "T0ACME",
            "timezone": "UTC",
            "locale": "en_US",
            "members": [
                {"slack_user_id": "U0ADMIN", "role": "admin"},
                {"slack_user_id": "U0DEV", "role": "member"},
            ],
            "billing_groups": [
                {
                    "key": "eng",
                    "name": "Engineering",
                    "price_list": "standard-eur",
                    "payment_method": "card",
                    "payment_terms_days": 14,
                    "created_at": "2026-01-01T00:00:00+00:00",
                    "contacts": [{"slack_user_id": "U0FIN"}],
                }
            ],
            "projects": [{"key": "web", "name": "Website", "billing_group": "eng"}],
        }
    ],
}


def document(**changes: Any) -> dict[str, Any]:
    """A deep copy of BASE; keyword arguments replace top-level keys."""
    doc = copy.deepcopy(BASE)
    doc.update(copy.deepcopy(changes))
    return doc


def org(doc: dict[str, Any], index: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = doc["organizations"][index]
    return result


def event(event_id: str, metric: str, quantity: str, ts: str, project: str = "acme/web") -> str:
    return json.dumps(
        {
            "id": event_id,
            "project": project,
            "metric": metric,
            "quantity": quantity,
            "timestamp": ts,
        }
    )


def payment(
    reference: str,
    amount: str,
    received_at: str,
    *,
    group: str = "acme/eng",
    currency: str = "EUR",
    method: str = "card",
) -> str:
    return json.dumps(
        {
            "reference": reference,
            "billing_group": group,
            "amount": amount,
            "currency": currency,
            "method": method,
            "received_at": received_at,
        }
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)
