"""``load`` (SPEC 4.1) on SQLite and PostgreSQL: refusals name the path and write nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from billing_core.db import tables as t
from billing_core.db.engine import Database
from billing_core.errors import InvalidInput
from billing_core.services import BillingService
from tests.conftest import new_database_url
from tests.factories import at, document, event, org

T0 = at("2026-01-01T00:00:00+00:00")

Doc = dict[str, Any]


def rich_document() -> Doc:
    """The factory document with something in every section, so a dump shows any write."""
    doc = document(
        plans=[
            {
                "key": "pro",
                "name": "Pro",
                "price_list": "standard-eur",
                "monthly_fee": "49.00",
                "included": {"requests.GET": "5000000"},
            }
        ],
        coupons=[
            {
                "code": "WELCOME10",
                "percent_off": "10",
                "duration": "once",
                "redeem_by": "2027-01-01T00:00:00+00:00",
            }
        ],
    )
    acme = org(doc)
    acme["units"] = [{"key": "rnd", "name": "R&D", "parent": None}]
    acme["billing_groups"][0]["contacts"].append(
        {"slack_channel_id": "C0BILLING", "email": "billing@acme.example"}
    )
    acme["billing_groups"].append(
        {
            "key": "ops",
            "name": "Operations",
            "price_list": "standard-eur",
            "payment_method": "bank_transfer",
            "created_at": "2026-01-01T00:00:00+00:00",
            "subscription": {"plan": "pro", "start": "2026-01-15T00:00:00+00:00"},
            "contacts": [{"slack_user_id": "U0OPS"}],
        }
    )
    acme["credits"] = [{"billing_group": "eng", "amount": "25.00", "reason": "trial"}]
    return doc


def second_org(key: str = "beta", group: str = "ops") -> Doc:
    return {
        "key": key,
        "name": key.title(),
        "timezone": "Europe/Berlin",
        "billing_groups": [
            {
                "key": group,
                "name": "Ops",
                "price_list": "standard-eur",
                "payment_method": "card",
                "created_at": "2026-01-01T00:00:00+01:00",
            }
        ],
        "projects": [{"key": "site", "name": "Site", "billing_group": group}],
    }


def dump(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the database has, in a stable order."""
    with db.engine.connect() as conn:
        tables = sa.MetaData()
        tables.reflect(conn)
        return {
            table.name: sorted((tuple(row) for row in conn.execute(sa.select(table))), key=repr)
            for table in tables.sorted_tables
        }


def count(db: Database, model: type[t.Base], **where: Any) -> int:
    with db.transaction() as session:
        return int(
            session.scalar(sa.select(sa.func.count()).select_from(model).filter_by(**where)) or 0
        )


def with_valid_changes_first(doc: Doc) -> Doc:
    """Changes that would be written if the load were not refused as a whole."""
    doc["price_lists"].append({"key": "extra-usd", "currency": "USD", "metrics": []})
    doc["coupons"].append({"code": "EXTRA5", "percent_off": "5", "duration": "forever"})
    org(doc)["name"] = "Acme Renamed"
    org(doc)["members"].append({"slack_user_id": "U0NEW", "role": "member"})
    org(doc)["credits"].append({"billing_group": "ops", "amount": "5.00", "key": "extra"})
    return doc


