"""Files for the asker: Download PDF, ``usage`` charts and the ``export`` CSV.

Every test drives the served app over signed HTTP and follows the upload through the emulator:
files.getUploadURLExternal, the POST of the bytes, files.completeUploadExternal into the DM.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from babel import Locale
from PIL import Image
from pypdf import PdfReader

from billing_core.export import to_csv
from billing_core.model import DailyCharges, GroupRef
from billing_core.money import Money
from billing_core.periods import Period
from billing_core.services import BillingService
from bot import views
from tests.slack.blockkit import assert_valid_blocks
from tests.slack.conftest import ADMIN, DEV, GUEST, JA, STRANGER
from tests.slack.slackside import Slack, as_text, buttons, plain_spaces, wait_for
from tests.slack.test_console import console
from tests.slack_emulator import SlackEmulator

OPEN, PAID = "INV-2026-000002", "INV-2026-000001"
FLOW = ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]


def upload_flow(emulator: SlackEmulator) -> list[str]:
    """The upload calls the emulator received, in order."""
    return [c.method for c in emulator.calls if c.method in FLOW]


def pdf_text(content: bytes) -> str:
    assert content.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(content))
    return plain_spaces("\n".join(page.extract_text() for page in reader.pages))


def click_download(slack: Slack, user: str, number: str, *, key: str) -> dict[str, Any]:
    """Show ``number`` to ``user``, press its Download PDF button, return the click's answer."""
    shown = slack.ask(user, f"invoice {number}")
    button = buttons(shown)["invoice_pdf"]
    assert button["value"] == number
    response = slack.click(user, button, key=key)
    assert response.status_code == 200
    return slack.answer(key)


def csv_rows(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode("utf-8"))))


# -- Download PDF ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "number", "expected"),
    [
        (DEV, OPEN, ["Invoice number", OPEN, "Total", "1.469,06 €", "15.03.2026"]),
        (ADMIN, PAID, ["Invoice number", PAID, "€11.90", "Paid"]),
    ],
)
def test_download_pdf_uploads_the_invoice_to_the_clickers_dm_in_their_locale(
    slack: Slack, emulator: SlackEmulator, user: str, number: str, expected: list[str]
) -> None:
    answer = click_download(slack, user, number, key="pdf")
    assert answer["response_type"] == "ephemeral"
    assert not answer.get("replace_original"), "the invoice keeps its buttons"
    shown = as_text(answer)
    assert f"{number}.pdf" in shown and "in your direct messages with me" in shown

    assert upload_flow(emulator) == FLOW
    [opened] = emulator.calls_to("conversations.open")
    assert opened.params["users"] == user
    [complete] = emulator.calls_to("files.completeUploadExternal")
    assert complete.params["channel_id"] == f"D{user}"
    [upload] = emulator.uploads()
    assert upload["channel"] == f"D{user}"
    assert upload["filename"] == f"{number}.pdf"
    assert upload["title"] == f"Invoice {number}"
    assert number in upload["initial_comment"]
    text = pdf_text(upload["bytes"])
    for part in expected:
        assert part in text, f"{part!r} not in the PDF:\n{text}"
    [shared] = emulator.messages(f"D{user}")
    assert shared["files"][0]["name"] == f"{number}.pdf"


def test_both_open_and_paid_invoices_offer_download_pdf(slack: Slack) -> None:
    open_invoice = buttons(slack.ask(DEV, f"invoice {OPEN}"))
    assert set(open_invoice) == {"invoice_pdf", "pay_invoice"}
    assert set(buttons(slack.ask(DEV, f"invoice {PAID}"))) == {"invoice_pdf"}


def test_a_pdf_in_japanese_formats_yen_and_dates_for_the_reader(
    slack: Slack, emulator: SlackEmulator
) -> None:
    click_download(slack, JA, "INV-2026-000003", key="ja")
    [upload] = emulator.uploads(JA)
    text = pdf_text(upload["bytes"])
    assert "INV-2026-000003" in text and "¥1,234" in text and "2026/03/08" in text


@pytest.mark.parametrize(
    ("user", "refusal"),
    [
        (STRANGER, "Only members of Acme Inc can see its billing."),
        (GUEST, "Guests cannot see Acme Inc's billing."),
    ],
)
def test_a_click_by_someone_outside_the_organization_uploads_nothing(
    slack: Slack, emulator: SlackEmulator, user: str, refusal: str
) -> None:
    # A member's message forwarded, or a button value replayed: the click is checked again.
    button = buttons(slack.ask(DEV, f"invoice {OPEN}"))["invoice_pdf"]
    assert slack.click(user, button, key="outsider").status_code == 200
    shown = as_text(slack.answer("outsider"))
    assert refusal in shown and "@U0ADMIN" in shown
    assert emulator.uploads() == [] and upload_flow(emulator) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("INV-2099-000001", "There is no invoice `INV-2099-000001`"),
        ("<!channel>", "That button does not carry an invoice number; nothing was sent."),
    ],
)
def test_a_button_with_an_unknown_or_bad_number_is_answered(
    slack: Slack, emulator: SlackEmulator, value: str, expected: str
) -> None:
    forged = {
        "action_id": "invoice_pdf",
        "value": value,
        "text": {"type": "plain_text", "text": "Download PDF"},
    }
    assert slack.click(DEV, forged, key="forged").status_code == 200
    assert expected in as_text(slack.answer("forged"))
    assert emulator.uploads() == []


