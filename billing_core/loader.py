"""``billing-bot load``: upsert the catalogue and the organizations from one JSON document.

All or nothing: the caller runs this in one transaction, and any refusal (an InvalidInput
naming the path of the bad value) rolls everything back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from babel import Locale, UnknownLocaleError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing_core.db import tables as t
from billing_core.errors import InvalidInput
from billing_core.money import (
    MAX_UNIT_PRICE_DECIMALS,
    check_currency,
    minor_unit_exponent,
    parse_decimal,
)
from billing_core.periods import zone
from billing_core.validate import Obj

PAYMENT_METHODS = ("card", "bank_transfer", "marketplace")
QUANTITY_DECIMALS = 9
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class LoadSummary:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    reassigned: list[str] = field(default_factory=list)

    def count(self, kind: str, created: bool) -> None:
        target = self.created if created else self.updated
        target[kind] = target.get(kind, 0) + 1

    def describe(self) -> str:
        parts = [f"{n} {k} created" for k, n in sorted(self.created.items())]
        parts += [f"{n} {k} updated" for k, n in sorted(self.updated.items())]
        parts += [f"project {p} reassigned" for p in self.reassigned]
        return "; ".join(parts) or "nothing to change"


def check_locale(value: str, path: str) -> str:
    try:
        Locale.parse(value)
    except (UnknownLocaleError, ValueError):
        raise InvalidInput(f"{value!r} is not a locale Babel knows", path=path) from None
    return value


def load_document(session: Session, document: object, *, at: datetime) -> LoadSummary:
    """Validate and upsert ``document`` (SPEC 4.1) inside the caller's transaction."""
    top = Obj(
        document,
        "",
        allowed={"price_lists", "plans", "coupons", "organizations"},
        required=set(),
    )
    loader = _Loader(session, at)
    for path, item in top.items("price_lists"):
        loader.price_list(item, path)
    for path, item in top.items("plans"):
        loader.plan(item, path)
    for path, item in top.items("coupons"):
        loader.coupon(item, path)
    for path, item in top.items("organizations"):
        loader.organization(item, path)
    session.flush()
    loader.check_groups_match_catalogue()
    return loader.summary


