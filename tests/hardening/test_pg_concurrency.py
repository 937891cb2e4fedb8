"""Races on PostgreSQL: many admins at once, and usage arriving while a period closes.

Every race is forced, not hoped for: the test holds the row lock the writers need from its own
connection, waits (polling ``pg_stat_activity``) until every writer is blocked on it, then lets
them all go at once. No sleep decides an outcome.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.services import BillingService
from bot.handlers import Asker, Handlers, Outcome
from bot.views.admin import CONFIRM_ACTION
from tests import factories
from tests.db.test_concurrency import (
    RUN_AT,
    ZONES,
    Run,
    dataset,
    due_order,
    lock_waiters,
    prepare,
    wait_for,
)
from tests.hardening.conftest import row_locked
from tests.slack.conftest import ADMIN, NOW, acme_document, audit_log, bill_acme, project_group
from tests.slack.slackside import TEAM, as_text

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WRITERS = 50
BOSS = "U0BOSS"
FINAL_AT = "2026-04-01T12:00:00+00:00"  # closes every period the extra usage falls into
SUM_METRICS = ("requests.GET", "transfer.gb")


@pytest.fixture
def db_url(pg_url: str) -> str:
    """Only PostgreSQL here: ``service`` (and its closing check) use the test's database."""
    return pg_url


@pytest.fixture
def wide(pg_url: str) -> Iterator[BillingService]:
    """A service whose pool lets every one of the writers hold its own connection."""
    database = Database(pg_url, pool_size=WRITERS, max_overflow=0)
    yield BillingService(database)
    database.dispose()


def released_together(
    engine: sa.Engine, lock_sql: str, params: dict[str, Any], work: list[Callable[[], Outcome]]
) -> list[Outcome]:
    """Run ``work`` in threads that all block on one held row lock, then release them at once."""
    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        futures: list[Future[Outcome]] = []
        with row_locked(engine, lock_sql, **params):
            futures = [pool.submit(job) for job in work]
            wait_for(
                lambda: len(lock_waiters(engine)) >= len(work), f"{len(work)} writers wait", []
            )
        return [future.result(timeout=120) for future in futures]


def coupon_document() -> dict[str, Any]:
    doc = factories.document(
        coupons=[
            {"code": "ONCE", "percent_off": "10", "duration": "once", "max_redemptions": 1},
            {"code": "EVERY", "percent_off": "10", "duration": "once"},
        ]
    )
    org = factories.org(doc)
    template = org["billing_groups"][0]
    org["billing_groups"] = [
        {**template, "key": f"g{n:02d}", "name": f"Group {n}", "contacts": []}
        for n in range(WRITERS)
    ]
    org["projects"] = [{"key": "web", "name": "Website", "billing_group": "g00"}]
    return doc


def redemption_count(service: BillingService) -> int:
    with service.db.transaction() as session:
        return len(session.scalars(sa.select(t.Redemption.id)).all())


def times_redeemed(service: BillingService, code: str) -> int:
    with service.db.transaction() as session:
        return session.scalars(sa.select(t.CouponRow.times_redeemed).filter_by(code=code)).one()


