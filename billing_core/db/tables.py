"""SQLAlchemy 2 typed mappings. Rows only: the rules live in billing_core.model and rating.

Uniqueness that protects money is enforced here, by the database itself:
one close and one invoice per (billing group, period start), one event per id, one payment
per reference, one redemption per (coupon, group), one number per invoice and receipt.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from billing_core.db.types import Dec, UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY, so big ids are BIGINT on PostgreSQL only.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {Decimal: Dec(), datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    slack_team_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    timezone: Mapped[str] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(16))
    open_read_access: Mapped[bool] = mapped_column(Boolean, default=False)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("organization_id", "slack_user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    slack_user_id: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))


class PriceList(Base):
    __tablename__ = "price_lists"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    metrics: Mapped[list[MetricPriceRow]] = relationship(
        order_by="MetricPriceRow.id", cascade="all, delete-orphan"
    )


class MetricPriceRow(Base):
    __tablename__ = "metric_prices"
    __table_args__ = (UniqueConstraint("price_list_id", "metric"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    price_list_id: Mapped[int] = mapped_column(ForeignKey("price_lists.id"))
    metric: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(100))
    aggregation: Mapped[str] = mapped_column(String(8))
    # [[up_to or null, unit_price], ...] as decimal strings
    tiers: Mapped[list[list[str | None]]] = mapped_column(JSON)


class Plan(Base):
    __tablename__ = "plans"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    price_list_id: Mapped[int] = mapped_column(ForeignKey("price_lists.id"))
    monthly_fee: Mapped[Decimal]
    included: Mapped[dict[str, Any]] = mapped_column(JSON)  # metric -> decimal string


class BillingGroup(Base):
    __tablename__ = "billing_groups"
    __table_args__ = (UniqueConstraint("organization_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    price_list_id: Mapped[int] = mapped_column(ForeignKey("price_lists.id"))
    currency: Mapped[str] = mapped_column(String(3))
    payment_method: Mapped[str] = mapped_column(String(32))
    payment_terms_days: Mapped[int] = mapped_column(Integer)
    tax_rate: Mapped[Decimal | None]
    billing_address: Mapped[str | None] = mapped_column(Text)
    shipping_address: Mapped[str | None] = mapped_column(Text)
    vat_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))
    subscription_start: Mapped[datetime | None]


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"), index=True)
    slack_user_id: Mapped[str | None] = mapped_column(String(32))
    slack_channel_id: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(320))


class Unit(Base):
    __tablename__ = "units"
    __table_args__ = (UniqueConstraint("organization_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("organization_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"), index=True)


class ProjectAssignment(Base):
    """History of which group owned a project from when; usage follows it by timestamp."""

    __tablename__ = "project_assignments"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"))
    valid_from: Mapped[datetime]
    assigned_by: Mapped[str] = mapped_column(String(64))


class CouponRow(Base):
    __tablename__ = "coupons"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)  # stored upper case
    percent_off: Mapped[Decimal | None]
    amount_off: Mapped[Decimal | None]
    currency: Mapped[str | None] = mapped_column(String(3))
    duration: Mapped[str] = mapped_column(String(16))
    duration_periods: Mapped[int | None] = mapped_column(Integer)
    max_redemptions: Mapped[int | None] = mapped_column(Integer)
    redeem_by: Mapped[datetime | None]
    times_redeemed: Mapped[int] = mapped_column(Integer, default=0)


class Redemption(Base):
    __tablename__ = "coupon_redemptions"
    __table_args__ = (UniqueConstraint("coupon_id", "billing_group_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    coupon_id: Mapped[int] = mapped_column(ForeignKey("coupons.id"))
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"), index=True)
    redeemed_at: Mapped[datetime]
    redeemed_by: Mapped[str] = mapped_column(String(64))
    uses: Mapped[int] = mapped_column(Integer, default=0)


class Credit(Base):
    __tablename__ = "credits"
    __table_args__ = (
        UniqueConstraint("billing_group_id", "grant_key"),
        CheckConstraint("remaining >= 0", name="remaining_not_negative"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"), index=True)
    grant_key: Mapped[str] = mapped_column(String(128))
    amount: Mapped[Decimal]
    remaining: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    expires_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(String(200))
    granted_at: Mapped[datetime]
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"))


class UsageEvent(Base):
    """A metered event. Which close settled it follows from the closes' watermarks (see
    ``PeriodClose.usage_upto``); ``close_id`` marks only events settled before migration 0004,
    when each close wrote its id on every event it claimed."""

    __tablename__ = "usage_events"
    __table_args__ = (
        # Everything a close or a balance reads of an event, so that on PostgreSQL a vacuumed
        # table is read from the index alone; and by id, for the usage since a close.
        Index(
            "ix_usage_events_group_ts",
            "billing_group_id",
            "ts",
            postgresql_include=["id", "metric", "project_id", "quantity", "close_id"],
        ),
        Index("ix_usage_events_group_id", "billing_group_id", "id", postgresql_include=["ts"]),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"))
    metric: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[Decimal]
    ts: Mapped[datetime]
    close_id: Mapped[int | None]  # legacy: the close that claimed it, before migration 0004


class UsageGate(Base):
    """One row per billing group that has had usage: imports hold it FOR SHARE while they
    write the group's events, a close holds it FOR UPDATE, so a close sees every event of the
    group that will ever have an id up to its ``usage_upto`` (PostgreSQL; SQLite has one
    writer at a time)."""

    __tablename__ = "usage_gates"
    billing_group_id: Mapped[int] = mapped_column(
        ForeignKey("billing_groups.id"), primary_key=True, autoincrement=False
    )


class PeriodClose(Base):
    """A billing group's period, closed: its usage is settled, with or without an invoice.

    ``usage_upto`` is the highest usage event id when the close was made: it settled the
    group's events with ``id <= usage_upto`` and ``ts < period_end`` that earlier closes had
    not. Ids only grow and a close holds its group's ``UsageGate``, so the events of a group
    settled by its closes so far are exactly those inside the last close's (usage_upto,
    period_end) corner: nothing is written on the events themselves. NULL: a close made
    before migration 0004, whose events carry its id in ``usage_events.close_id``.
    """

    __tablename__ = "period_closes"
    __table_args__ = (UniqueConstraint("billing_group_id", "period_start"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    closed_at: Mapped[datetime]
    usage_upto: Mapped[int | None] = mapped_column(BigInteger)


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("billing_group_id", "period_start"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"))
    close_id: Mapped[int] = mapped_column(ForeignKey("period_closes.id"), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    invoice_date: Mapped[date] = mapped_column(Date)
    due_date: Mapped[date] = mapped_column(Date)
    subtotal: Mapped[Decimal]
    discount: Mapped[Decimal]
    tax_rate: Mapped[Decimal | None]
    tax: Mapped[Decimal]
    total: Mapped[Decimal]
    credits_applied: Mapped[Decimal]
    amount_due: Mapped[Decimal]
    amount_paid: Mapped[Decimal]
    status: Mapped[str] = mapped_column(String(8))
    issued_at: Mapped[datetime]
    checksum: Mapped[str] = mapped_column(String(64))
    lines: Mapped[list[InvoiceLine]] = relationship(order_by="InvoiceLine.position")


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"
    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str | None] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[Decimal]
    billable_quantity: Mapped[Decimal]
    amount: Mapped[Decimal]
    late_period_start: Mapped[datetime | None]
    late_period_end: Mapped[datetime | None]
    projects: Mapped[list[InvoiceLineProject]] = relationship(order_by="InvoiceLineProject.id")


class InvoiceLineProject(Base):
    __tablename__ = "invoice_line_projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("invoice_lines.id"), index=True)
    project_key: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[Decimal]
    amount: Mapped[Decimal]


class InvoiceDiscount(Base):
    __tablename__ = "invoice_discounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    redemption_id: Mapped[int] = mapped_column(ForeignKey("coupon_redemptions.id"))
    code: Mapped[str] = mapped_column(String(64))
    amount: Mapped[Decimal]


class CreditApplication(Base):
    __tablename__ = "credit_applications"
    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    credit_id: Mapped[int] = mapped_column(ForeignKey("credits.id"), index=True)
    amount: Mapped[Decimal]


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(128), unique=True)
    receipt_number: Mapped[str] = mapped_column(String(64), unique=True)
    billing_group_id: Mapped[int] = mapped_column(ForeignKey("billing_groups.id"), index=True)
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    method: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime]
    recorded_at: Mapped[datetime]


class PaymentAllocation(Base):
    __tablename__ = "payment_allocations"
    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    amount: Mapped[Decimal]


class Counter(Base):
    """Gapless sequences: the row is locked by the increment until the document commits."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime]
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class OutboxMessage(Base):
    """One Slack message owed to one recipient: (invoice, step, recipient) is delivered once.

    ``step`` is ``issued`` (the invoice notice), ``due-3``/``due+0``/... (a reminder at that
    offset from the due date) or ``alert:<step>:<recipient>`` (a give-up report to the audit
    channel). ``recipient`` is ``user:U…`` or ``channel:C…``: the contact's Slack identity, so a
    contact removed and added again is still the same recipient.
    """

    __tablename__ = "notification_outbox"
    __table_args__ = (
        UniqueConstraint("invoice_id", "step", "recipient", name="uq_notification_outbox_delivery"),
        CheckConstraint(
            "state IN ('pending', 'sending', 'sent', 'skipped', 'failed')", name="state"
        ),
        Index("ix_notification_outbox_state_next", "state", "next_attempt_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    step: Mapped[str] = mapped_column(String(80))
    recipient: Mapped[str] = mapped_column(String(48))
    state: Mapped[str] = mapped_column(String(8))
    due_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(String(200))  # why skipped, or how resolved
    slack_channel: Mapped[str | None] = mapped_column(String(32))
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class SeenSlackRequest(Base):
    """A signed Slack request already taken, kept while its signature is still fresh.

    Slack signs ``v0:{timestamp}:{body}``; a request is accepted for five minutes after its
    timestamp, so an exact copy sent again inside that window would pass the signature check.
    The signature's row makes the second copy a replay, refused before any work, on every
    replica (they share only the database).
    """

    __tablename__ = "seen_slack_requests"
    signature: Mapped[str] = mapped_column(String(80), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
