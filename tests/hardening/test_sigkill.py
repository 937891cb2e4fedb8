"""``run-billing`` killed with SIGKILL at random points, ten times, then run to the end.

The kill points are seeded: half come after a random delay (anywhere from the interpreter
starting to the middle of the run), half once the run has issued a random number of new
invoices. Either way a run cannot get more than MAX_PER_RUN invoices ahead: the test holds the
lock of the group whose invoice would come next, so the run waits there (a poll alone cannot
stop it: a batch commits many invoices at once). After each kill the database must already be
consistent (numbers gapless, every close with its invoice); after the final run the invoices
must equal a clean run's, numbers included: periods close in a fixed order, and a killed close
gives its number back.
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import pytest
import sqlalchemy as sa

from billing_core.db import tables as t
from billing_core.services import BillingService
from tests.db.test_concurrency import (
    RUN_AT,
    TIMEOUT,
    export_all,
    gapless,
    lock_waiters,
    prepare,
    reference,  # noqa: F401 - the clean run's export (module fixture)
)
from tests.hardening.conftest import Forked, Zygote, row_locked

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

KILLS = 10
MAX_PER_RUN = 8  # invoices a run may issue before its kill (the dataset has 104)
SEED = 6_2026


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


def issued(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.scalars(sa.select(t.Invoice.number)))


def orphans_gone(engine: sa.Engine) -> None:
    """Wait until the killed client's server process has rolled back (or committed) and left."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        with engine.connect() as conn:
            busy = conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state <> 'idle'"
                )
            )
        if not busy:
            return
        assert time.monotonic() < deadline, "the killed run's backend is still working"
        time.sleep(0.02)


def consistent_so_far(engine: sa.Engine) -> None:
    """What a kill may never leave behind: a gap in the numbers or a close without its work."""
    with engine.connect() as conn, conn.begin():
        numbers = sorted(conn.scalars(sa.select(t.Invoice.number)))
        counter = conn.scalar(sa.text("SELECT value FROM counters WHERE name = 'invoice'")) or 0
        lineless = conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.Invoice)
            .where(~sa.exists().where(t.InvoiceLine.invoice_id == t.Invoice.id))
        )
    assert numbers == gapless(counter)
    assert lineless == 0


def kill_at_random(rng: random.Random, run: Forked, engine: sa.Engine) -> str:
    """SIGKILL ``run`` at a seeded random point; says where.

    Half the kills come after a random delay, half after a random number of new invoices, or
    once the run waits on the group lock the caller holds, whichever comes first.
    """
    start = len(issued(engine))
    if rng.random() < 0.5:
        delay, more = rng.uniform(0.0, 0.8), MAX_PER_RUN
        where = f"after {delay:.2f}s"
    else:
        delay, more = TIMEOUT, rng.randint(1, MAX_PER_RUN)
        where = f"after {more} more invoices"
    started = time.monotonic()
    while time.monotonic() - started < delay and run.poll() is None:
        if len(issued(engine)) >= start + more or lock_waiters(engine):
            break
        time.sleep(0.01)
    else:
        assert run.poll() is not None or delay < TIMEOUT, "the run made no progress"
    run.kill()
    code, _, err = run.finish()
    assert code in (-signal.SIGKILL, 0), err  # 0: it finished before the signal
    return where


def test_a_run_killed_ten_times_then_rerun_equals_a_clean_run(
    pg_url: str,
    service: BillingService,
    reference: list[dict[str, Any]],  # noqa: F811
    engine: sa.Engine,
    zygote: Zygote,
) -> None:
    prepare(pg_url)
    rng = random.Random(SEED)
    kills: list[tuple[str, int]] = []
    by_number = sorted(reference, key=lambda d: str(d["number"]))
    for _ in range(KILLS):
        # The group of the invoice MAX_PER_RUN past the last one issued: the run stops there.
        stop = by_number[len(issued(engine)) + MAX_PER_RUN]
        with row_locked(
            engine,
            "SELECT 1 FROM billing_groups g JOIN organizations o ON o.id = g.organization_id "
            "WHERE o.key = :org AND g.key = :group FOR UPDATE OF g",
            org=stop["organization"],
            group=stop["billing_group"],
        ):
            run = zygote.start(pg_url, "run-billing", "--at", RUN_AT)
            where = kill_at_random(rng, run, engine)
        orphans_gone(engine)
        consistent_so_far(engine)
        kills.append((where, len(issued(engine))))
        print(time.monotonic(), kills[-1])
    done = kills[-1][1]
    assert 0 < done < len(reference), f"the kills should land mid-run: {kills}"

    code, out, err = zygote.run(pg_url, "run-billing", "--at", RUN_AT)
    assert code == 0, err
    assert out.splitlines()[0] == f"issued INV-2026-{done + 1:06d}"
    assert export_all(pg_url) == reference
    assert service.check() == []
