"""The invoice document of SPEC 4.4, as JSON-ready dicts and CSV rows."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from billing_core.db import tables as t
from billing_core.money import round_to_minor_unit

# Fields that change after issue (payments); everything else is the immutable document.
MUTABLE_FIELDS = ("status", "amount_paid")


def plain(number: Decimal) -> str:
    """A quantity without exponent or trailing zeros: 1200, 0.5."""
    text = format(number.normalize(), "f")
    return text if text != "-0" else "0"


def amount(value: Decimal, currency: str) -> str:
    return str(round_to_minor_unit(value, currency))


def stamp(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).isoformat()


def invoice_document(
    invoice: t.Invoice, *, organization: str, group: str, tz: ZoneInfo
) -> dict[str, Any]:
    cur = invoice.currency
    lines = []
    for line in invoice.lines:
        entry: dict[str, Any] = {
            "kind": line.kind,
            "metric": line.metric,
            "category": line.category,
            "quantity": plain(line.quantity),
            "billable_quantity": plain(line.billable_quantity),
            "amount": amount(line.amount, cur),
            "projects": [
                {
                    "project": p.project_key,
                    "quantity": plain(p.quantity),
                    "amount": amount(p.amount, cur),
                }
                for p in line.projects
            ],
        }
        if line.late_period_start is not None:
            entry["late_period_start"] = stamp(line.late_period_start, tz)
        lines.append(entry)
    return {
        "number": invoice.number,
        "organization": organization,
        "billing_group": group,
        "currency": cur,
        "period_start": stamp(invoice.period_start, tz),
        "period_end": stamp(invoice.period_end, tz),
        "invoice_date": invoice.invoice_date.isoformat(),
        "due_date": invoice.due_date.isoformat(),
        "status": invoice.status,
        "subtotal": amount(invoice.subtotal, cur),
        "discount": amount(invoice.discount, cur),
        "tax": amount(invoice.tax, cur),
        "total": amount(invoice.total, cur),
        "credits_applied": amount(invoice.credits_applied, cur),
        "amount_due": amount(invoice.amount_due, cur),
        "amount_paid": amount(invoice.amount_paid, cur),
        "lines": lines,
    }


def checksum(document: dict[str, Any]) -> str:
    """SHA-256 of the immutable part of an invoice document."""
    fixed = {k: v for k, v in document.items() if k not in MUTABLE_FIELDS}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


CSV_INVOICE_FIELDS = (
    "number",
    "organization",
    "billing_group",
    "currency",
    "period_start",
    "period_end",
    "invoice_date",
    "due_date",
    "status",
    "subtotal",
    "discount",
    "tax",
    "total",
    "credits_applied",
    "amount_due",
    "amount_paid",
)
CSV_LINE_FIELDS = (
    "kind",
    "metric",
    "category",
    "quantity",
    "billable_quantity",
    "amount",
    "late_period_start",
    "projects",
)


def to_csv(documents: list[dict[str, Any]]) -> str:
    """One row per line item, the invoice fields repeated; projects as project=qty:amount."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_INVOICE_FIELDS + tuple(f"line_{f}" for f in CSV_LINE_FIELDS))
    for doc in documents:
        head = [doc[f] for f in CSV_INVOICE_FIELDS]
        for line in doc["lines"]:
            projects = ";".join(
                f"{p['project']}={p['quantity']}:{p['amount']}" for p in line["projects"]
            )
            writer.writerow(
                head
                + [
                    line["kind"],
                    line["metric"] or "",
                    line["category"],
                    line["quantity"],
                    line["billable_quantity"],
                    line["amount"],
                    line.get("late_period_start", ""),
                    projects,
                ]
            )
    return out.getvalue()
