"""``billing-bot console``: the /billing surface on stdin and stdout, without Slack.

Files that Slack would upload to the asker (invoice PDFs, usage charts, the export) are saved
in the current directory instead, and their paths printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from billing_core.errors import InvalidInput
from bot import views
from bot.commands import strip_invocation
from bot.handlers import Asker, Handlers, Outcome
from bot.textview import render

QUIT = frozenset({"quit", "exit", r"\q"})
# The labels of our answerable buttons, so a late "confirm" is not read as a subcommand.
BUTTON_WORDS = frozenset({"confirm", "cancel"})
DOWNLOAD_WORDS = frozenset({"download pdf"})


def run_console(
    handlers: Handlers,
    asker: Asker,
    *,
    stdin: TextIO,
    stdout: TextIO,
    interactive: bool = False,
    files_dir: Path | None = None,
) -> int:
    """Answer each line like ``/billing`` would; type a button's label to press it.

    Files are saved in ``files_dir`` (default: the current directory).
    """
    command = handlers.command_name
    pending: dict[str, tuple[str, str]] = {}  # typed label -> (action_id, value)
    if interactive:
        print(
            f"Billing console for {asker.user_id} in {asker.team_id}. "
            f"Type `help`, or quit with Ctrl-D.",
            file=stdout,
        )
    while True:
        if interactive:
            print("billing> ", end="", file=stdout, flush=True)
        raw = stdin.readline()
        if not raw:
            break
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.casefold() in QUIT:
            break
        if not interactive:
            print(f"> {line}", file=stdout)  # a transcript reads better with the question
        word = line.casefold()
        if word in pending:
            action_id, value = pending[word]
            outcome = handlers.button(asker, action_id, value)
        elif word in BUTTON_WORDS:
            outcome = Outcome(views.refusal(InvalidInput(f"No question is waiting for `{word}`.")))
        elif word in DOWNLOAD_WORDS:
            outcome = Outcome(
                views.refusal(
                    InvalidInput(
                        "No invoice is shown to download.",
                        hint="`invoice NUMBER` shows one, with its Download PDF button.",
                    )
                )
            )
        else:
            outcome = handlers.command(asker, strip_invocation(line, command=command))
        pending = _buttons(outcome)
        print(render(outcome.reply), file=stdout)
        if outcome.files is not None:
            _save(outcome.files, files_dir or Path.cwd(), stdout)
        print(file=stdout, flush=True)
    return 0


def _save(files: views.Files, directory: Path, stdout: TextIO) -> None:
    """Write each file into ``directory`` (replacing an older copy) and print its path."""
    for upload in files.uploads:
        # Names are built from keys and numbers, but never let one leave the directory.
        path = directory / Path(upload.filename).name
        try:
            path.write_bytes(upload.content)
        except OSError as exc:
            print(f"✗ Could not save {upload.filename}: {exc.strerror or exc}", file=stdout)
            continue
        print(f"Saved {path.resolve()}", file=stdout)


def _buttons(outcome: Outcome) -> dict[str, tuple[str, str]]:
    """The buttons of a reply, keyed by the word that presses them."""
    pressed = {}
    for button in outcome.reply.buttons():
        label = button.text.text.casefold() if button.text else ""
        if label and button.action_id:
            pressed[label] = (button.action_id, button.value or "")
    return pressed