@pytest.mark.parametrize(
    ("texts", "lock_sql", "refusal"),
    [
        pytest.param(
            [f"redeem ONCE g{n:02d}" for n in range(WRITERS)],
            "SELECT 1 FROM coupons WHERE code = 'ONCE' FOR UPDATE",
            "Coupon ONCE has been redeemed the maximum number of times.",
            id="coupon-allowed-once-50-groups",
        ),
        pytest.param(
            ["redeem EVERY g00"] * WRITERS,
            "SELECT 1 FROM billing_groups WHERE key = 'g00' FOR UPDATE",
            "Group `g00` has already redeemed EVERY.",
            id="one-group-50-clicks",
        ),
    ],
)
def test_fifty_simultaneous_redemptions_exactly_one_succeeds(
    service: BillingService,
    wide: BillingService,
    engine: sa.Engine,
    texts: list[str],
    lock_sql: str,
    refusal: str,
) -> None:
    service.load(coupon_document(), at=NOW)
    handlers = Handlers(wide, clock=lambda: NOW)
    admin = Asker(TEAM, ADMIN)
    work = [lambda text=text: handlers.command(admin, text) for text in texts]

    outcomes = released_together(engine, lock_sql, {}, work)

    winners = [o for o in outcomes if o.change is not None]
    assert len(winners) == 1
    losers = [as_text(o.reply.message()) for o in outcomes if o.change is None]
    assert len(losers) == WRITERS - 1
    assert all(refusal in shown for shown in losers), Counter(losers).most_common(3)
    assert redemption_count(service) == 1
    code = texts[0].split()[1]
    assert times_redeemed(service, code) == 1
    assert audit_log(service) == [(ADMIN, "coupon.redeem", winners[0].change.subject)]


@pytest.mark.parametrize("targets", [("ops", "tokyo"), ("ops", "ops")], ids=["apart", "same"])
def test_two_admins_moving_one_project_at_once_one_wins_and_the_log_says_so(
    service: BillingService, wide: BillingService, engine: sa.Engine, targets: tuple[str, str]
) -> None:
    bill_acme(service)
    doc = acme_document()
    factories.org(doc)["members"].append({"slack_user_id": BOSS, "role": "admin"})
    service.load(doc, at=NOW)
    handlers = Handlers(wide, clock=lambda: NOW)
    admins = [Asker(TEAM, ADMIN), Asker(TEAM, BOSS)]
    confirms: list[Callable[[], Outcome]] = []
    for admin, target in zip(admins, targets, strict=True):
        question = handlers.command(admin, f"assign web {target}")
        [confirm] = [b for b in question.reply.buttons() if b.action_id == CONFIRM_ACTION]
        value = confirm.value or ""
        confirms.append(
            lambda admin=admin, value=value: handlers.button(admin, CONFIRM_ACTION, value)
        )

    outcomes = released_together(
        engine, "SELECT 1 FROM billing_groups WHERE key = 'eng' FOR UPDATE", {}, confirms
    )

    [winner] = [i for i, o in enumerate(outcomes) if o.change is not None]
    loser = outcomes[1 - winner]
    assert loser.change is None
    assert "since you were asked; nothing was changed." in as_text(loser.reply.message())
    moved_to = targets[winner]
    assert project_group(service, "web") == moved_to
    with service.db.transaction() as session:
        entries = session.scalars(sa.select(t.AuditEntry).filter_by(action="project.assign")).all()
        moves = session.scalars(
            sa.select(t.ProjectAssignment.billing_group_id).order_by(t.ProjectAssignment.id)
        ).all()
    assert [(e.actor, e.subject, e.before, e.after) for e in entries] == [
        (
            admins[winner].user_id,
            "acme/web",
            {"billing_group": "eng"},
            {"billing_group": moved_to},
        )
    ]
    assert len(moves) == 1 + len(factories.org(doc)["projects"])  # the load's, plus one move


# --- usage import while run-billing closes the period -------------------------------------


def extra_usage(seed: int) -> list[str]:
    """Usage in every period of every group (monthly and anniversary), shuffled by pairs.

    Each project-day is a pair of adjacent lines (requests, then transfer) that the test never
    splits between files: a close that claims only a few gigabytes of free-tier transfer owes
    nothing and issues no invoice (SPEC 5), so quantities it settled would appear on no invoice
    line and "billed equals imported" could not be read off the invoices.
    """
    doc, _ = dataset()
    pairs = []
    for org, (org_key, _, offset) in zip(doc["organizations"], ZONES, strict=True):
        for n, project in enumerate(p["key"] for p in org["projects"]):
            ref = f"{org_key}/{project}"
            for day in ("01-05", "01-20", "02-05", "02-20", "03-05"):
                ts = f"2026-{day}T12:00:00{offset}"
                requests = str(10_000_000 + n * 1_009)
                gigabytes = f"{n % 7}.25"
                pairs.append(
                    [
                        factories.event(
                            f"x-{ref}-{day}-get", "requests.GET", requests, ts, project=ref
                        ),
                        factories.event(
                            f"x-{ref}-{day}-tx", "transfer.gb", gigabytes, ts, project=ref
                        ),
                    ]
                )
    random.Random(seed).shuffle(pairs)
    return [line for pair in pairs for line in pair]