# -- usage ----------------------------------------------------------------------------------


def test_usage_uploads_one_chart_per_group(slack: Slack, emulator: SlackEmulator) -> None:
    shown = plain_spaces(as_text(slack.ask(DEV, "usage")))
    assert "3 charts, one per group" in shown
    assert "Engineering (`eng`) · 01.03.2026 – 31.03.2026: 100,00 € so far" in shown
    assert "The 3 files are in your direct messages with me." in shown
    uploads = emulator.uploads(f"D{DEV}")
    assert [u["filename"] for u in uploads] == [
        "acme-eng-usage-2026-03-01.png",
        "acme-ops-usage-2026-03-01.png",
        "acme-tokyo-usage-2026-03-01.png",
    ]
    for upload in uploads:
        assert upload["bytes"].startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(upload["bytes"])) as image:
            image.verify()
        with Image.open(io.BytesIO(upload["bytes"])) as image:
            assert (image.format, image.size) == ("PNG", (1200, 600))
    assert uploads[0]["title"] == "Engineering · charges per day"
    # One upload flow for all three: three tickets and uploads, one completion.
    assert upload_flow(emulator) == [FLOW[0]] * 3 + [FLOW[1]] * 3 + [FLOW[2]]


def test_usage_of_one_group_by_dm(slack: Slack, emulator: SlackEmulator) -> None:
    response = slack.dm(ADMIN, "usage ENG")
    assert response.status_code == 200
    messages = wait_for(
        lambda: (m := emulator.messages(f"D{ADMIN}")) and len(m) >= 2 and m,
        what="the chart and the answer in the DM",
    )
    shared, answer = messages
    assert [f["name"] for f in shared["files"]] == ["acme-eng-usage-2026-03-01.png"]
    assert "Engineering (`eng`)" in as_text(answer) and "one chart" in as_text(answer)


def test_usage_of_an_unknown_group_is_refused_and_uploads_nothing(
    slack: Slack, emulator: SlackEmulator
) -> None:
    shown = as_text(slack.ask(DEV, "usage nope"))
    assert "There is no billing group `nope`." in shown and "Groups: eng, ops, tokyo." in shown
    assert emulator.uploads() == []


# -- export ---------------------------------------------------------------------------------


def test_an_admin_exports_the_invoices_as_csv(
    slack: Slack, emulator: SlackEmulator, billed: BillingService
) -> None:
    shown = as_text(slack.ask(ADMIN, "export"))
    assert "`acme-invoices.csv`: 3 invoices, 3 rows (one per line item" in shown
    [upload] = emulator.uploads(f"D{ADMIN}")
    assert upload["filename"] == "acme-invoices.csv"
    documents = billed.export_invoices(org_key="acme")
    assert upload["bytes"].decode("utf-8") == to_csv(documents)
    rows = csv_rows(upload["bytes"])
    assert len(rows) == sum(len(d["lines"]) for d in documents)
    assert {r["number"] for r in rows} == {d["number"] for d in documents}
    feb = next(r for r in rows if r["number"] == OPEN)
    assert (feb["billing_group"], feb["currency"], feb["total"], feb["status"]) == (
        "eng",
        "EUR",
        "1469.06",
        "open",
    )
    assert feb["line_projects"] == "web=3086250000:1234.50"


def test_an_admin_exports_one_group_by_mention(slack: Slack, emulator: SlackEmulator) -> None:
    assert slack.mention(ADMIN, "export Tokyo").status_code == 200
    answer = wait_for(lambda: emulator.ephemerals(ADMIN), what="the ephemeral answer")[0]
    assert answer["channel"] == "C0GENERAL"
    assert "acme-tokyo-invoices.csv" in as_text(answer)
    [upload] = emulator.uploads(f"D{ADMIN}")
    rows = csv_rows(upload["bytes"])
    assert {(r["number"], r["billing_group"], r["total"]) for r in rows} == {
        ("INV-2026-000003", "tokyo", "1234")
    }
    assert not [m for m in emulator.messages("C0GENERAL")], "no file in the channel"