class _Loader:
    def __init__(self, session: Session, at: datetime) -> None:
        self.s = session
        self.at = at
        self.summary = LoadSummary()
        self.seen: dict[str, set[str]] = {}
        self.paths: dict[tuple[str, str], str] = {}  # (kind, key) -> path in the document

    def _unique(self, scope: str, key: str, path: str) -> None:
        keys = self.seen.setdefault(scope, set())
        if key.casefold() in keys:
            raise InvalidInput(f"{key!r} appears twice", path=path)
        keys.add(key.casefold())

    def _row(self, model: type[Any], **where: Any) -> Any:  # a mapped row or None
        return self.s.scalars(select(model).filter_by(**where)).one_or_none()

    def check_groups_match_catalogue(self) -> None:
        """Refuse a price list or plan change that leaves a group this file did not list
        billed in another currency than its price list's, or on another list than its plan's."""
        group = t.BillingGroup
        list_key = self.s.scalar(
            select(t.PriceList.key)
            .join(group, group.price_list_id == t.PriceList.id)
            .where(group.currency != t.PriceList.currency)
            .limit(1)
        )
        if list_key is not None:
            raise InvalidInput(
                "cannot change the currency: billing groups not in this file use this list",
                path=self.paths.get(("price_list", list_key), "price_lists"),
            )
        plan_key = self.s.scalar(
            select(t.Plan.key)
            .join(group, group.plan_id == t.Plan.id)
            .where(group.price_list_id != t.Plan.price_list_id)
            .limit(1)
        )
        if plan_key is not None:
            raise InvalidInput(
                "cannot move the plan to another price list: groups not in this file "
                "subscribe to it on this one",
                path=self.paths.get(("plan", plan_key), "plans"),
            )

    # -- catalogue ------------------------------------------------------------------------

    def price_list(self, item: object, path: str) -> None:
        o = Obj(item, path, allowed={"key", "currency", "metrics"}, required={"key", "currency"})
        key = o.key("key")
        self._unique("price_list", key, o.at("key"))
        currency = check_currency(o.data["currency"], path=o.at("currency"))
        self.paths["price_list", key] = o.at("currency")
        row = self._row(t.PriceList, key=key)
        if row is not None and row.currency != currency:
            used = self.s.scalar(
                select(func.count())
                .select_from(t.Invoice)
                .join(t.BillingGroup, t.BillingGroup.id == t.Invoice.billing_group_id)
                .where(t.BillingGroup.price_list_id == row.id)
            )
            if used:
                raise InvalidInput(
                    f"cannot change from {row.currency}: groups on this list have invoices",
                    path=o.at("currency"),
                )
        if row is None:
            row = t.PriceList(key=key, currency=currency)
            self.s.add(row)
        row.currency = currency
        self.summary.count("price lists", row.id is None)
        metrics: dict[str, t.MetricPriceRow] = {m.metric: m for m in row.metrics}
        names: set[str] = set()
        for mpath, m in o.items("metrics"):
            mo = Obj(
                m,
                mpath,
                allowed={"metric", "category", "aggregation", "unit_price", "tiers"},
                required={"metric", "category"},
            )
            name = mo.text("metric", max_len=100)
            if name in names:
                raise InvalidInput(f"metric {name!r} appears twice", path=mo.at("metric"))
            names.add(name)
            tiers = _tiers(mo)
            existing = metrics.get(name)
            if existing is None:
                existing = t.MetricPriceRow(metric=name)
                row.metrics.append(existing)
            existing.category = mo.text("category", max_len=100)
            existing.aggregation = mo.choice("aggregation", ("sum", "max"), default="sum")
            existing.tiers = tiers
        self.s.flush()

    def plan(self, item: object, path: str) -> None:
        o = Obj(
            item,
            path,
            allowed={"key", "name", "price_list", "monthly_fee", "included"},
            required={"key", "name", "price_list", "monthly_fee"},
        )
        key = o.key("key")
        self._unique("plan", key, o.at("key"))
        price_list = self._row(t.PriceList, key=o.text("price_list"))
        if price_list is None:
            raise InvalidInput("no such price list", path=o.at("price_list"))
        self.paths["plan", key] = o.at("price_list")
        fee = o.decimal("monthly_fee", max_decimals=minor_unit_exponent(price_list.currency))
        included_raw = o.data.get("included") or {}
        if not isinstance(included_raw, dict):
            raise InvalidInput("expected an object of metric: quantity", path=o.at("included"))
        priced = {m.metric for m in price_list.metrics}
        included: dict[str, str] = {}
        for metric, qty in included_raw.items():
            ipath = f"{o.at('included')}.{metric}"
            if metric not in priced:
                raise InvalidInput("metric is not in the plan's price list", path=ipath)
            included[metric] = str(parse_decimal(qty, path=ipath, max_decimals=QUANTITY_DECIMALS))
        row = self._row(t.Plan, key=key)
        self.summary.count("plans", row is None)
        if row is None:
            row = t.Plan(key=key)
            self.s.add(row)
        row.name = o.text("name")
        row.price_list_id = price_list.id
        row.monthly_fee = fee
        row.included = included
        self.s.flush()

    def coupon(self, item: object, path: str) -> None:
        o = Obj(
            item,
            path,
            allowed={
                "code",
                "percent_off",
                "amount_off",
                "currency",
                "duration",
                "duration_periods",
                "max_redemptions",
                "redeem_by",
            },
            required={"code", "duration"},
        )
        code = o.key("code").upper()
        self._unique("coupon", code, o.at("code"))
        percent = o.opt_decimal("percent_off", max_decimals=6)
        amount = None
        currency = None
        if o.has("amount_off"):
            if not o.has("currency"):
                raise InvalidInput("an amount_off coupon needs a currency", path=o.at("currency"))
            currency = check_currency(o.data["currency"], path=o.at("currency"))
            amount = o.decimal("amount_off", max_decimals=minor_unit_exponent(currency))
            if amount <= 0:
                raise InvalidInput("must be more than zero", path=o.at("amount_off"))
        if (percent is None) == (amount is None):
            raise InvalidInput("give exactly one of percent_off and amount_off", path=o.at("code"))
        if percent is not None and not 0 < percent <= 100:
            raise InvalidInput("must be more than 0 and at most 100", path=o.at("percent_off"))
        duration = o.choice("duration", ("once", "repeating", "forever"))
        periods = None
        if duration == "repeating":
            periods = o.whole("duration_periods", minimum=1, maximum=1200)
        elif o.has("duration_periods"):
            raise InvalidInput("only a repeating coupon has periods", path=o.at("duration_periods"))
        row = self.s.scalars(
            select(t.CouponRow).where(func.upper(t.CouponRow.code) == code)
        ).one_or_none()
        self.summary.count("coupons", row is None)
        if row is None:
            row = t.CouponRow(code=code, times_redeemed=0)
            self.s.add(row)
        row.percent_off = percent
        row.amount_off = amount
        row.currency = currency
        row.duration = duration
        row.duration_periods = periods
        row.max_redemptions = o.opt_whole("max_redemptions", minimum=1)
        row.redeem_by = o.opt_timestamp("redeem_by")
        self.s.flush()

    # -- organizations --------------------------------------------------------------------

    def organization(self, item: object, path: str) -> None:
        o = Obj(
            item,
            path,
            allowed={
                "key",
                "name",
                "slack_team_id",
                "timezone",
                "locale",
                "open_read_access",
                "members",
                "billing_groups",
                "units",
                "projects",
                "credits",
            },
            required={"key", "name", "timezone"},
        )
        key = o.key("key")
        self._unique("organization", key, o.at("key"))
        zone(o.text("timezone", max_len=64), path=o.at("timezone"))
        team = o.opt_text("slack_team_id", max_len=32)
        if team is not None:
            other = self._row(t.Organization, slack_team_id=team)
            if other is not None and other.key != key:
                raise InvalidInput(
                    f"workspace {team} is already linked to organization {other.key!r}",
                    path=o.at("slack_team_id"),
                )
        org = self._row(t.Organization, key=key)
        self.summary.count("organizations", org is None)
        if org is None:
            org = t.Organization(key=key)
            self.s.add(org)
        org.name = o.text("name")
        org.slack_team_id = team
        org.timezone = o.text("timezone")
        org.locale = None if not o.has("locale") else check_locale(o.text("locale"), o.at("locale"))
        org.open_read_access = o.flag("open_read_access", default=False)
        self.s.flush()
        for mpath, m in o.items("members"):
            self.member(org, m, mpath)
        groups = {
            g.key: g
            for g in self.s.scalars(select(t.BillingGroup).filter_by(organization_id=org.id))
        }
        for gpath, g in o.items("billing_groups"):
            row = self.billing_group(org, g, gpath)
            groups[row.key] = row
        units = {u.key: u for u in self.s.scalars(select(t.Unit).filter_by(organization_id=org.id))}
        for upath, u in o.items("units"):
            row_u = self.unit(org, u, upath, units)
            units[row_u.key] = row_u
        for ppath, p in o.items("projects"):
            self.project(org, p, ppath, groups, units)
        counts: dict[str, int] = {}
        for cpath, c in o.items("credits"):
            self.credit(c, cpath, groups, counts)

    def member(self, org: t.Organization, item: object, path: str) -> None:
        o = Obj(item, path, allowed={"slack_user_id", "role"}, required={"slack_user_id", "role"})
        user = o.text("slack_user_id", max_len=32)
        self._unique(f"member:{org.key}", user, o.at("slack_user_id"))
        row = self._row(t.Member, organization_id=org.id, slack_user_id=user)
        self.summary.count("members", row is None)
        if row is None:
            row = t.Member(organization_id=org.id, slack_user_id=user)
            self.s.add(row)
        row.role = o.choice("role", ("admin", "member"))

    def billing_group(self, org: t.Organization, item: object, path: str) -> t.BillingGroup:
        o = Obj(
            item,
            path,
            allowed={
                "key",
                "name",
                "price_list",
                "currency",
                "payment_method",
                "payment_terms_days",
                "tax_rate",
                "billing_address",
                "shipping_address",
                "vat_id",
                "created_at",
                "subscription",
                "contacts",
            },
            required={"key", "name", "payment_method", "created_at"},
        )
        key = o.key("key")
        self._unique(f"group:{org.key}", key, o.at("key"))
        plan = None
        sub_start = None
        if o.has("subscription"):
            so = Obj(
                o.data["subscription"],
                o.at("subscription"),
                allowed={"plan", "start"},
                required={"plan", "start"},
            )
            plan = self._row(t.Plan, key=so.text("plan"))
            if plan is None:
                raise InvalidInput("no such plan", path=so.at("plan"))
            sub_start = so.timestamp("start")
        if o.has("price_list"):
            price_list = self._row(t.PriceList, key=o.text("price_list"))
            if price_list is None:
                raise InvalidInput("no such price list", path=o.at("price_list"))
            if plan is not None and plan.price_list_id != price_list.id:
                raise InvalidInput(
                    "the subscription's plan is priced by another price list",
                    path=o.at("subscription.plan"),
                )
        elif plan is not None:
            price_list = self.s.get_one(t.PriceList, plan.price_list_id)
        else:
            raise InvalidInput(
                "is required (or a subscription whose plan gives one)", path=o.at("price_list")
            )
        currency = price_list.currency
        if o.has("currency") and o.data["currency"] != currency:
            raise InvalidInput(
                f"{o.data['currency']!r} does not match the price list's {currency}",
                path=o.at("currency"),
            )
        created_at = o.timestamp("created_at")
        if sub_start is not None and sub_start < created_at:
            raise InvalidInput(
                "the subscription starts before the group was created",
                path=o.at("subscription.start"),
            )
        tax_rate = o.opt_decimal("tax_rate", max_decimals=6)
        if tax_rate is not None and tax_rate >= 1:
            raise InvalidInput("is a fraction: 0.19 for 19%", path=o.at("tax_rate"))
        row: t.BillingGroup | None = self._row(t.BillingGroup, organization_id=org.id, key=key)
        if row is not None and self.s.scalar(
            select(func.count()).select_from(t.PeriodClose).filter_by(billing_group_id=row.id)
        ):
            frozen = {
                "created_at": (row.created_at, created_at),
                "currency": (row.currency, currency),
                "subscription": (
                    (row.plan_id, row.subscription_start),
                    (plan.id if plan else None, sub_start),
                ),
            }
            for name, (old, new) in frozen.items():
                if old != new:
                    raise InvalidInput(
                        "cannot change once the group has been billed", path=o.at(name)
                    )
        self.summary.count("billing groups", row is None)
        created = row is None
        if row is None:
            row = t.BillingGroup(organization_id=org.id, key=key)
            self.s.add(row)
        row.name = o.text("name")
        row.price_list_id = price_list.id
        row.currency = currency
        row.payment_method = o.choice("payment_method", PAYMENT_METHODS)
        row.payment_terms_days = (
            o.whole("payment_terms_days", maximum=365) if o.has("payment_terms_days") else 14
        )
        row.tax_rate = tax_rate
        row.billing_address = o.opt_text("billing_address")
        row.shipping_address = o.opt_text("shipping_address")
        row.vat_id = o.opt_text("vat_id", max_len=64)
        row.created_at = created_at
        row.plan_id = plan.id if plan else None
        row.subscription_start = sub_start
        self.s.flush()
        if created:
            self.s.add(t.UsageGate(billing_group_id=row.id))  # see billing_core.claims
        if "contacts" in o.data:
            self.contacts(row, o)
        return row

    def contacts(self, group: t.BillingGroup, o: Obj) -> None:
        """Make the group's contacts the listed ones, keeping the rows of those that stay.

        Matching by Slack identity keeps a contact's row (and id) across reloads, so loading an
        unchanged file changes nothing.
        """
        existing = {
            (c.slack_user_id, c.slack_channel_id): c
            for c in self.s.scalars(select(t.Contact).filter_by(billing_group_id=group.id))
        }
        listed: set[tuple[str | None, str | None]] = set()
        for cpath, c in o.items("contacts"):
            co = Obj(
                c, cpath, allowed={"slack_user_id", "slack_channel_id", "email"}, required=set()
            )
            user, channel = (
                co.opt_text("slack_user_id", max_len=32),
                co.opt_text("slack_channel_id", max_len=32),
            )
            if (user is None) == (channel is None):
                raise InvalidInput(
                    "give exactly one of slack_user_id and slack_channel_id", path=cpath
                )
            if (user, channel) in listed:
                which = "slack_user_id" if user is not None else "slack_channel_id"
                raise InvalidInput(f"{user or channel!r} appears twice", path=co.at(which))
            listed.add((user, channel))
            row = existing.get((user, channel))
            if row is None:
                row = t.Contact(
                    billing_group_id=group.id, slack_user_id=user, slack_channel_id=channel
                )
                self.s.add(row)
            row.email = co.opt_text("email")
        for identity, old in existing.items():
            if identity not in listed:
                self.s.delete(old)

    def unit(
        self, org: t.Organization, item: object, path: str, units: dict[str, t.Unit]
    ) -> t.Unit:
        o = Obj(item, path, allowed={"key", "name", "parent"}, required={"key", "name"})
        key = o.key("key")
        self._unique(f"unit:{org.key}", key, o.at("key"))
        parent = None
        if o.has("parent"):
            parent = units.get(o.text("parent"))
            if parent is None:
                raise InvalidInput(
                    "no such unit in this organization (list parents first)", path=o.at("parent")
                )
            ancestor: t.Unit | None = parent
            while ancestor is not None:
                if ancestor.key == key:
                    raise InvalidInput("units may not contain themselves", path=o.at("parent"))
                ancestor = self.s.get(t.Unit, ancestor.parent_id) if ancestor.parent_id else None
        row = units.get(key)
        self.summary.count("units", row is None)
        if row is None:
            row = t.Unit(organization_id=org.id, key=key)
            self.s.add(row)
        row.name = o.text("name")
        row.parent_id = parent.id if parent else None
        self.s.flush()
        return row

    def project(
        self,
        org: t.Organization,
        item: object,
        path: str,
        groups: dict[str, t.BillingGroup],
        units: dict[str, t.Unit],
    ) -> None:
        o = Obj(
            item,
            path,
            allowed={"key", "name", "billing_group", "unit"},
            required={"key", "name", "billing_group"},
        )
        key = o.key("key")
        self._unique(f"project:{org.key}", key, o.at("key"))
        group = groups.get(o.text("billing_group"))
        if group is None:
            raise InvalidInput(
                f"no billing group {o.data['billing_group']!r} in organization {org.key!r}",
                path=o.at("billing_group"),
            )
        unit = None
        if o.has("unit"):
            unit = units.get(o.text("unit"))
            if unit is None:
                raise InvalidInput("no such unit in this organization", path=o.at("unit"))
        row = self._row(t.Project, organization_id=org.id, key=key)
        self.summary.count("projects", row is None)
        if row is None:
            row = t.Project(
                organization_id=org.id, key=key, name=o.text("name"), billing_group_id=group.id
            )
            self.s.add(row)
            self.s.flush()
            self.s.add(
                t.ProjectAssignment(
                    project_id=row.id,
                    billing_group_id=group.id,
                    valid_from=EPOCH,
                    assigned_by="load",
                )
            )
        elif row.billing_group_id != group.id:
            from billing_core.ledger import audit, reassign_project  # noqa: PLC0415 - cycle

            before = self.s.get_one(t.BillingGroup, row.billing_group_id).key
            reassign_project(self.s, project=row, group=group, at=self.at, actor="load")
            audit(
                self.s,
                at=self.at,
                organization_id=org.id,
                actor="load",
                action="project.assign",
                subject=f"{org.key}/{key}",
                before={"billing_group": before},
                after={"billing_group": group.key},
            )
            self.summary.reassigned.append(f"{org.key}/{key}")
        row.name = o.text("name")
        row.unit_id = unit.id if unit else None

    def credit(
        self, item: object, path: str, groups: dict[str, t.BillingGroup], counts: dict[str, int]
    ) -> None:
        o = Obj(
            item,
            path,
            allowed={"billing_group", "amount", "expires_at", "reason", "key"},
            required={"billing_group", "amount"},
        )
        group = groups.get(o.text("billing_group"))
        if group is None:
            raise InvalidInput(
                "no such billing group in this organization", path=o.at("billing_group")
            )
        amount = o.decimal("amount", max_decimals=minor_unit_exponent(group.currency))
        if amount <= 0:
            raise InvalidInput("must be more than zero", path=o.at("amount"))
        expires_at = o.opt_timestamp("expires_at")
        reason = o.opt_text("reason")
        if o.has("key"):
            key = o.key("key")
            self._unique(f"credit:{group.organization_id}:{group.key}", key, o.at("key"))
            grant_key = "key:" + key
        else:
            digest = hashlib.sha256(
                json.dumps([group.key, str(amount), o.data.get("expires_at"), reason]).encode()
            ).hexdigest()[:24]
            counts[digest] = counts.get(digest, 0) + 1
            grant_key = f"load:{digest}:{counts[digest]}"
        row = self._row(t.Credit, billing_group_id=group.id, grant_key=grant_key)
        if row is not None:
            if row.amount != amount or row.expires_at != expires_at:
                raise InvalidInput(
                    "this credit was granted before with other terms; "
                    "grants never change (give a new key)",
                    path=path,
                )
            return
        self.summary.count("credits", True)
        self.s.add(
            t.Credit(
                billing_group_id=group.id,
                grant_key=grant_key,
                amount=amount,
                remaining=amount,
                currency=group.currency,
                expires_at=expires_at,
                reason=reason,
                granted_at=self.at,
            )
        )


