"""Hostile files and API bodies: generated load documents, usage, payments.

The files go through the real ``billing-bot`` command line (forked by the zygote, so each
example costs milliseconds, not seconds of imports); the API bodies through the served app.
Whatever the input: no traceback, a one-line reason, and no partial write. ``load`` is all or
nothing; an import keeps exactly its good lines, each whole, and counts nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core.db import tables as t
from billing_core.services import BillingService
from bot.api import api_routes
from bot.server import create_app
from tests import factories
from tests.hardening.conftest import Zygote, changed_tables, snapshot
from tests.hardening.test_hostile_slack import FUZZ, INJECTIONS
from tests.notifications.conftest import sqlite_only
from tests.slack.conftest import NOW, Clock, acme_document, slack_settings
from tests.slack.slackside import serving
from tests.slack_emulator import SlackEmulator

API_TOKEN = "api-token-for-hostile-tests"
PROJECTS = ("acme/web", "acme/api", "acme/jp", "acme/nope", "globex/web")
METRICS = ("requests.GET", "storage.gb", "transfer.gb", "requests.POST")

hostile_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(INJECTIONS),
    st.sampled_from(
        ["1e999999", "NaN", "-Infinity", "-0.00", "0.0000000000001", "1" * 400, "12,30", " 5 "]
    ),
)
json_value = st.recursive(
    hostile_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON document (containers too)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaf_paths(item, (*path, index))


BASE_DOCUMENT = acme_document()
DOCUMENT_PATHS = [p for p in leaf_paths(BASE_DOCUMENT) if p]


@st.composite
def mutated_document(draw: st.DrawFn) -> Any:
    """The Acme document with one to three values replaced, removed, or keys added."""
    doc = json.loads(json.dumps(BASE_DOCUMENT))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(DOCUMENT_PATHS))
        parent: Any = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed it
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "remove" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(min_size=1, max_size=8))] = draw(hostile_scalar)
        else:
            parent[path[-1]] = draw(json_value)
    return doc


def event_line(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["good", "good", "mutated", "garbage"]))
    event = {
        "id": f"evt-{draw(st.integers(0, 30))}",  # a small pool: duplicates happen
        "project": draw(st.sampled_from(PROJECTS[:3])),
        "metric": "requests.GET",
        "quantity": str(draw(st.integers(1, 10**9))),
        "timestamp": f"2026-03-{draw(st.integers(1, 9)):02d}T12:00:00+00:00",
    }
    if kind == "mutated":
        field = draw(st.sampled_from(sorted(event)))
        event[field] = draw(st.one_of(json_value, st.sampled_from(PROJECTS + METRICS)))
    if kind == "garbage":
        return draw(st.one_of(st.text(max_size=60), st.sampled_from(INJECTIONS))).replace("\n", " ")
    return json.dumps(event, ensure_ascii=draw(st.booleans()))


@st.composite
def usage_file(draw: st.DrawFn) -> list[str]:
    return [event_line(draw) for _ in range(draw(st.integers(0, 12)))]


@st.composite
def payment_file(draw: st.DrawFn) -> list[str]:
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        payment: dict[str, Any] = json.loads(
            factories.payment(
                f"ref-{draw(st.integers(0, 20))}",
                str(draw(st.decimals(min_value=0, max_value=5000, places=2))),
                "2026-03-09T10:00:00+00:00",
            )
        )
        if draw(st.booleans()):
            field = draw(st.sampled_from(sorted(payment)))
            payment[field] = draw(
                st.one_of(json_value, st.sampled_from(["JPY", "acme/tokyo", "acme/ops", "cash"]))
            )
        lines.append(json.dumps(payment))
    return lines


def assert_no_crash(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 1), (code, err)


@pytest.fixture
def loaded(service: BillingService) -> BillingService:
    service.load(acme_document(), at=NOW)
    return service


@sqlite_only
@settings(FUZZ, max_examples=30)
@given(document=mutated_document())
def test_a_hostile_load_document_is_all_or_nothing(
    loaded: BillingService, db_url: str, zygote: Zygote, tmp_path: Path, document: Any
) -> None:
    path = tmp_path / "load.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    before = snapshot(loaded)
    code, _, err = zygote.run(db_url, "load", str(path))
    assert_no_crash(code, err)
    if code == 1:
        assert err.startswith("billing-bot: ") and len(err.strip().splitlines()) == 1, err
        assert not changed_tables(before, snapshot(loaded)), f"refused, yet written: {err}"


def usage_rows(service: BillingService) -> list[tuple[Any, ...]]:
    with service.db.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(
                    t.UsageEvent.event_id,
                    t.UsageEvent.project_id,
                    t.UsageEvent.metric,
                    t.UsageEvent.quantity,
                    t.UsageEvent.ts,
                )
            )
        ]


@sqlite_only
@settings(FUZZ, max_examples=25)
@given(lines=usage_file())
def test_a_hostile_usage_file_keeps_exactly_its_good_lines_once(
    loaded: BillingService, db_url: str, zygote: Zygote, tmp_path: Path, lines: list[str]
) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = usage_rows(loaded)
    code, out, err = zygote.run(db_url, "usage", "import", str(path))
    assert_no_crash(code, err)
    accepted, duplicates, rejected = (int(w) for w in out.split() if w.isdigit())
    assert accepted + duplicates + rejected == len([x for x in lines if x.strip()])
    assert (code == 1) == (rejected > 0)
    assert len([x for x in err.splitlines() if x.startswith("line ")]) == rejected
    after = usage_rows(loaded)
    assert len(after) == len(before) + accepted
    new = set(after) - set(before)
    assert {row[0] for row in new} <= {ids for x in lines if (ids := sent_id(x))}
    again_code, again, _ = zygote.run(db_url, "usage", "import", str(path))
    assert again.startswith("0 events accepted"), again  # nothing counts twice
    assert usage_rows(loaded) == after


def sent_id(line: str) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def payment_total(service: BillingService) -> tuple[int, Decimal]:
    with service.db.engine.connect() as conn:
        count, total = conn.execute(
            sa.select(sa.func.count(t.Payment.id), sa.func.sum(t.Payment.amount))
        ).one()
    return count, Decimal(total or 0)


@sqlite_only
@settings(FUZZ, max_examples=25)
@given(lines=payment_file())
def test_a_hostile_payment_file_counts_each_reference_once(
    loaded: BillingService, db_url: str, zygote: Zygote, tmp_path: Path, lines: list[str]
) -> None:
    path = tmp_path / "payments.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    count_before, _ = payment_total(loaded)
    code, out, err = zygote.run(db_url, "payments", "import", str(path))
    assert_no_crash(code, err)
    accepted, duplicates, rejected = (int(w) for w in out.split() if w.isdigit())
    assert accepted + duplicates + rejected == len(lines)
    assert (code == 1) == (rejected > 0)
    count_after, total_after = payment_total(loaded)
    assert count_after == count_before + accepted
    _, again, _ = zygote.run(db_url, "payments", "import", str(path))
    assert again.startswith("0 payments accepted"), again
    assert payment_total(loaded) == (count_after, total_after)
    assert loaded.check() == []


# --- bugs found: inputs that still crash the command line ---------------------------------

GOOD_EVENT = factories.event("evt-good", "requests.GET", "1000", "2026-03-02T12:00:00+00:00")
GOOD_PAYMENT = factories.payment("ref-good", "10.00", "2026-03-09T10:00:00+00:00")


@sqlite_only
@pytest.mark.parametrize("command", ["load", "usage", "payments"])
def test_a_file_that_is_not_utf8_gets_a_one_line_reason(
    loaded: BillingService, db_url: str, zygote: Zygote, tmp_path: Path, command: str
) -> None:
    path = tmp_path / "bad-bytes"
    good = {"load": "", "usage": GOOD_EVENT, "payments": GOOD_PAYMENT}[command]
    path.write_bytes(good.encode() + b'\n{"id": "\xff\xfe"}\n')
    argv = ["load", str(path)] if command == "load" else [command, "import", str(path)]
    code, out, err = zygote.run(db_url, *argv)
    assert "Traceback" not in err, err
    assert code == 1
    if command == "usage":
        assert out.startswith("1 events accepted"), out
        assert "line 2:" in err


@sqlite_only
@pytest.mark.parametrize("command", ["load", "usage", "payments"])
def test_deeply_nested_json_is_a_bad_line_not_a_crash(
    loaded: BillingService, db_url: str, zygote: Zygote, tmp_path: Path, command: str
) -> None:
    path = tmp_path / "deep.json"
    good = {"load": "", "usage": GOOD_EVENT, "payments": GOOD_PAYMENT}[command]
    path.write_text(good + "\n" + "[" * 100_000 + "\n", encoding="utf-8")
    argv = ["load", str(path)] if command == "load" else [command, "import", str(path)]
    code, out, err = zygote.run(db_url, *argv)
    assert "Traceback" not in err and "RecursionError" not in err, err[-300:]
    assert code == 1
    if command != "load":
        assert out.startswith("1 "), out
        assert "line 2:" in err


# --- the HTTP API -----------------------------------------------------------------------


@contextmanager
def api_server(
    service: BillingService, emulator: SlackEmulator, db_url: str
) -> Iterator[httpx.Client]:
    """``billing-bot serve``'s app with the API enabled, and a client holding the token."""
    settings_ = slack_settings(emulator, db_url, BILLING_API_TOKEN=API_TOKEN)
    app = create_app(settings_, service, clock=Clock(NOW), routes=api_routes(settings_, service))
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    with serving(app) as base, httpx.Client(base_url=base, headers=bearer, timeout=30) as client:
        yield client


