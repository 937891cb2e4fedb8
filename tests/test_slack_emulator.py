"""Tests for the Slack Web API emulator, driven by the real slack_sdk client over HTTP."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError, URLError

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from tests.slack_emulator import Call, SlackEmulator

TOKEN = "xoxb-test-token"


@pytest.fixture
def emu() -> Iterator[SlackEmulator]:
    with SlackEmulator() as emulator:
        emulator.add_user("U1", locale="de-DE", tz="Europe/Berlin", name="anna")
        emulator.add_user("U2", is_restricted=True)
        emulator.add_channel("C1")
        yield emulator
        assert emulator.errors == []


def make_client(emu: SlackEmulator, *, token: str | None = TOKEN) -> WebClient:
    """A real WebClient with no retry handlers (slack_sdk retries dropped connections)."""
    return WebClient(token=token, base_url=emu.api_url, timeout=5, retry_handlers=[])


@pytest.fixture
def client(emu: SlackEmulator) -> WebClient:
    return make_client(emu)


def api_error(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        call()
    return info.value


# --------------------------------------------------------------------------- basics


def test_urls_and_lifecycle() -> None:
    emulator = SlackEmulator()
    with pytest.raises(RuntimeError):
        _ = emulator.api_url
    with emulator:
        assert emulator.base_url.startswith("http://127.0.0.1:")
        assert emulator.api_url == emulator.base_url + "/api/"
        assert emulator.response_url("a b") == emulator.base_url + "/response/a%20b"
        assert emulator.start() is emulator  # idempotent
    emulator.stop()  # idempotent


def test_auth_test(emu: SlackEmulator, client: WebClient) -> None:
    resp = client.auth_test()
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp["ok"] is True
    assert resp["team_id"] == "T0ACME"
    assert resp["user_id"] == "UBOT"
    assert resp["bot_id"]
    assert resp["url"].startswith("https://")
    assert resp["team"]
    [call] = emu.calls_to("auth.test")
    assert call.status == 200
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert call.response is not None and call.response["ok"] is True


def test_bad_and_missing_token(emu: SlackEmulator) -> None:
    err = api_error(make_client(emu, token="xoxb-wrong").auth_test)
    assert err.response.status_code == 200
    assert err.response["error"] == "invalid_auth"
    err = api_error(make_client(emu, token=None).auth_test)
    assert err.response["error"] == "not_authed"
    # A token in the form body works like the header.
    resp = httpx.post(emu.api_url + "auth.test", data={"token": TOKEN})
    assert resp.json()["ok"] is True


def test_unknown_method(client: WebClient) -> None:
    err = api_error(lambda: client.api_call("chat.doesNotExist", params={"x": "1"}))
    assert err.response["error"] == "unknown_method"


def test_users_info_locale_only_when_asked(client: WebClient) -> None:
    user = client.users_info(user="U1")["user"]
    assert "locale" not in user
    assert user["id"] == "U1"
    assert user["name"] == "anna"
    assert user["tz"] == "Europe/Berlin"
    assert user["tz_offset"] in (3600, 7200)
    assert user["is_bot"] is False
    assert user["deleted"] is False
    assert user["team_id"] == "T0ACME"
    assert user["is_restricted"] is False
    assert user["is_ultra_restricted"] is False

    user = client.users_info(user="U1", include_locale=True)["user"]
    assert user["locale"] == "de-DE"
    assert client.users_info(user="U2")["user"]["is_restricted"] is True

    err = api_error(lambda: client.users_info(user="U404"))
    assert err.response["error"] == "user_not_found"


def test_get_for_read_methods(emu: SlackEmulator) -> None:
    resp = httpx.get(
        emu.api_url + "users.info",
        params={"user": "U1", "include_locale": "true"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status_code == 200
    assert resp.json()["user"]["locale"] == "de-DE"
    resp = httpx.get(emu.api_url + "chat.postMessage", params={"token": TOKEN})
    assert resp.status_code == 405
    assert resp.json()["ok"] is False


# --------------------------------------------------------------------------- messaging


def test_dm_post_and_history_with_metadata(emu: SlackEmulator, client: WebClient) -> None:
    opened = client.conversations_open(users="U1")
    dm = opened["channel"]["id"]
    assert dm == "DU1"
    assert client.conversations_open(users="U1")["channel"]["id"] == dm  # stable

    metadata = {"event_type": "invoice_sent", "event_payload": {"invoice_id": "INV-1"}}
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Invoice* INV-1"}}]
    first = client.chat_postMessage(channel=dm, text="Invoice INV-1", blocks=blocks)
    second = client.chat_postMessage(channel=dm, text="paid", metadata=metadata)
    assert first["channel"] == dm
    assert first["message"]["blocks"] == blocks
    assert first["message"]["bot_id"] == second["message"]["bot_id"]
    assert second["message"]["metadata"] == metadata
    assert float(second["ts"]) > float(first["ts"])
    assert len(second["ts"].split(".")[1]) == 6

    plain = client.conversations_history(channel=dm)
    assert plain["has_more"] is False
    assert plain["response_metadata"]["next_cursor"] == ""
    assert [m["text"] for m in plain["messages"]] == ["paid", "Invoice INV-1"]  # newest first
    assert all("metadata" not in m for m in plain["messages"])

    full = client.conversations_history(channel=dm, include_all_metadata=True)
    assert full["messages"][0]["metadata"] == metadata
    assert "metadata" not in full["messages"][1]

    limited = client.conversations_history(channel=dm, limit=1)
    assert [m["text"] for m in limited["messages"]] == ["paid"]
    assert limited["has_more"] is True
    rest = client.conversations_history(
        channel=dm, limit=1, cursor=limited["response_metadata"]["next_cursor"]
    )
    assert [m["text"] for m in rest["messages"]] == ["Invoice INV-1"]
    newer = client.conversations_history(channel=dm, oldest=first["ts"])
    assert [m["text"] for m in newer["messages"]] == ["paid"]

    [stored_first, stored_second] = emu.messages(dm)
    assert stored_first["channel"] == dm
    assert stored_first["blocks"] == blocks
    assert stored_second["metadata"] == metadata
    assert stored_second["user"] == "UBOT"
    assert emu.messages("U1") == emu.messages(dm)
    assert emu.messages("C1") == []


def test_form_encoded_json_strings_are_parsed(emu: SlackEmulator, client: WebClient) -> None:
    blocks = [{"type": "divider"}]
    metadata = {"event_type": "e", "event_payload": {"n": 1}}
    client.api_call(
        "chat.postMessage",
        params={
            "channel": "C1",
            "text": "form",
            "blocks": json.dumps(blocks),
            "metadata": json.dumps(metadata),
        },
    )
    [call] = emu.calls_to("chat.postMessage")
    assert call.headers["content-type"] == "application/x-www-form-urlencoded"
    assert call.params["blocks"] == blocks
    [message] = emu.messages("C1")
    assert message["blocks"] == blocks
    assert message["metadata"] == metadata


def test_post_to_user_id_lands_in_dm(emu: SlackEmulator, client: WebClient) -> None:
    resp = client.chat_postMessage(channel="U2", text="hello")
    assert resp["channel"] == "DU2"
    assert [m["text"] for m in client.conversations_history(channel="DU2")["messages"]] == ["hello"]


def test_post_message_validation(client: WebClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"channel": "C404", "text": "x"}, "channel_not_found"),
        ({"channel": "DU1", "text": "x"}, "channel_not_found"),  # DM not opened yet
        ({"channel": "U404", "text": "x"}, "channel_not_found"),
        ({"channel": "C1"}, "no_text"),
        ({"channel": "C1", "text": "x" * 40_001}, "msg_too_long"),
        ({"channel": "C1", "text": "x", "blocks": [{"type": "divider"}] * 51}, "invalid_blocks"),
        ({"channel": "C1", "text": "x", "blocks": {"type": "divider"}}, "invalid_blocks"),
        (
            {"channel": "C1", "text": "x", "metadata": {"event_payload": {}}},
            "invalid_metadata_schema",
        ),
    ]
    for body, expected in cases:
        err = api_error(lambda body=body: client.api_call("chat.postMessage", json=body))
        assert err.response.status_code == 200
        assert err.response["error"] == expected, body
    ok = client.chat_postMessage(channel="C1", text="x", blocks=[{"type": "divider"}] * 50)
    assert ok["ok"] is True


def test_ephemeral_update_delete_and_views(emu: SlackEmulator, client: WebClient) -> None:
    eph = client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert eph["message_ts"]
    [stored] = emu.ephemerals("U1")
    assert stored["text"] == "only you" and stored["channel"] == "C1"
    assert emu.ephemerals("U2") == []
    err = api_error(lambda: client.chat_postEphemeral(channel="C1", user="U404", text="x"))
    assert err.response["error"] == "user_not_found"

    posted = client.chat_postMessage(channel="C1", text="draft")
    updated = client.chat_update(channel="C1", ts=posted["ts"], text="final")
    assert updated["ts"] == posted["ts"]
    assert updated["message"]["text"] == "final"
    assert emu.messages("C1")[0]["text"] == "final"
    err = api_error(lambda: client.chat_update(channel="C1", ts="1.000001", text="x"))
    assert err.response["error"] == "message_not_found"
    client.chat_delete(channel="C1", ts=posted["ts"])
    assert emu.messages("C1") == []

    view = {"type": "home", "blocks": [{"type": "divider"}]}
    published = client.views_publish(user_id="U1", view=view)["view"]
    assert published["id"].startswith("V")
    assert published["type"] == "home"
    again = client.views_publish(user_id="U1", view=view, hash=published["hash"])["view"]
    assert again["id"] == published["id"]
    err = api_error(lambda: client.views_publish(user_id="U1", view=view, hash="stale"))
    assert err.response["error"] == "hash_conflict"
    too_many = {"type": "home", "blocks": [{"type": "divider"}] * 101}
    err = api_error(lambda: client.views_publish(user_id="U1", view=too_many))
    assert err.response["error"] == "invalid_blocks"
    assert [v["view"]["blocks"] for v in emu.published_views("U1")] == [view["blocks"]] * 2
    assert emu.published_views("U2") == []


# --------------------------------------------------------------------------- scripted faults


def test_scripted_429_is_seen_by_the_client(emu: SlackEmulator, client: WebClient) -> None:
    emu.fail_next("chat.postMessage", status=429, retry_after=7)
    err = api_error(lambda: client.chat_postMessage(channel="C1", text="x"))
    assert err.response.status_code == 429
    assert err.response.headers["Retry-After"] == "7"
    assert err.response["error"] == "ratelimited"
    assert client.chat_postMessage(channel="C1", text="x")["ok"] is True
    statuses = [c.status for c in emu.calls_to("chat.postMessage")]
    assert statuses == [429, 200]
    assert len(emu.messages("C1")) == 1


def test_scripted_5xx(emu: SlackEmulator, client: WebClient) -> None:
    emu.fail_next("users.info", status=500)
    err = api_error(lambda: client.users_info(user="U1"))
    assert err.response.status_code == 500
    assert err.response["error"] == "internal_error"

    emu.fail_next("users.info", status=503)
    err = api_error(lambda: client.users_info(user="U1"))
    assert err.response.status_code == 503
    assert err.response["ok"] is False  # text body: slack_sdk reports it as an error
    assert emu.calls_to("users.info")[-1].response is None


def test_scripted_ok_false_fifo_and_times(emu: SlackEmulator, client: WebClient) -> None:
    emu.fail_next("chat.postMessage", error="not_in_channel", times=2)
    emu.fail_next("chat.postMessage", error="is_archived")
    errors = []
    for _ in range(3):
        err = api_error(lambda: client.chat_postMessage(channel="C1", text="x"))
        assert err.response.status_code == 200
        errors.append(err.response["error"])
    assert errors == ["not_in_channel", "not_in_channel", "is_archived"]
    assert client.chat_postMessage(channel="C1", text="x")["ok"] is True
    # Failures are per method.
    assert client.auth_test()["ok"] is True


def test_fail_next_argument_checks(emu: SlackEmulator) -> None:
    with pytest.raises(ValueError):
        emu.fail_next("chat.postMessage")
    with pytest.raises(ValueError):
        emu.fail_next("chat.postMessage", status=429, times=0)
    with pytest.raises(ValueError):
        emu.set_random_faults(seed=1, rate=0.5, kinds=("teapot",))


def test_dropped_connection(emu: SlackEmulator, client: WebClient) -> None:
    emu.fail_next("chat.postMessage", drop_connection=True)
    with pytest.raises((URLError, ConnectionError)):
        client.chat_postMessage(channel="C1", text="x")
    [dropped] = emu.calls_to("chat.postMessage")
    assert dropped.status == 0 and dropped.response is None
    assert emu.messages() == []

    # slack_sdk's ConnectionErrorRetryHandler (a default one) retries once and succeeds.
    emu.fail_next("chat.postMessage", drop_connection=True)
    handler = ConnectionErrorRetryHandler(interval_calculator=FixedValueRetryIntervalCalculator(0))
    retrying = WebClient(token=TOKEN, base_url=emu.api_url, timeout=5, retry_handlers=[handler])
    resp = retrying.chat_postMessage(channel="C1", text="y")
    assert resp["ok"] is True
    assert [c.status for c in emu.calls_to("chat.postMessage")] == [0, 0, 200]


def test_channel_rate_limit_with_fake_clock(emu: SlackEmulator, client: WebClient) -> None:
    now = [1000.0]
    emu.clock = lambda: now[0]
    emu.set_channel_rate_limit(1.0)
    client.conversations_open(users="U1")

    assert client.chat_postMessage(channel="C1", text="1")["ok"] is True
    err = api_error(lambda: client.chat_postMessage(channel="C1", text="2"))
    assert err.response.status_code == 429
    assert err.response.headers["Retry-After"] == "1"
    assert client.chat_postMessage(channel="DU1", text="other channel")["ok"] is True

    now[0] += 0.5
    err = api_error(lambda: client.chat_postMessage(channel="C1", text="2"))
    assert int(err.response.headers["Retry-After"]) >= 1
    now[0] += 0.5
    assert client.chat_postMessage(channel="C1", text="2")["ok"] is True
    assert [m["text"] for m in emu.messages("C1")] == ["1", "2"]

    emu.set_channel_rate_limit(0.25)  # one per 4 s
    assert client.chat_postMessage(channel="C1", text="3")["ok"] is True
    err = api_error(lambda: client.chat_postMessage(channel="C1", text="4"))
    assert err.response.headers["Retry-After"] == "4"
    emu.set_channel_rate_limit(None)
    assert client.chat_postMessage(channel="C1", text="4")["ok"] is True


def _chaos_run(seed: int) -> list[tuple[int, str | None]]:
    outcomes: list[tuple[int, str | None]] = []
    with SlackEmulator() as emulator:
        emulator.add_channel("C1")
        emulator.set_random_faults(seed=seed, rate=0.5)
        client = make_client(emulator)
        for i in range(30):
            assert client.auth_test()["ok"] is True  # never faulted
            try:
                resp = client.chat_postMessage(channel="C1", text=str(i))
                outcomes.append((resp.status_code, None))
            except SlackApiError as err:
                outcomes.append((err.response.status_code, err.response["error"]))
            except (URLError, ConnectionError):
                outcomes.append((0, "dropped"))
        statuses = [c.status for c in emulator.calls_to("chat.postMessage")]
        assert statuses == [status for status, _ in outcomes]
    return outcomes


def test_random_faults_reproducible_by_seed() -> None:
    first = _chaos_run(seed=42)
    assert first == _chaos_run(seed=42)
    assert first != _chaos_run(seed=7)
    kinds = {error for _, error in first}
    assert None in kinds  # some successes
    assert len(kinds) > 2  # and several kinds of fault
    assert {status for status, _ in first} <= {0, 200, 429, 500}


# --------------------------------------------------------------------------- response_url etc.


def test_response_url_records_bodies(emu: SlackEmulator) -> None:
    resp = httpx.post(emu.response_url("r1"), json={"text": "done", "replace_original": True})
    assert resp.status_code == 200
    assert resp.text == "ok"
    assert resp.headers["content-type"].startswith("text/plain")

    request = urllib.request.Request(  # noqa: S310 - a loopback http URL
        emu.response_url(),
        data=json.dumps({"text": "second"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - a loopback http URL
        assert answer.read() == b"ok"

    assert emu.responses("r1") == [{"text": "done", "replace_original": True}]
    assert emu.responses("default") == [{"text": "second"}]
    assert len(emu.responses()) == 2
    assert [c.params for c in emu.calls_to("response_url")] == emu.responses()

    bad = httpx.post(emu.response_url("r1"), content=b"not json")
    assert bad.status_code == 400

    emu.fail_next("response_url", status=500)
    failed = httpx.post(emu.response_url("r1"), json={"text": "lost"})
    assert failed.status_code == 500
    assert emu.calls_to("response_url")[-1].params == {"text": "lost"}
    assert emu.responses("r1") == [{"text": "done", "replace_original": True}]


# --------------------------------------------------------------------------- file uploads


PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"


def test_files_upload_v2_runs_the_external_flow_into_a_dm(
    emu: SlackEmulator, client: WebClient
) -> None:
    dm = client.conversations_open(users="U1")["channel"]["id"]
    done = client.files_upload_v2(
        channel=dm,
        content=PDF,
        filename="INV-1.pdf",
        title="Invoice INV-1",
        initial_comment="Your invoice",
    )
    assert done["ok"] is True
    assert done["file"]["name"] == "INV-1.pdf"
    assert done["file"]["title"] == "Invoice INV-1"
    assert done["file"]["ims"] == ["DU1"] and done["file"]["size"] == len(PDF)
    methods = [c.method for c in emu.calls]
    assert methods == [
        "conversations.open",
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    [ask] = emu.calls_to("files.getUploadURLExternal")
    assert ask.params["filename"] == "INV-1.pdf" and ask.params["length"] == str(len(PDF))
    assert ask.response is not None
    file_id = ask.response["file_id"]
    assert ask.response["upload_url"] == emu.upload_url(file_id)
    [upload] = emu.calls_to("upload")
    assert upload.status == 200 and upload.params == {"file_id": file_id, "length": len(PDF)}
    [complete] = emu.calls_to("files.completeUploadExternal")
    assert complete.params["channel_id"] == "DU1"
    assert json.loads(complete.params["files"]) == [{"id": file_id, "title": "Invoice INV-1"}]
    assert emu.uploads() == [
        {
            "file_id": file_id,
            "filename": "INV-1.pdf",
            "title": "Invoice INV-1",
            "bytes": PDF,
            "channel": "DU1",
            "initial_comment": "Your invoice",
        }
    ]
    assert emu.uploads("U1") == emu.uploads("DU1") == emu.uploads()
    [shared] = emu.messages("DU1")
    assert shared["text"] == "Your invoice" and shared["upload"] is True
    assert [f["id"] for f in shared["files"]] == [file_id]
    assert shared["files"][0]["mimetype"] == "application/pdf"


def test_several_files_share_one_message_in_a_channel(
    emu: SlackEmulator, client: WebClient
) -> None:
    client.files_upload_v2(
        channel="C1",
        file_uploads=[
            {"filename": "a.png", "content": b"\x89PNG a", "title": "A"},
            {"filename": "b.csv", "content": "x,y\n1,2\n"},
        ],
        initial_comment="Two files",
    )
    uploads = emu.uploads("C1")
    assert [(u["filename"], u["title"], u["bytes"]) for u in uploads] == [
        ("a.png", "A", b"\x89PNG a"),
        ("b.csv", "b.csv", b"x,y\n1,2\n"),
    ]
    assert len(emu.calls_to("files.getUploadURLExternal")) == 2
    assert len(emu.calls_to("files.completeUploadExternal")) == 1
    [shared] = emu.messages("C1")
    assert [f["name"] for f in shared["files"]] == ["a.png", "b.csv"]
    assert shared["files"][0]["channels"] == ["C1"] and shared["files"][0]["is_public"]


def test_multipart_upload_and_a_file_completed_without_a_channel_stays_private(
    emu: SlackEmulator, client: WebClient
) -> None:
    ticket = client.files_getUploadURLExternal(filename="notes.txt", length=5)
    posted = httpx.post(ticket["upload_url"], files={"filename": ("notes.txt", b"hello")})
    assert posted.status_code == 200 and posted.text == "OK - 5"
    done = client.files_completeUploadExternal(files=[{"id": ticket["file_id"]}])
    assert done["files"][0]["title"] == "notes.txt"
    assert emu.uploads() == [
        {
            "file_id": ticket["file_id"],
            "filename": "notes.txt",
            "title": "notes.txt",
            "bytes": b"hello",
            "channel": None,
            "initial_comment": None,
        }
    ]
    assert emu.messages() == []


def test_upload_mistakes_get_slacks_errors(emu: SlackEmulator, client: WebClient) -> None:
    no_name = api_error(lambda: client.api_call("files.getUploadURLExternal", params={"length": 3}))
    assert no_name.response["error"] == "invalid_arguments"
    empty = api_error(lambda: client.files_getUploadURLExternal(filename="x", length=0))
    assert empty.response["error"] == "missing_argument"

    ticket = client.files_getUploadURLExternal(filename="x.csv", length=3)
    file_id = ticket["file_id"]
    early = api_error(lambda: client.files_completeUploadExternal(files=[{"id": file_id}]))
    assert early.response["error"] == "file_not_found", "nothing was uploaded yet"
    assert httpx.get(ticket["upload_url"]).status_code == 405
    assert httpx.post(emu.upload_url("F404"), content=b"abc").status_code == 404
    assert httpx.post(ticket["upload_url"], content=b"abc").status_code == 200

    nowhere = api_error(
        lambda: client.files_completeUploadExternal(files=[{"id": file_id}], channel_id="C404")
    )
    assert nowhere.response["error"] == "channel_not_found"
    bad_files = api_error(lambda: client.api_call("files.completeUploadExternal", params={}))
    assert bad_files.response["error"] == "invalid_arguments"
    assert emu.uploads() == [], "a refused completion shares nothing"

    client.files_completeUploadExternal(files=[{"id": file_id}], channel_id="C1")
    again = api_error(
        lambda: client.files_completeUploadExternal(files=[{"id": file_id}], channel_id="C1")
    )
    assert again.response["error"] == "file_not_found"
    assert httpx.post(ticket["upload_url"], content=b"late").status_code == 404
    assert len(emu.uploads()) == 1
    assert emu.errors == []


@pytest.mark.parametrize(
    ("method", "failure"),
    [
        ("files.completeUploadExternal", {"error": "internal_error"}),
        ("files.completeUploadExternal", {"status": 500}),
        ("files.getUploadURLExternal", {"error": "file_uploads_disabled"}),
        ("upload", {"status": 500}),
    ],
)
def test_scripted_upload_failures_reach_files_upload_v2(
    emu: SlackEmulator, client: WebClient, method: str, failure: dict[str, Any]
) -> None:
    emu.fail_next(method, **failure)
    with pytest.raises(Exception) as raised:  # noqa: PT011 - SlackApiError or urllib's HTTPError
        client.files_upload_v2(channel="C1", content=b"abc", filename="a.txt")
    assert isinstance(raised.value, (SlackApiError, URLError))
    if isinstance(raised.value, HTTPError):
        raised.value.close()  # slack_sdk leaves urllib's failed response open
    assert emu.uploads() == [] and emu.messages("C1") == []
    assert emu.calls_to(method)[-1].status == failure.get("status", 200)
    # The next attempt goes through.
    client.files_upload_v2(channel="C1", content=b"abc", filename="a.txt")
    assert [u["bytes"] for u in emu.uploads("C1")] == [b"abc"]


def test_reset_forgets_uploads(emu: SlackEmulator, client: WebClient) -> None:
    client.files_upload_v2(channel="C1", content=b"abc", filename="a.txt")
    first = emu.uploads()[0]["file_id"]
    emu.reset()
    assert emu.uploads() == [] and emu.calls == []
    client.files_upload_v2(channel="C1", content=b"abc", filename="a.txt")
    assert emu.uploads()[0]["file_id"] != first, "file ids stay unique across resets"


def test_reset_keeps_users_and_channels(emu: SlackEmulator, client: WebClient) -> None:
    client.conversations_open(users="U1")
    client.chat_postMessage(channel="DU1", text="x")
    emu.fail_next("users.info", status=500)
    emu.set_channel_rate_limit(1.0)
    httpx.post(emu.response_url(), json={"text": "x"})
    emu.reset()
    assert emu.calls == [] and emu.messages() == [] and emu.responses() == []
    assert client.users_info(user="U1")["ok"] is True  # fault forgotten, user kept
    assert client.chat_postMessage(channel="DU1", text="a")["ok"] is True  # DM kept open
    assert client.chat_postMessage(channel="C1", text="b")["ok"] is True
    assert client.chat_postMessage(channel="C1", text="c")["ok"] is True  # no rate limit
    assert isinstance(emu.calls[0], Call)


def test_concurrent_posts_get_unique_increasing_ts(emu: SlackEmulator) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        local = make_client(emu)
        for _ in range(5):
            ts = local.chat_postMessage(channel="C1", text="x")["ts"]
            with lock:
                results.append(ts)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 20
    stored = [m["ts"] for m in emu.messages("C1")]
    assert stored == sorted(stored, key=float)
    assert len(emu.calls_to("chat.postMessage")) == 20


def test_bolt_app_runs_against_emulator(emu: SlackEmulator, client: WebClient) -> None:
    from slack_bolt import App

    app = App(client=client, signing_secret="secret")
    assert app.client.auth_test()["user_id"] == "UBOT"
    assert emu.calls_to("auth.test")