def _tiers(mo: Obj) -> list[list[str | None]]:
    if mo.has("unit_price") == mo.has("tiers"):
        raise InvalidInput("give exactly one of unit_price and tiers", path=mo.at("unit_price"))
    if mo.has("unit_price"):
        return [[None, str(mo.decimal("unit_price", max_decimals=MAX_UNIT_PRICE_DECIMALS))]]
    tiers: list[list[str | None]] = []
    previous = Decimal(0)
    items = list(mo.items("tiers"))
    if not items:
        raise InvalidInput("needs at least one tier", path=mo.at("tiers"))
    for index, (tpath, tier) in enumerate(items):
        to = Obj(tier, tpath, allowed={"up_to", "unit_price"}, required={"up_to", "unit_price"})
        price = to.decimal("unit_price", max_decimals=MAX_UNIT_PRICE_DECIMALS)
        last = index == len(items) - 1
        if to.data["up_to"] is None:
            if not last:
                raise InvalidInput("only the last tier may be unbounded", path=to.at("up_to"))
            tiers.append([None, str(price)])
            continue
        up_to = to.decimal("up_to", max_decimals=QUANTITY_DECIMALS)
        if up_to <= previous:
            raise InvalidInput(
                "tiers must rise: up_to must exceed the tier before", path=to.at("up_to")
            )
        if last:
            raise InvalidInput("the last tier must be unbounded (up_to: null)", path=to.at("up_to"))
        tiers.append([str(up_to), str(price)])
        previous = up_to
    return tiers
