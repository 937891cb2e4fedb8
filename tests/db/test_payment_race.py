"""Two imports bringing the same payment reference at the same moment: it counts once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import sqlalchemy as sa

from billing_core.db.engine import Database
from billing_core.ledger import ImportReport, parse_payment, record_payment
from billing_core.services import BillingService
from tests.factories import at, document, org, payment


def test_a_reference_racing_in_from_another_import_is_a_duplicate(pg_url: str) -> None:
    db = Database(pg_url)
    service = BillingService(db)
    doc = document()
    org(doc)["billing_groups"].append(
        dict(org(doc)["billing_groups"][0], key="ops", name="Operations")
    )
    service.load(doc, at=at("2026-01-01T00:00:00+00:00"))
    first = parse_payment(
        {
            "reference": "same",
            "billing_group": "acme/eng",
            "amount": "5.00",
            "currency": "EUR",
            "method": "card",
            "received_at": "2026-01-02T00:00:00+00:00",
        }
    )
    result: list[ImportReport] = []
    with db.transaction() as session:
        record_payment(session, first, at=datetime.now(UTC))  # not committed yet
        racer = threading.Thread(
            target=lambda: result.append(
                service.import_payments(
                    [payment("same", "7.00", "2026-01-02T00:00:00+00:00", group="acme/ops")],
                    at=datetime.now(UTC),
                )
            )
        )
        racer.start()
        deadline = time.monotonic() + 20
        with db.engine.connect() as probe:  # wait until the racer blocks on the unique index
            while not probe.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ):
                assert time.monotonic() < deadline, "the second import never reached the insert"
                time.sleep(0.01)
    racer.join(timeout=20)
    [report] = result
    assert (report.accepted, report.duplicates, report.rejected) == (0, 1, [])
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    assert [p.reference for p in service.payments(admin)] == ["same"]
    assert service.check() == []
    db.dispose()