def quantities(lines: list[str]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = dict.fromkeys(SUM_METRICS, Decimal(0))
    for event in {json.loads(line)["id"]: json.loads(line) for line in lines}.values():
        if event["metric"] in totals:
            totals[event["metric"]] += Decimal(event["quantity"])
    return totals


def billed_quantities(engine: sa.Engine) -> dict[str, Decimal]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.InvoiceLine.metric, sa.func.sum(t.InvoiceLine.quantity))
            .where(t.InvoiceLine.metric.in_(SUM_METRICS))
            .group_by(t.InvoiceLine.metric)
        ).all()
    return {metric: Decimal(total) for metric, total in rows}


def accepted(run: Run) -> int:
    code, out, err = run.finish()
    assert code == 0, err
    return int(out.split()[0])  # "N events accepted, M duplicates skipped, 0 rejected"


@contextmanager
def group_held(engine: sa.Engine, group_id: int) -> Iterator[None]:
    """Hold a group as a close does (FOR NO KEY UPDATE): closes wait, usage inserts do not."""
    with row_locked(
        engine, "SELECT 1 FROM billing_groups WHERE id = :id FOR NO KEY UPDATE", id=group_id
    ):
        yield


def test_usage_imported_while_billing_runs_is_billed_exactly_once(
    service: BillingService,
    engine: sa.Engine,
    pg_url: str,
    start_cli: Callable[..., Run],
    tmp_path: Path,
) -> None:
    prepare(pg_url)
    _, base = dataset()
    extra = extra_usage(seed=6)
    third = len(extra) // 3 // 2 * 2  # even: no project-day's pair is split between files
    files = []
    for n, chunk in enumerate(
        # The last file re-sends part of the first: those ids must not count twice.
        (extra[:third], extra[third : 2 * third], extra[2 * third :] + extra[: third // 4 * 2])
    ):
        path = tmp_path / f"usage{n}.jsonl"
        path.write_text("\n".join(chunk) + "\n", encoding="utf-8")
        files.append(str(path))
    due = due_order(pg_url)
    victim = due[len(due) // 2][0]

    with group_held(engine, victim):
        run = start_cli(pg_url, "run-billing", "--at", RUN_AT)
        wait_for(lambda: len(lock_waiters(engine)) == 1, "the run waits half way", [run])
        first = start_cli(pg_url, "usage", "import", files[0])
        imported = accepted(first)  # lands while half the periods are closed
    rest = [start_cli(pg_url, "usage", "import", f) for f in files[1:]]  # races the run
    imported += sum(accepted(r) for r in rest)
    code, _, err = run.finish()
    assert code == 0, err
    assert imported == len({json.loads(line)["id"] for line in extra})

    report = service.run_billing(at=factories.at(FINAL_AT))
    assert not report.failed
    with engine.connect() as conn:
        # Settled: under the watermark and before the end of one of its group's closes.
        unclaimed = conn.scalar(
            sa.text(
                "SELECT count(*) FROM usage_events e WHERE NOT EXISTS (SELECT 1 FROM "
                "period_closes c WHERE c.billing_group_id = e.billing_group_id "
                "AND e.id <= c.usage_upto AND e.ts < c.period_end)"
            )
        )
        late_lines = conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.InvoiceLine)
            .where(t.InvoiceLine.late_period_start.is_not(None))
        )
    assert unclaimed == 0
    assert late_lines > 0, "some usage arrived after its period closed"
    assert billed_quantities(engine) == quantities(base + extra)
