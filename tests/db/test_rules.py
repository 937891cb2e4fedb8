"""SPEC section 5, worked examples on SQLite and PostgreSQL; figures computed by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing_core.errors import CouponRefused, NotAllowed
from billing_core.services import BillingService
from tests.factories import at, document, event, org, payment

JAN = "2026-01-{:02d}T12:00:00+00:00"
FEB = "2026-02-{:02d}T12:00:00+00:00"
MAR = "2026-03-{:02d}T12:00:00+00:00"


def invoices(service: BillingService, group: str | None = None) -> list[dict[str, Any]]:
    return service.export_invoices(org_key="acme", group_key=group)


def with_projects(doc: dict[str, Any], *keys: str, group: str = "eng") -> dict[str, Any]:
    org(doc)["projects"] += [{"key": k, "name": k.title(), "billing_group": group} for k in keys]
    return doc


def add_group(doc: dict[str, Any], key: str, **fields: Any) -> dict[str, Any]:
    group = dict(org(doc)["billing_groups"][0], key=key, name=key.title(), **fields)
    org(doc)["billing_groups"].append(group)
    return doc


def test_tiers_shares_and_tax_on_one_invoice(service: BillingService) -> None:
    doc = with_projects(document(), "api")
    org(doc)["billing_groups"][0]["tax_rate"] = "0.19"
    service.load(doc, at=at(JAN.format(1)))
    service.import_usage(
        [
            event("t1", "transfer.gb", "80", JAN.format(3)),
            event("t2", "transfer.gb", "50", JAN.format(4), project="acme/api"),
            event("r1", "requests.GET", "1000000", JAN.format(5)),
            event("s1", "storage.gb", "10", JAN.format(6)),
            event("s2", "storage.gb", "30", JAN.format(7)),
            event("s3", "storage.gb", "20", JAN.format(8)),
            event("s4", "storage.gb", "5", JAN.format(8), project="acme/api"),
        ]
    )
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    [inv] = invoices(service)
    lines = {line["metric"]: line for line in inv["lines"]}
    # transfer: 80 + 50 = 130 GB; first 100 free, 30 x 0.09 = 2.70
    transfer = lines["transfer.gb"]
    assert (transfer["quantity"], transfer["billable_quantity"], transfer["amount"]) == (
        "130",
        "130",
        "2.70",
    )
    # shares 270 cents x 80/130 = 166.15, x 50/130 = 103.85: floors 166 + 103, the cent left
    # goes to the larger remainder (api, .85)
    assert transfer["projects"] == [
        {"project": "api", "quantity": "50", "amount": "1.04"},
        {"project": "web", "quantity": "80", "amount": "1.66"},
    ]
    # storage is the peak per project: web 30, api 5 -> 35 x 0.021 = 0.735 -> 0.74 (half up)
    assert lines["storage.gb"]["quantity"] == "35"
    assert lines["storage.gb"]["amount"] == "0.74"
    # 74 cents x 30/35 = 63.43 and x 5/35 = 10.57: the spare cent goes to api
    assert [p["amount"] for p in lines["storage.gb"]["projects"]] == ["0.11", "0.63"]
    assert lines["requests.GET"]["amount"] == "0.40"  # 1,000,000 x 0.0000004
    # 2.70 + 0.74 + 0.40 = 3.84; tax 19% = 0.7296 -> 0.73; total 4.57
    assert (inv["subtotal"], inv["tax"], inv["total"], inv["amount_due"]) == (
        "3.84",
        "0.73",
        "4.57",
        "4.57",
    )
    assert inv["invoice_date"] == "2026-02-01"
    assert inv["due_date"] == "2026-02-15"
    assert inv["status"] == "open"


def test_zero_decimal_currency_is_rounded_to_whole_yen(service: BillingService) -> None:
    doc = document(
        price_lists=[
            {
                "key": "std-jpy",
                "currency": "JPY",
                "metrics": [
                    {"metric": "requests.GET", "category": "Requests", "unit_price": "0.00005"}
                ],
            }
        ]
    )
    group = org(doc)["billing_groups"][0]
    group.update(price_list="std-jpy", tax_rate="0.10")
    service.load(doc, at=at(JAN.format(1)))
    service.import_usage([event("j1", "requests.GET", "1234567", JAN.format(9))])
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    [inv] = invoices(service)
    # 1,234,567 x 0.00005 = 61.72835 -> 62 yen; tax 10% = 6.2 -> 6; total 68
    assert (inv["currency"], inv["subtotal"], inv["tax"], inv["total"]) == ("JPY", "62", "6", "68")
    assert inv["lines"][0]["projects"][0]["amount"] == "62"


def test_periods_follow_local_midnight_across_daylight_saving(service: BillingService) -> None:
    doc = document()
    org(doc)["timezone"] = "Europe/Berlin"
    org(doc)["billing_groups"][0]["created_at"] = "2026-10-01T00:00:00+02:00"
    service.load(doc, at=at("2026-10-01T00:00:00+02:00"))
    service.import_usage(
        [
            # 23:30 on 31 October in Berlin (CET, +01:00): October
            event("o1", "requests.GET", "1000000", "2026-10-31T22:30:00+00:00"),
            # 00:30 on 1 November in Berlin: November, though still 31 October in UTC
            event("n1", "requests.GET", "2000000", "2026-10-31T23:30:00+00:00"),
        ]
    )
    # midnight on 1 November in Berlin is 23:00 UTC on 31 October
    service.run_billing(at=at("2026-10-31T22:59:59+00:00"))
    assert invoices(service) == []
    service.run_billing(at=at("2026-10-31T23:00:00+00:00"))
    [inv] = invoices(service)
    assert inv["period_start"] == "2026-10-01T00:00:00+02:00"
    assert inv["period_end"] == "2026-11-01T00:00:00+01:00"
    assert inv["invoice_date"] == "2026-11-01"
    assert inv["lines"][0]["quantity"] == "1000000"


def test_subscription_anchored_on_the_31st_runs_through_a_leap_february(
    service: BillingService,
) -> None:
    doc = document(
        plans=[
            {
                "key": "pro",
                "name": "Pro",
                "price_list": "standard-eur",
                "monthly_fee": "49.00",
                "included": {"requests.GET": "5000000"},
            }
        ]
    )
    group = org(doc)["billing_groups"][0]
    group.update(
        created_at="2027-12-01T00:00:00+00:00",
        subscription={"plan": "pro", "start": "2028-01-31T00:00:00+00:00"},
    )
    service.load(doc, at=at("2027-12-01T00:00:00+00:00"))
    service.import_usage(
        [
            # before the subscription: list price, no allowance: 1,000,000 x 0.0000004 = 0.40
            event("a", "requests.GET", "1000000", "2028-01-15T00:00:00+00:00"),
            # first subscription period: 6,000,000 - 5,000,000 included = 1,000,000 -> 0.40
            event("b", "requests.GET", "6000000", "2028-02-10T00:00:00+00:00"),
        ]
    )
    service.run_billing(at=at("2028-05-01T00:00:00+00:00"))
    docs = invoices(service)
    periods = [(d["period_start"][:10], d["period_end"][:10], d["total"]) for d in docs]
    # December has no charge (no invoice); January is cut short at the subscription start
    assert periods == [
        ("2028-01-01", "2028-01-31", "0.40"),
        ("2028-01-31", "2028-02-29", "49.40"),
        ("2028-02-29", "2028-03-31", "49.00"),
        ("2028-03-31", "2028-04-30", "49.00"),
    ]
    first_sub = docs[1]["lines"]
    assert first_sub[0]["kind"] == "subscription"
    assert first_sub[1]["billable_quantity"] == "1000000"
    assert [d["number"] for d in docs] == [f"INV-2028-00000{n}" for n in range(1, 5)]


def test_usage_follows_the_group_that_owned_the_project_at_the_time(
    service: BillingService,
) -> None:
    doc = add_group(document(), "ops")
    service.load(doc, at=at(JAN.format(1)))
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.import_usage([event("w1", "requests.GET", "1000000", JAN.format(10))])
    change = service.assign_project(
        admin, project_key="web", group_key="ops", at=at(JAN.format(15))
    )
    assert (change.before, change.after) == ({"billing_group": "eng"}, {"billing_group": "ops"})
    service.import_usage(
        [
            event("w2", "requests.GET", "2000000", JAN.format(20)),
            # arrives after the move but happened before it: still eng's
            event("w3", "requests.GET", "500000", JAN.format(12)),
        ]
    )
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    totals = {d["billing_group"]: d["total"] for d in invoices(service)}
    # eng: 1,500,000 x 0.0000004 = 0.60; ops: 2,000,000 -> 0.80
    assert totals == {"eng": "0.60", "ops": "0.80"}


def test_a_member_cannot_move_projects_and_nothing_changes(service: BillingService) -> None:
    service.load(add_group(document(), "ops"), at=at(JAN.format(1)))
    member = service.actor(team_id="T0ACME", user_id="U0DEV")
    with pytest.raises(NotAllowed):
        service.assign_project(member, project_key="web", group_key="ops", at=at(JAN.format(2)))
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    assert service.project_group(admin, "web") == "eng"


def test_a_coupon_redeemed_after_an_invoice_leaves_that_invoice_unchanged(
    service: BillingService,
) -> None:
    doc = document(coupons=[{"code": "WELCOME10", "percent_off": "10", "duration": "once"}])
    service.load(doc, at=at(JAN.format(1)))
    service.import_usage([event("j", "requests.GET", "1000000", JAN.format(5))])
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    before = invoices(service)
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.redeem_coupon(admin, code="welcome10", at=at(FEB.format(3)))
    assert invoices(service) == before
    service.import_usage(
        [
            event("f", "requests.GET", "1000000", FEB.format(5)),
            event("m", "requests.GET", "1000000", MAR.format(5)),
        ]
    )
    service.run_billing(at=at("2026-04-01T00:00:00+00:00"))
    jan, feb, mar = invoices(service)
    assert jan == before[0]
    # once: February 0.40 - 10% = 0.36; March full price again
    assert (feb["discount"], feb["total"]) == ("0.04", "0.36")
    assert (mar["discount"], mar["total"]) == ("0.00", "0.40")


@pytest.mark.parametrize(
    ("coupon", "expected_totals"),
    [
        (
            {
                "amount_off": "0.10",
                "currency": "EUR",
                "duration": "repeating",
                "duration_periods": 2,
            },
            ["0.30", "0.30", "0.40"],
        ),
        ({"percent_off": "50", "duration": "forever"}, ["0.20", "0.20", "0.20"]),
        ({"percent_off": "50", "duration": "once"}, ["0.20", "0.40", "0.40"]),
    ],
    ids=["repeating", "forever", "once"],
)
def test_coupon_durations(
    service: BillingService, coupon: dict[str, Any], expected_totals: list[str]
) -> None:
    service.load(document(coupons=[{"code": "C", **coupon}]), at=at(JAN.format(1)))
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.redeem_coupon(admin, code="C", at=at(JAN.format(1)))
    service.import_usage(
        [
            event(f"e{m}", "requests.GET", "1000000", f"2026-0{m}-05T00:00:00+00:00")
            for m in (1, 2, 3)
        ]
    )
    service.run_billing(at=at("2026-04-01T00:00:00+00:00"))
    assert [d["total"] for d in invoices(service)] == expected_totals


def test_a_coupon_is_only_used_up_by_an_issued_invoice(service: BillingService) -> None:
    service.load(
        document(coupons=[{"code": "ONCE", "percent_off": "50", "duration": "once"}]),
        at=at(JAN.format(1)),
    )
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.redeem_coupon(admin, code="ONCE", at=at(JAN.format(1)))
    # January has no usage: no invoice, so the coupon waits for February
    service.import_usage([event("f", "requests.GET", "1000000", FEB.format(5))])
    service.run_billing(at=at("2026-03-01T00:00:00+00:00"))
    [feb] = invoices(service)
    assert (feb["period_start"][:7], feb["total"]) == ("2026-02", "0.20")


def test_two_coupons_apply_in_redemption_order_each_on_what_is_left(
    service: BillingService,
) -> None:
    coupons = [
        {"code": "TEN", "percent_off": "10", "duration": "forever"},
        {"code": "THIRTY", "amount_off": "0.30", "currency": "EUR", "duration": "forever"},
    ]
    service.load(add_group(document(coupons=coupons), "ops"), at=at(JAN.format(1)))
    with_projects_doc = with_projects(
        add_group(document(coupons=coupons), "ops"), "lab", group="ops"
    )
    service.load(with_projects_doc, at=at(JAN.format(1)))
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.redeem_coupon(admin, code="TEN", group_key="eng", at=at(JAN.format(1)))
    service.redeem_coupon(admin, code="THIRTY", group_key="eng", at=at(JAN.format(2)))
    service.redeem_coupon(admin, code="THIRTY", group_key="ops", at=at(JAN.format(1)))
    service.redeem_coupon(admin, code="TEN", group_key="ops", at=at(JAN.format(2)))
    service.import_usage(
        [
            event("e", "requests.GET", "2500000", JAN.format(5)),
            event("o", "requests.GET", "2500000", JAN.format(5), project="acme/lab"),
        ]
    )
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    by_group = {d["billing_group"]: d for d in invoices(service)}
    # eng: 1.00 - 10% (0.10) = 0.90 - 0.30 = 0.60
    assert (by_group["eng"]["discount"], by_group["eng"]["total"]) == ("0.40", "0.60")
    # ops: 1.00 - 0.30 = 0.70 - 10% (0.07) = 0.63
    assert (by_group["ops"]["discount"], by_group["ops"]["total"]) == ("0.37", "0.63")


def test_a_percentage_is_rounded_half_up_and_discounts_never_go_below_zero(
    service: BillingService,
) -> None:
    coupons = [
        {"code": "P15", "percent_off": "15", "duration": "forever"},
        {"code": "BIG", "amount_off": "5.00", "currency": "EUR", "duration": "forever"},
    ]
    service.load(
        add_group(with_projects(document(coupons=coupons), "lab"), "ops"), at=at(JAN.format(1))
    )
    service.load(
        with_projects(add_group(document(coupons=coupons), "ops"), "lab", group="ops"),
        at=at(JAN.format(1)),
    )
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.redeem_coupon(admin, code="P15", group_key="eng", at=at(JAN.format(1)))
    service.redeem_coupon(admin, code="BIG", group_key="ops", at=at(JAN.format(1)))
    service.import_usage(
        [
            event("e", "requests.GET", "1250000", JAN.format(5)),
            event("o", "requests.GET", "1000000", JAN.format(5), project="acme/lab"),
        ]
    )
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    by_group = {d["billing_group"]: d for d in invoices(service)}
    # eng: 0.50 x 15% = 0.075 -> 0.08 (half up) -> 0.42
    assert (by_group["eng"]["discount"], by_group["eng"]["total"]) == ("0.08", "0.42")
    # ops: 5.00 off 0.40 takes 0.40 only; nothing due, so paid at issue
    ops = by_group["ops"]
    assert (ops["discount"], ops["total"], ops["amount_due"], ops["status"]) == (
        "0.40",
        "0.00",
        "0.00",
        "paid",
    )


def test_an_amount_off_coupon_in_another_currency_is_refused(service: BillingService) -> None:
    coupons = [{"code": "USD5", "amount_off": "5.00", "currency": "USD", "duration": "once"}]
    service.load(document(coupons=coupons), at=at(JAN.format(1)))
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    with pytest.raises(CouponRefused, match="USD"):
        service.redeem_coupon(admin, code="USD5", at=at(JAN.format(2)))
    # and nothing was redeemed: the balance shows no coupon
    [balance] = service.balance(admin, at=at(JAN.format(3)))
    assert balance.coupon_codes == ()


def test_a_coupon_allowed_once_is_redeemed_once(service: BillingService) -> None:
    coupons = [{"code": "ONE", "percent_off": "10", "duration": "once", "max_redemptions": 1}]
    service.load(add_group(document(coupons=coupons), "ops"), at=at(JAN.format(1)))
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.redeem_coupon(admin, code="ONE", group_key="eng", at=at(JAN.format(2)))
    with pytest.raises(CouponRefused, match="already redeemed"):
        service.redeem_coupon(admin, code="ONE", group_key="eng", at=at(JAN.format(2)))
    with pytest.raises(CouponRefused, match="maximum"):
        service.redeem_coupon(admin, code="ONE", group_key="ops", at=at(JAN.format(2)))


def test_credits_pay_soonest_expiring_first_and_expired_ones_never(
    service: BillingService,
) -> None:
    doc = document()
    org(doc)["credits"] = [
        {"billing_group": "eng", "amount": "1.00", "expires_at": "2026-01-15T00:00:00+00:00"},
        {"billing_group": "eng", "amount": "0.50", "reason": "no expiry"},
        {"billing_group": "eng", "amount": "0.30", "expires_at": "2026-03-01T00:00:00+00:00"},
    ]
    service.load(doc, at=at(JAN.format(1)))
    service.import_usage(
        [
            event("j", "requests.GET", "2000000", JAN.format(5)),
            event("f", "requests.GET", "1000000", FEB.format(5)),
        ]
    )
    service.run_billing(at=at("2026-03-01T00:00:00+00:00"))
    jan, feb = invoices(service)
    # January 0.80: the 1.00 credit expired on the 15th; 0.30 (expiring) then 0.50 (no expiry)
    assert (jan["total"], jan["credits_applied"], jan["amount_due"], jan["status"]) == (
        "0.80",
        "0.80",
        "0.00",
        "paid",
    )
    # February: nothing usable is left
    assert (feb["credits_applied"], feb["amount_due"]) == ("0.00", "0.40")
    # and spent or expired credits are not listed (SQLite compares stored text: '0.00' > 0)
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    assert service.credits(admin, at=at("2026-03-01T00:00:00+00:00")) == []


def test_an_overpayment_becomes_a_credit_for_the_next_invoice(service: BillingService) -> None:
    service.load(document(), at=at(JAN.format(1)))
    service.import_usage([event("j", "requests.GET", "1000000", JAN.format(5))])
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    report = service.import_payments(
        [payment("pay-1", "1.00", FEB.format(3))], at=at(FEB.format(3))
    )
    assert report.receipts == ["RCT-2026-000001"]
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    [credit] = service.credits(admin, at=at(FEB.format(4)))
    assert credit.remaining.amount == Decimal("0.60")  # 1.00 paid - 0.40 owed
    service.import_usage([event("f", "requests.GET", "1000000", FEB.format(5))])
    service.run_billing(at=at("2026-03-01T00:00:00+00:00"))
    jan, feb = invoices(service)
    assert (jan["status"], jan["amount_paid"]) == ("paid", "0.40")
    assert (feb["credits_applied"], feb["amount_due"], feb["status"]) == ("0.40", "0.00", "paid")
    [pay] = service.payments(admin)
    assert pay.allocations[0][0] == jan["number"]
    assert pay.to_credit.amount == Decimal("0.60")


def test_late_usage_is_charged_on_the_next_invoice_naming_its_period(
    service: BillingService,
) -> None:
    service.load(document(), at=at(JAN.format(1)))
    service.import_usage([event("t1", "transfer.gb", "80", JAN.format(20))])
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    assert invoices(service) == []  # 80 GB are in the free tier: no charge, no invoice
    service.import_usage(
        [
            event("late", "transfer.gb", "50", JAN.format(25)),  # arrives in February
            event("f1", "requests.GET", "1000000", FEB.format(2)),
        ]
    )
    service.run_billing(at=at("2026-03-01T00:00:00+00:00"))
    [feb] = invoices(service)
    regular, late = feb["lines"]
    assert regular["metric"] == "requests.GET" and "late_period_start" not in regular
    # January re-rated: 130 GB -> 30 x 0.09 = 2.70, of which 0 was billed
    assert late["late_period_start"] == "2026-01-01T00:00:00+00:00"
    assert (late["quantity"], late["billable_quantity"], late["amount"]) == ("50", "50", "2.70")
    assert feb["subtotal"] == "3.10"


def test_numbers_are_gapless_per_year_of_the_invoice_date(service: BillingService) -> None:
    doc = document()
    org(doc)["billing_groups"][0]["created_at"] = "2026-11-01T00:00:00+00:00"
    service.load(doc, at=at("2026-11-01T00:00:00+00:00"))
    service.import_usage(
        [
            event("n", "requests.GET", "1000000", "2026-11-05T00:00:00+00:00"),
            event("d", "requests.GET", "1000000", "2026-12-05T00:00:00+00:00"),
            event("j", "requests.GET", "1000000", "2027-01-05T00:00:00+00:00"),
        ]
    )
    service.run_billing(at=at("2027-02-01T00:00:00+00:00"))
    assert [(d["number"], d["invoice_date"]) for d in invoices(service)] == [
        ("INV-2026-000001", "2026-12-01"),
        ("INV-2027-000001", "2027-01-01"),
        ("INV-2027-000002", "2027-02-01"),
    ]


def test_balance_shows_the_open_period_with_coupons_tax_and_credits(
    service: BillingService,
) -> None:
    doc = document(coupons=[{"code": "TEN", "percent_off": "10", "duration": "forever"}])
    org(doc)["billing_groups"][0]["tax_rate"] = "0.20"
    org(doc)["credits"] = [{"billing_group": "eng", "amount": "0.10"}]
    service.load(doc, at=at(JAN.format(1)))
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    service.import_usage(
        [
            event("j", "requests.GET", "1000000", JAN.format(5)),
            event("f", "requests.GET", "2500000", FEB.format(5)),
        ]
    )
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    service.redeem_coupon(admin, code="TEN", at=at(FEB.format(6)))
    [balance] = service.balance(admin, at=at(FEB.format(7)))
    t = balance.totals
    # February so far: 1.00; -10% = 0.90; tax 20% = 0.18 -> 1.08; the 0.10 credit went to January
    assert (t.subtotal.amount, t.discount.amount, t.tax.amount, t.total.amount) == (
        Decimal("1.00"),
        Decimal("0.10"),
        Decimal("0.18"),
        Decimal("1.08"),
    )
    assert t.amount_due.amount == Decimal("1.08")
    assert balance.coupon_codes == ("TEN",)
    [owed] = service.owed(admin, at=at("2026-02-20T00:00:00+00:00"))
    # January: 0.40 + 20% = 0.48, less the 0.10 credit = 0.38, overdue after 15 February
    assert owed.outstanding.amount == Decimal("0.38")
    assert owed.overdue == ("INV-2026-000001",)


def test_credit_balances_stay_exact_beyond_float_precision(service: BillingService) -> None:
    # 12,345,678,901,234.56 has 16 significant digits: a float keeps 15 or so
    doc = document()
    org(doc)["credits"] = [{"billing_group": "eng", "amount": "12345678901234.56"}]
    service.load(doc, at=at(JAN.format(1)))
    service.import_usage([event("j", "requests.GET", "1000000", JAN.format(5))])
    service.run_billing(at=at("2026-02-01T00:00:00+00:00"))
    admin = service.actor(team_id="T0ACME", user_id="U0ADMIN")
    [credit] = service.credits(admin, at=at(FEB.format(1)))
    assert credit.remaining.amount == Decimal("12345678901234.16")  # minus the 0.40 invoice
