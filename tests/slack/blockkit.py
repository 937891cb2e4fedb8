"""Block Kit validation against the shared JSON Schema (``../shared/slack`` from the project).

The schema lives outside the repository; without it these checks skip on a developer's
machine but fail in CI (CI=true), like the PostgreSQL tests.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.slack_emulator import SlackEmulator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = PROJECT_ROOT.parent / "shared" / "slack" / "block-kit.schema.json"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@functools.cache
def _schema() -> dict[str, Any] | None:
    if not SCHEMA_PATH.is_file():
        return None
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def require_schema() -> dict[str, Any]:
    """The schema; skip (locally) or fail (in CI) when it is missing."""
    schema = _schema()
    if schema is None:
        message = f"Block Kit schema not found at {SCHEMA_PATH}"
        if IN_CI:
            pytest.fail(message + " (CI must validate Block Kit)", pytrace=False)
        pytest.skip(message)
    return schema


@functools.cache
def _validators() -> tuple[Draft202012Validator, Draft202012Validator]:
    schema = require_schema()
    home = {"$ref": "#/$defs/home_view", "$defs": schema["$defs"]}
    return Draft202012Validator(schema), Draft202012Validator(home)


def block_errors(blocks: list[dict[str, Any]]) -> list[str]:
    blocks_validator, _ = _validators()
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in blocks_validator.iter_errors(blocks)
    ]


def assert_valid_blocks(blocks: list[dict[str, Any]], where: str = "message") -> None:
    errors = block_errors(blocks)
    assert not errors, f"{where} is not valid Block Kit:\n" + "\n".join(errors[:10])


def assert_valid_home(view: dict[str, Any]) -> None:
    _, home_validator = _validators()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in home_validator.iter_errors(view)]
    assert not errors, "home view is not valid Block Kit:\n" + "\n".join(errors[:10])


def sent_payloads(emu: SlackEmulator) -> list[tuple[str, dict[str, Any]]]:
    """Everything with blocks the bot sent: messages, ephemerals, responses, Home views."""
    found = []
    for method in ("chat.postMessage", "chat.postEphemeral", "chat.update", "response_url", "ack"):
        found += [(method, call.params) for call in emu.calls_to(method)]
    found += [("views.publish", call.params) for call in emu.calls_to("views.publish")]
    return found


def assert_everything_sent_is_valid(emu: SlackEmulator) -> int:
    """Validate every message and view the bot sent; returns how many were checked."""
    require_schema()
    checked = 0
    for method, params in sent_payloads(emu):
        if method == "views.publish":
            assert_valid_home(params["view"])
        else:
            assert params.get("text"), f"{method} without a text fallback: {params}"
            if params.get("blocks"):
                assert_valid_blocks(params["blocks"], method)
        checked += 1
    return checked
