"""Who may change what: every subcommand and button, for every kind of asker.

One served app (real uvicorn, signed requests) answers each cell of the matrix in turn. Before
and after each cell the whole database is dumped: a cell that is not allowed to change anything
must leave every row as it was, and an allowed change must touch only its own tables and write
exactly one audit entry naming who did what. Allowed changes run last, so every cell starts
from the same state. Another organization's admin uses the same group and project keys as
Acme, so a lookup that forgot the organization would show up as a change to Acme.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from billing_core.db import tables as t
from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.handlers import AssignAsk
from bot.views.admin import CANCEL_ACTION, CONFIRM_ACTION
from bot.views.invoices import PAY_ACTION
from tests.hardening.conftest import (
    ACME_DATA,
    GX_ADMIN,
    GX_TEAM,
    add_globex,
    changed_tables,
    snapshot,
)
from tests.notifications.conftest import sqlite_only
from tests.slack.conftest import ADMIN, DEV, GUEST, NOW, STRANGER, Clock, bill_acme, running
from tests.slack.slackside import TEAM, Slack, as_text, buttons, wait_for
from tests.slack_emulator import SlackEmulator


@dataclass(frozen=True)
class Person:
    role: str
    user: str
    team: str


NON_MEMBER = Person("non-member", STRANGER, TEAM)
GUEST_USER = Person("guest", GUEST, TEAM)
MEMBER = Person("member", DEV, TEAM)
ADMIN_USER = Person("admin", ADMIN, TEAM)
OTHER_ADMIN = Person("other organization's admin", GX_ADMIN, GX_TEAM)
ASKERS = (NON_MEMBER, GUEST_USER, MEMBER, ADMIN_USER, OTHER_ADMIN)

READS = (
    "balance",
    "balance eng",
    "owed",
    "invoices",
    "invoice INV-2026-000002",
    "payments",
    "credits",
    "groups",
)
# Each change cell uses its own coupon, so one asker's allowed redemption never blocks another.
REDEEMS = {
    "slash": "redeem WELCOME10 eng",
    "dm": "redeem SPRING5 eng",
    "mention": "redeem MENTION5 ops",
}


@dataclass(frozen=True)
class Cell:
    name: str
    surface: str  # slash, dm, mention, click
    text: str = ""


CELLS = (
    Cell("help", "slash", "help"),
    Cell("empty", "slash", ""),
    *(Cell(text, "slash", text) for text in READS),
    *(Cell(f"{text} ({surface})", surface, text) for surface, text in REDEEMS.items()),
    Cell("assign (slash)", "slash", "assign web ops"),
    Cell("assign (dm)", "dm", "assign web ops"),
    Cell("confirm the admin's question", "click", CONFIRM_ACTION),
    Cell("cancel the admin's question", "click", CANCEL_ACTION),
    Cell("confirm a question of one's own", "click", "forged"),
    Cell("pay button", "click", PAY_ACTION),
)


@dataclass(frozen=True)
class Expect:
    kind: str  # help, data, refused, question, cancelled, ack, change
    action: str = ""
    subject: str = ""


HELP, DATA, REFUSED = Expect("help"), Expect("data"), Expect("refused")
QUESTION, CANCELLED, ACK = Expect("question"), Expect("cancelled"), Expect("ack")


def expected(asker: Person, cell: Cell, *, open_read: bool) -> Expect | None:
    """What the cell must do for the asker (None: the cell does not apply)."""
    if cell.name in ("help", "empty"):
        return HELP
    if cell.name == "pay button":
        return ACK
    if cell.name.startswith("cancel"):
        return CANCELLED  # a cancel changes nothing, whoever presses it
    org = "globex" if asker is OTHER_ADMIN else "acme"
    reader = asker in (MEMBER, ADMIN_USER, OTHER_ADMIN) or (open_read and asker is NON_MEMBER)
    admin = asker in (ADMIN_USER, OTHER_ADMIN)
    if cell.surface in ("slash", "dm", "mention") and cell.text in READS:
        if cell.text.startswith("invoice ") and asker is OTHER_ADMIN:
            return REFUSED  # Acme's invoice number, asked in Globex's workspace
        return DATA if reader else REFUSED
    if cell.surface != "click" and cell.text.startswith("redeem"):
        group = cell.text.split()[-1]
        return Expect("change", "coupon.redeem", f"{org}/{group}") if admin else REFUSED
    if cell.surface != "click" and cell.text.startswith("assign"):
        return QUESTION if admin else REFUSED
    if cell.name == "confirm the admin's question":
        return Expect("change", "project.assign", "acme/web") if asker is ADMIN_USER else REFUSED
    if cell.name == "confirm a question of one's own":
        if asker is ADMIN_USER:
            return None  # the same cell as confirming the admin's question
        return Expect("change", "project.assign", f"{org}/web") if admin else REFUSED
    raise AssertionError(f"no expectation for {cell}")


ALLOWED_TABLES = {
    "coupon.redeem": {"coupons", "coupon_redemptions", "audit_log"},
    "project.assign": {"projects", "project_assignments", "usage_events", "audit_log"},
}


class Matrix:
    """Runs cells against the served app and reads back their answers."""

    def __init__(self, slack: Slack, emu: SlackEmulator, admin_question: dict[str, Any]) -> None:
        self.slack = slack
        self.emu = emu
        self.admin_buttons = buttons(admin_question)

    def run(self, asker: Person, cell: Cell) -> dict[str, Any] | None:
        if cell.surface == "slash":
            return self.slack.ask(asker.user, cell.text, team=asker.team)
        if cell.surface == "dm":
            return self._new_message(
                lambda: self.emu.messages(f"D{asker.user}"),
                lambda: self.slack.dm(asker.user, cell.text, team=asker.team),
            )
        if cell.surface == "mention":
            return self._new_message(
                lambda: self.emu.ephemerals(asker.user), lambda: self._mention(asker, cell.text)
            )
        return self._click(asker, cell)

    def _new_message(
        self, messages: Callable[[], list[dict[str, Any]]], send: Callable[[], Any]
    ) -> dict[str, Any]:
        before = len(messages())
        assert send().status_code == 200
        found = wait_for(lambda: len(m := messages()) > before and m, what="the answer")
        assert len(found) == before + 1, "one request, one answer"
        return found[before]

    def _mention(self, asker: Person, text: str) -> Any:
        ts = f"{time.time():.6f}"
        event = {
            "type": "app_mention",
            "channel": "C0GENERAL",
            "user": asker.user,
            "text": f"<@{self.emu.bot_user_id}> {text}",
            "ts": ts,
            "event_ts": ts,
        }
        return self.slack.event(event, team=asker.team)

    def _click(self, asker: Person, cell: Cell) -> dict[str, Any] | None:
        if cell.text == "forged":
            ask = AssignAsk("web", "eng", "ops", asker.user, NOW)
            button = {
                "action_id": CONFIRM_ACTION,
                "value": ask.encode(),
                "text": {"type": "plain_text", "text": "Confirm"},
            }
        elif cell.text == PAY_ACTION:
            button = {"action_id": PAY_ACTION, "text": {"type": "plain_text", "text": "Pay"}}
        else:
            button = self.admin_buttons[cell.text]
        key = uuid.uuid4().hex[:8]
        response = self.slack.click(asker.user, button, key=key, team=asker.team)
        assert response.status_code == 200, response.text
        if cell.text == PAY_ACTION:
            return None
        return self.slack.answer(key)


def first_block_text(answer: dict[str, Any]) -> str:
    blocks = answer.get("blocks") or []
    return str(blocks[0].get("text", {}).get("text", "")) if blocks else ""


def check_answer(asker: Person, cell: Cell, expect: Expect, answer: dict[str, Any] | None) -> None:
    where = f"{asker.role} / {cell.name}"
    if expect.kind == "ack":
        assert answer is None
        return
    assert answer is not None and answer.get("text"), f"{where}: no answer"
    shown = as_text(answer)
    assert "Traceback" not in shown and "Sorry, something went wrong" not in shown, where
    refused = first_block_text(answer).startswith(":no_entry_sign:")
    if expect.kind == "refused":
        assert refused, f"{where}: expected a refusal, got:\n{shown}"
        assert not buttons(answer), f"{where}: a refusal offers no buttons"
    else:
        assert not refused, f"{where}: refused:\n{shown}"
    if expect.kind == "help":
        assert "Billing commands" in shown, where
    if expect.kind == "question":
        assert set(buttons(answer)) == {CONFIRM_ACTION, CANCEL_ACTION}, where
    if expect.kind == "cancelled":
        assert "Nothing was changed." in shown, where
    if expect.kind == "change":
        assert "redeemed" in shown or "moved from" in shown, f"{where}:\n{shown}"
    may_read_acme = asker in (MEMBER, ADMIN_USER) or (asker is NON_MEMBER and expect.kind == "data")
    if not may_read_acme:
        leaked = [mark for mark in ACME_DATA if mark in shown and mark not in cell.text]
        assert not leaked, f"{where}: shows Acme's {leaked}:\n{shown}"


def check_change(
    asker: Person, cell: Cell, expect: Expect, service: BillingService, before: Any
) -> None:
    after = snapshot(service)
    changed = changed_tables(before, after)
    where = f"{asker.role} / {cell.name}"
    if expect.kind != "change":
        assert not changed, f"{where} changed {sorted(changed)}"
        return
    assert changed <= ALLOWED_TABLES[expect.action], f"{where} changed {sorted(changed)}"
    new = after["audit_log"][len(before["audit_log"]) :]  # ordered by id: new rows come last
    assert len(new) == 1, f"{where}: {len(new)} audit entries"
    entry = dict(zip(service_audit_columns(), new[0], strict=True))
    assert (entry["actor"], entry["action"], entry["subject"]) == (
        asker.user,
        expect.action,
        expect.subject,
    ), where
    assert entry["before"] != entry["after"], where


def service_audit_columns() -> list[str]:
    return [c.name for c in t.AuditEntry.__table__.columns]


def run_matrix(
    settings: Settings,
    service: BillingService,
    emulator: SlackEmulator,
    clock: Clock,
    *,
    open_read: bool,
) -> None:
    bill_acme(service, open_read_access=open_read)
    add_globex(service)
    emulator.add_user(GX_ADMIN, locale="en-US")
    emulator.add_channel(f"D{GX_ADMIN}")
    plan = [
        (asker, cell, expect)
        for asker in ASKERS
        for cell in CELLS
        if (expect := expected(asker, cell, open_read=open_read)) is not None
    ]
    plan.sort(key=lambda item: item[2].kind == "change")  # stable: allowed changes last
    with running(settings, service, emulator, clock) as slack:
        admin_question = slack.ask(ADMIN, "assign web ops")
        matrix = Matrix(slack, emulator, admin_question)
        for asker, cell, expect in plan:
            before = snapshot(service)
            answer = matrix.run(asker, cell)
            check_answer(asker, cell, expect, answer)
            check_change(asker, cell, expect, service, before)
    kinds = [expect.kind for _, _, expect in plan]
    assert kinds.count("change") == 8  # 3 redemptions + 1 move, for each of the two admins


def test_only_the_allowed_cells_change_anything(
    settings: Settings, service: BillingService, emulator: SlackEmulator, clock: Clock
) -> None:
    run_matrix(settings, service, emulator, clock, open_read=False)


@sqlite_only  # who may read changes; how the database is locked does not
def test_with_open_read_access_colleagues_read_but_only_admins_change(
    settings: Settings, service: BillingService, emulator: SlackEmulator, clock: Clock
) -> None:
    run_matrix(settings, service, emulator, clock, open_read=True)