@pytest.mark.parametrize("surface", ["slash", "dm"])
def test_a_member_may_not_export_and_nothing_is_uploaded(
    slack: Slack, emulator: SlackEmulator, surface: str
) -> None:
    answer = slack.ask(DEV, "export") if surface == "slash" else slack.ask_dm(DEV, "export")
    shown = as_text(answer)
    assert "Only organization admins can export invoices." in shown
    assert "Ask @U0ADMIN." in shown
    assert emulator.uploads() == [] and upload_flow(emulator) == []


# -- when Slack refuses the upload ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "failure"),
    [
        ("files.completeUploadExternal", {"error": "internal_error"}),
        ("files.completeUploadExternal", {"status": 500}),
        ("files.getUploadURLExternal", {"error": "file_uploads_disabled"}),
        ("upload", {"status": 500}),
        ("conversations.open", {"error": "missing_scope"}),
    ],
)
def test_a_refused_upload_is_answered_clearly(
    slack: Slack, emulator: SlackEmulator, method: str, failure: dict[str, Any]
) -> None:
    emulator.fail_next(method, **failure)
    shown = as_text(click_download(slack, DEV, OPEN, key="failed"))
    assert "I could not send you the file: Slack did not accept the upload" in shown
    assert "reference `" in shown
    assert "Traceback" not in shown and "direct messages with me" not in shown
    assert emulator.uploads() == []
    # Nothing is stuck: the next click delivers.
    assert "in your direct messages with me" in as_text(
        click_download(slack, DEV, OPEN, key="again")
    )
    assert [u["filename"] for u in emulator.uploads(f"D{DEV}")] == [f"{OPEN}.pdf"]


def test_a_refused_export_upload_is_answered_on_the_slash_command(
    slack: Slack, emulator: SlackEmulator
) -> None:
    emulator.fail_next("files.completeUploadExternal", status=500)
    shown = as_text(slack.ask(ADMIN, "export"))
    assert "I could not send you the file" in shown
    assert emulator.uploads() == []


# -- help and the console -------------------------------------------------------------------


def test_help_lists_the_file_commands(slack: Slack) -> None:
    shown = as_text(slack.ask(DEV, "help"))
    assert "/billing usage [GROUP]" in shown
    assert "`/billing export [GROUP]` — the invoices as a CSV file" in shown
    assert "Download PDF" in shown
    assert "Did you mean `/billing export [GROUP]`?" in as_text(slack.ask(DEV, "exprt"))


def test_the_console_saves_files_in_the_current_directory(
    billed: BillingService, db_url: str, tmp_path: Path
) -> None:
    lines = [f"invoice {OPEN}", "download pdf", "download pdf", "usage eng", "export"]
    done = console(db_url, ADMIN, lines, tmp_path)
    assert done.returncode == 0, done.stderr
    out = plain_spaces(done.stdout)
    assert "[download pdf] [Pay €1,469.06: https://pay.example.test/invoices/" in out
    for name in (f"{OPEN}.pdf", "acme-eng-usage-2026-03-01.png", "acme-invoices.csv"):
        assert f"Saved {tmp_path.resolve() / name}\n" in out
    assert "✗ No invoice is shown to download." in out, "the button was pressed already"
    assert OPEN in pdf_text((tmp_path / f"{OPEN}.pdf").read_bytes())
    with Image.open(tmp_path / "acme-eng-usage-2026-03-01.png") as image:
        assert image.size == (1200, 600)
    documents = billed.export_invoices(org_key="acme")
    assert (tmp_path / "acme-invoices.csv").read_text(encoding="utf-8") == to_csv(documents)
    assert done.stderr == ""


def test_file_answers_are_valid_block_kit_when_empty_or_long() -> None:
    march = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    many = [
        DailyCharges(
            GroupRef(f"g{i}", f"Group <{i}> & co", "EUR"),
            march,
            (date(2026, 3, 1),),
            {"Requests": (Money.of("1.50", "EUR"),)},
        )
        for i in range(400)
    ]
    upload = views.Upload("acme-invoices.csv", "Invoices", b"x")
    replies = [
        views.usage_reply([], Locale.parse("en_US")),
        views.export_reply([], None),
        views.export_reply([{"lines": [{}]}], upload),
        views.delivered(views.usage_reply(many, Locale.parse("de_DE")), "Where the files went."),
        views.upload_failed("abc123"),
    ]
    for reply in replies:
        message = reply.message()
        assert message["text"].strip() and len(message["text"]) <= 3000
        assert len(message["blocks"]) <= 50
        if message["blocks"]:
            assert_valid_blocks(message["blocks"], message["text"][:40])
    long = replies[3].message()
    assert "&lt;1&gt; &amp; co" in long["blocks"][1]["text"]["text"]
    assert long["blocks"][-1]["elements"][0]["text"] == "Where the files went."
    assert "1 invoice, 1 row" in replies[2].text
