"""The read commands' path to the database: one transaction, a fixed number of queries.

``balance``'s own rating queries live in billing_core.issuing (per group); the other reads
must not grow with the number of groups or invoices, and every read command looks its asker up
and answers on one connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from babel import Locale
from babel.numbers import format_decimal
from sqlalchemy import event

from billing_core.errors import NotAllowed
from billing_core.money import Money
from billing_core.services import BillingService
from bot import format as fmt
from bot.handlers import Asker, Handlers
from tests.slack.conftest import ADMIN, DEV, NOW, STRANGER, Clock

TEAM = "T0ACME"


@dataclass
class Traffic:
    statements: list[str] = field(default_factory=list)
    checkouts: int = 0

    @property
    def queries(self) -> list[str]:
        """What the billing code asked (not SQLite's BEGIN IMMEDIATE, nor a pool ping)."""
        return [
            s
            for s in self.statements
            if not s.lstrip().upper().startswith("BEGIN") and s.strip() != "SELECT 1"
        ]


@contextmanager
def watched(service: BillingService) -> Iterator[Traffic]:
    traffic = Traffic()
    engine = service.db.engine

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        traffic.statements.append(statement)

    def on_checkout(*_args: Any) -> None:
        traffic.checkouts += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine.pool, "checkout", on_checkout)
    try:
        yield traffic
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine.pool, "checkout", on_checkout)


@pytest.fixture
def handlers(billed: BillingService) -> Handlers:
    return Handlers(billed, clock=Clock(NOW))


def shown(handlers: Handlers, user: str, text: str) -> str:
    return str(handlers.command(Asker(TEAM, user), text).reply.message())


# actor, then organization + groups, invoices, lines with their projects, discounts + credits
@pytest.mark.parametrize(
    ("text", "most"), [("owed", 5), ("invoices", 5), ("invoice INV-2026-000002", 4)]
)
def test_invoice_reads_take_one_connection_and_a_fixed_number_of_queries(
    handlers: Handlers, billed: BillingService, text: str, most: int
) -> None:
    with watched(billed) as traffic:
        answer = shown(handlers, DEV, text)
    assert "went wrong" not in answer and "no_entry_sign" not in answer, answer
    assert traffic.checkouts == 1, "the asker and the answer share one transaction"
    assert len(traffic.queries) <= most, traffic.queries


@pytest.mark.parametrize("text", ["balance", "payments", "credits", "groups", "balance eng"])
def test_every_read_command_takes_one_connection(
    handlers: Handlers, billed: BillingService, text: str
) -> None:
    with watched(billed) as traffic:
        answer = shown(handlers, DEV, text)
    assert "went wrong" not in answer and "no_entry_sign" not in answer, answer
    assert traffic.checkouts == 1


def test_balance_loads_prices_and_plans_once_not_per_group(
    handlers: Handlers, billed: BillingService
) -> None:
    with watched(billed) as traffic:
        shown(handlers, DEV, "balance")
    lists = [q for q in traffic.queries if "FROM price_lists" in q]
    organizations = [q for q in traffic.queries if "FROM organizations" in q]
    assert len(lists) == 1, lists  # three groups, two price lists, one query
    # the asker's; the groups' organization comes with the groups, not once per group
    assert len(organizations) == 1, organizations


def test_a_refusal_inside_a_read_leaves_nothing_open(
    handlers: Handlers, billed: BillingService
) -> None:
    assert "no_entry_sign" in shown(handlers, STRANGER, "owed")
    assert "no_entry_sign" in shown(handlers, DEV, "owed nosuchgroup")
    # A write right after (SQLite: BEGIN IMMEDIATE) would wait on a transaction left open.
    done = handlers.command(Asker(TEAM, ADMIN), "redeem WELCOME10 eng")
    assert done.change is not None, done.reply.message()


def test_reading_shares_one_session_and_ends_with_a_refusal(billed: BillingService) -> None:
    with watched(billed) as traffic, billed.reading():
        actor = billed.actor(team_id=TEAM, user_id=DEV)
        billed.owed(actor, at=NOW)
        billed.invoices(actor)
        billed.groups(actor)
    assert traffic.checkouts == 1
    with pytest.raises(NotAllowed), billed.reading():
        billed.actor(team_id=TEAM, user_id=STRANGER)
    with watched(billed) as traffic:  # nothing left behind: each call has its own again
        assert billed.actor(team_id=TEAM, user_id=ADMIN).is_admin
        billed.groups(billed.actor(team_id=TEAM, user_id=DEV))
    assert traffic.checkouts == 3


def test_cached_texts_are_babels_own_for_each_value_currency_and_locale() -> None:
    locales = [Locale.parse(name) for name in ("en_US", "de_DE", "ja_JP")]
    quantities = ["1", "1.0", "1.00", "1.50", "1.5", "1234.5", "0.000000001"]
    amounts = [("1234.5", "EUR"), ("1234.50", "EUR"), ("1234", "JPY"), ("-5", "EUR"), ("7", "USD")]
    expected = {
        (q, str(loc)): format_decimal(Decimal(q), locale=loc, decimal_quantization=False)
        for q in quantities
        for loc in locales
    }
    for _ in range(2):  # the second round is answered from the caches
        for loc in locales:
            for q in quantities:
                assert fmt.quantity(Decimal(q), loc) == expected[(q, str(loc))], (q, loc)
    en, de = Locale.parse("en_US"), Locale.parse("de_DE")
    for _ in range(2):
        assert fmt.money(Money(Decimal("1234.5"), "EUR"), en) == "€1,234.50"
        assert fmt.money(Money(Decimal("1234.5"), "EUR"), de) == "1.234,50\xa0€"
        assert fmt.money(Money(Decimal("1234"), "JPY"), en) == "¥1,234"
        assert fmt.money(Money(Decimal("1234"), "USD"), en) == "$1,234.00"
        assert fmt.money(Money(Decimal("-5"), "EUR"), en) == "-€5.00"
        assert len({fmt.money(Money(Decimal(a), c), en) for a, c in amounts}) == 4