def _set(path: list[str | int], value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


def _append(path: list[str | int], value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        target: Any = doc
        for step in path:
            target = target[step]
        target.append(copy.deepcopy(value))

    return change


def _chain(*changes: Callable[[Doc], None]) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        for one in changes:
            one(doc)

    return change


GROUP: list[str | int] = ["organizations", 0, "billing_groups", 0]
TIERS: list[str | int] = ["price_lists", 0, "metrics", 2, "tiers"]

REFUSALS: list[tuple[str, Callable[[Doc], None], str]] = [
    ("unknown key", _set(["organizations", 0, "colour"], "red"), "organizations[0].colour"),
    (
        "unknown nested key",
        _set([*GROUP, "discount"], "10"),
        "organizations[0].billing_groups[0].discount",
    ),
    ("unknown top-level key", _set(["invoices"], []), "invoices"),
    (
        "float amount",
        _set(["organizations", 0, "credits", 0, "amount"], 25.0),
        "organizations[0].credits[0].amount",
    ),
    (
        "float tax rate",
        _set([*GROUP, "tax_rate"], 0.19),
        "organizations[0].billing_groups[0].tax_rate",
    ),
    (
        "string where a list is expected",
        _set(["organizations", 0, "members"], "U0ADMIN"),
        "organizations[0].members",
    ),
    (
        "object where a list is expected",
        _set(["price_lists"], {"key": "standard-eur"}),
        "price_lists",
    ),
    (
        "group currency differs from its price list",
        _set([*GROUP, "currency"], "USD"),
        "organizations[0].billing_groups[0].currency",
    ),
    (
        "project in another organization's group",
        _append(
            ["organizations"],
            second_org() | {"projects": [{"key": "site", "name": "Site", "billing_group": "eng"}]},
        ),
        "organizations[1].projects[0].billing_group",
    ),
    (
        "unknown price list",
        _set([*GROUP, "price_list"], "gold-eur"),
        "organizations[0].billing_groups[0].price_list",
    ),
    (
        "unknown plan",
        _set([*GROUP, "subscription"], {"plan": "gold", "start": "2026-01-15T00:00:00+00:00"}),
        "organizations[0].billing_groups[0].subscription.plan",
    ),
    (
        "plan on an unknown price list",
        _set(["plans", 0, "price_list"], "gold-eur"),
        "plans[0].price_list",
    ),
    (
        "tiers that do not rise",
        _set(
            TIERS,
            [
                {"up_to": "100", "unit_price": "0"},
                {"up_to": "100", "unit_price": "0.05"},
                {"up_to": None, "unit_price": "0.09"},
            ],
        ),
        "price_lists[0].metrics[2].tiers[1].up_to",
    ),
    (
        "unbounded tier before the last",
        _set(
            TIERS,
            [{"up_to": None, "unit_price": "0"}, {"up_to": "100", "unit_price": "0.09"}],
        ),
        "price_lists[0].metrics[2].tiers[0].up_to",
    ),
    (
        "bounded last tier",
        _set(TIERS, [{"up_to": "100", "unit_price": "0"}]),
        "price_lists[0].metrics[2].tiers[0].up_to",
    ),
    (
        "duplicate organization key",
        _append(["organizations"], second_org(key="acme")),
        "organizations[1].key",
    ),
    (
        "duplicate billing group key",
        _append(
            ["organizations", 0, "billing_groups"],
            document()["organizations"][0]["billing_groups"][0],
        ),
        "organizations[0].billing_groups[2].key",
    ),
    (
        "duplicate project key",
        _append(
            ["organizations", 0, "projects"], {"key": "web", "name": "Web", "billing_group": "ops"}
        ),
        "organizations[0].projects[1].key",
    ),
    (
        "duplicate member",
        _append(["organizations", 0, "members"], {"slack_user_id": "U0DEV", "role": "admin"}),
        "organizations[0].members[3].slack_user_id",
    ),
    (
        "duplicate metric",
        _append(
            ["price_lists", 0, "metrics"],
            {"metric": "storage.gb", "category": "Storage", "unit_price": "1"},
        ),
        "price_lists[0].metrics[3].metric",
    ),
    (
        "duplicate contact",
        _append([*GROUP, "contacts"], {"slack_user_id": "U0FIN"}),
        "organizations[0].billing_groups[0].contacts[2].slack_user_id",
    ),
    (
        "duplicate credit key",
        _append(
            ["organizations", 0, "credits"],
            {"billing_group": "ops", "amount": "5.00", "key": "extra"},
        ),
        "organizations[0].credits[2].key",
    ),
    (
        "coupon codes differing only in case",
        _append(["coupons"], {"code": "welcome10", "percent_off": "5", "duration": "once"}),
        "coupons[2].code",
    ),
    (
        "bad time zone",
        _set(["organizations", 0, "timezone"], "Mars/Olympus"),
        ("organizations[0].timezone"),
    ),
    (
        "naive created_at",
        _set([*GROUP, "created_at"], "2026-01-01T00:00:00"),
        "organizations[0].billing_groups[0].created_at",
    ),
    (
        "naive redeem_by",
        _set(["coupons", 0, "redeem_by"], "2027-01-01T00:00:00"),
        "coupons[0].redeem_by",
    ),
    (
        "float allowance",
        _set(["plans", 0, "included"], {"requests.GET": 5000000.0}),
        "plans[0].included.requests.GET",
    ),
    (
        "price list currency changed under groups not in the file",
        _chain(_set(["price_lists", 0, "currency"], "USD"), _set(["organizations"], [])),
        "price_lists[0].currency",
    ),
    (
        "plan moved off the price list its subscribers use",
        _chain(
            _append(["price_lists"], {"key": "cheap-eur", "currency": "EUR", "metrics": []}),
            _set(["plans", 0, "price_list"], "cheap-eur"),
            _set(["plans", 0, "included"], {}),
            _set(["organizations"], []),
        ),
        "plans[0].price_list",
    ),
]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BillingService]:
    """One database per backend with the rich document loaded; refusals must leave it as is,
    so the refusal cases can share it (each checks that its own refusal wrote nothing)."""
    url = new_database_url(request.param, request, tmp_path_factory.mktemp("loader"))
    database = Database(url)
    service = BillingService(database)
    service.load(rich_document(), at=T0)
    yield service
    database.dispose()


@pytest.mark.parametrize(
    ("change", "path"),
    [pytest.param(change, path, id=name) for name, change, path in REFUSALS],
)
def test_a_refused_load_names_the_path_and_writes_nothing(
    loaded: BillingService, change: Callable[[Doc], None], path: str
) -> None:
    before = dump(loaded.db)
    bad = with_valid_changes_first(rich_document())
    change(bad)

    with pytest.raises(InvalidInput) as refused:
        loaded.load(bad, at=at("2026-01-02T00:00:00+00:00"))

    assert refused.value.path == path
    assert str(refused.value).startswith(f"{path}: ")
    assert dump(loaded.db) == before


def test_the_first_load_of_a_bad_file_leaves_the_database_empty(service: BillingService) -> None:
    empty = dump(service.db)
    bad = rich_document()
    bad["organizations"].append(second_org() | {"timezone": "Nowhere/Special"})

    with pytest.raises(InvalidInput, match=r"^organizations\[1\]\.timezone: "):
        service.load(bad, at=T0)

    assert dump(service.db) == empty


def test_loading_the_same_file_twice_changes_nothing(service: BillingService) -> None:
    first = service.load(rich_document(), at=T0)
    after_first = dump(service.db)

    again = service.load(rich_document(), at=at("2026-01-09T00:00:00+00:00"))

    assert first.created["credits"] == 1
    assert "credits" not in again.created
    assert again.reassigned == []
    assert dump(service.db) == after_first
    assert count(service.db, t.Credit) == 1
    assert count(service.db, t.Contact) == 3
    assert count(service.db, t.Member) == 2
    assert count(service.db, t.ProjectAssignment) == 1


def test_a_reload_updates_contacts_in_place(service: BillingService) -> None:
    service.load(rich_document(), at=T0)
    with service.db.transaction() as session:
        kept = session.scalars(
            sa.select(t.Contact.id).filter_by(slack_channel_id="C0BILLING")
        ).one()
    changed = rich_document()
    contacts = org(changed)["billing_groups"][0]["contacts"]
    contacts[1]["email"] = "accounts@acme.example"
    del contacts[0]

    service.load(changed, at=T0)

    with service.db.transaction() as session:
        group = session.scalars(sa.select(t.BillingGroup).filter_by(key="eng")).one()
        rows = session.scalars(sa.select(t.Contact).filter_by(billing_group_id=group.id)).all()
        assert [(c.id, c.slack_channel_id, c.email) for c in rows] == [
            (kept, "C0BILLING", "accounts@acme.example")
        ]


def test_moving_a_project_in_a_reload_keeps_history_and_is_audited(
    service: BillingService,
) -> None:
    service.load(rich_document(), at=T0)
    service.import_usage([event("before", "requests.GET", "1000000", "2026-01-05T00:00:00+00:00")])
    moved = rich_document()
    org(moved)["projects"][0]["billing_group"] = "ops"

    summary = service.load(moved, at=at("2026-01-15T00:00:00+00:00"))
    service.load(moved, at=at("2026-01-16T00:00:00+00:00"))  # no second move
    service.import_usage([event("after", "requests.GET", "3000000", "2026-01-20T00:00:00+00:00")])
    service.run_billing(at=at("2026-02-15T00:00:00+00:00"))  # ops: subscribed from Jan 15

    assert summary.reassigned == ["acme/web"]
    with service.db.transaction() as session:
        history = session.execute(
            sa.select(t.BillingGroup.key, t.ProjectAssignment.valid_from)
            .join(t.BillingGroup, t.BillingGroup.id == t.ProjectAssignment.billing_group_id)
            .order_by(t.ProjectAssignment.id)
        ).all()
        audit = session.scalars(sa.select(t.AuditEntry)).all()
    assert [key for key, _ in history] == ["eng", "ops"]
    assert history[1][1] == at("2026-01-15T00:00:00+00:00")
    assert [(a.actor, a.action, a.subject, a.before, a.after) for a in audit] == [
        ("load", "project.assign", "acme/web", {"billing_group": "eng"}, {"billing_group": "ops"})
    ]
    quantities = {
        doc["billing_group"]: Decimal(line["quantity"])
        for doc in service.export_invoices(org_key="acme")
        for line in doc["lines"]
        if line["metric"] == "requests.GET"
    }
    assert quantities == {"eng": 1000000, "ops": 3000000}


def _billed(service: BillingService) -> None:
    service.load(rich_document(), at=T0)
    service.import_usage([event("e1", "requests.GET", "1000000", "2026-01-05T00:00:00+00:00")])
    assert service.run_billing(at=at("2026-02-01T00:00:00+00:00")).issued


def test_a_billed_group_keeps_its_created_at_and_currency(service: BillingService) -> None:
    _billed(service)
    before = dump(service.db)
    earlier = with_valid_changes_first(rich_document())
    org(earlier)["billing_groups"][0]["created_at"] = "2025-12-01T00:00:00+00:00"
    in_dollars = with_valid_changes_first(rich_document())
    in_dollars["price_lists"].append(
        {
            "key": "standard-usd",
            "currency": "USD",
            "metrics": [
                {"metric": "requests.GET", "category": "Requests", "unit_price": "0.0000005"}
            ],
        }
    )
    org(in_dollars)["billing_groups"][0]["price_list"] = "standard-usd"

    with pytest.raises(InvalidInput) as moved:
        service.load(earlier, at=at("2026-02-02T00:00:00+00:00"))
    with pytest.raises(InvalidInput) as converted:
        service.load(in_dollars, at=at("2026-02-02T00:00:00+00:00"))

    assert moved.value.path == "organizations[0].billing_groups[0].created_at"
    assert converted.value.path == "organizations[0].billing_groups[0].currency"
    assert dump(service.db) == before