@pytest.fixture
def api(loaded: BillingService, emulator: SlackEmulator, db_url: str) -> Iterator[httpx.Client]:
    with api_server(loaded, emulator, db_url) as client:
        yield client


@st.composite
def api_items(draw: st.DrawFn) -> Any:
    lines = draw(st.one_of(usage_file(), payment_file()))
    items: list[Any] = []
    for line in lines:
        try:
            items.append(json.loads(line))
        except ValueError:
            items.append(line)
    return draw(st.one_of(st.just(items), json_value))


@sqlite_only
@settings(FUZZ, max_examples=40)
@given(body=api_items(), endpoint=st.sampled_from(["usage", "payments"]))
def test_the_api_answers_any_json_body_without_a_5xx(
    api: httpx.Client, loaded: BillingService, body: Any, endpoint: str
) -> None:
    before = snapshot(loaded)
    response = api.post(f"/api/v1/{endpoint}", content=json.dumps(body))
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert "error" in response.json()
        assert not changed_tables(before, snapshot(loaded))
        return
    result = response.json()
    assert result["accepted"] + result["duplicates"] + len(result["rejected"]) == len(body)
    again = api.post(f"/api/v1/{endpoint}", content=json.dumps(body)).json()
    assert again["accepted"] == 0  # nothing counts twice


@sqlite_only
def test_the_api_refuses_bad_tokens_and_oversized_bodies_before_any_work(
    api: httpx.Client, loaded: BillingService
) -> None:
    before = snapshot(loaded)
    body = json.dumps([json.loads(GOOD_EVENT)])
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}, {}):
        response = httpx.post(api.base_url.join("/api/v1/usage"), content=body, headers=headers)
        assert response.status_code == 401
    huge = b"[" + b'"x",' * (4 * 1024 * 1024) + b'"x"]'  # 16 MiB and a bit
    assert api.post("/api/v1/usage", content=huge).status_code == 413
    assert not changed_tables(before, snapshot(loaded))


@sqlite_only
def test_a_deeply_nested_api_body_is_a_400(
    loaded: BillingService, emulator: SlackEmulator, db_url: str
) -> None:
    with api_server(loaded, emulator, db_url) as api:
        deep = "[" * 100_000
        found = {
            endpoint: api.post(endpoint, content=deep, headers={"Connection": "close"}).status_code
            for endpoint in ("/api/v1/usage", "/api/v1/payments")
        }
    assert found == {"/api/v1/usage": 400, "/api/v1/payments": 400}
