"""The results table: each figure (a median of runs) beside its target and its floor."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One line of the table. ``ok`` None: shown for information, judged by no target."""

    key: str  # stable id, e.g. "1.import"
    figure: str
    target: str
    floor: str
    ratio: str
    ok: bool | None
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "info"}[self.ok]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def rate(per_second: float, unit: str) -> str:
    return f"{per_second:,.0f} {unit}/s"


def times(ratio: float) -> str:
    return f"{ratio:.2f}x"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table (readable as plain text too)."""
    head = ("benchmark", "figure (median)", "target", "floor (same run)", "ratio", "result")
    body = [(r.key, r.figure, r.target, r.floor, r.ratio, r.verdict) for r in rows]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"

    lines = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(line) for line in body]
    notes = [f"- {r.key}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def as_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
