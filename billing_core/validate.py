"""Small readers for untrusted JSON: each refusal names the path of the offending value."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing_core.errors import InvalidInput
from billing_core.money import FloatLiteral, parse_decimal
from billing_core.periods import parse_timestamp


class Obj:
    """A JSON object at ``path`` whose keys are checked against what is allowed."""

    def __init__(self, value: object, path: str, *, allowed: set[str], required: set[str]) -> None:
        if not isinstance(value, dict):
            raise InvalidInput(f"expected an object, got {_kind(value)}", path=path or "(top)")
        for key in value:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise InvalidInput(f"unknown key (known: {known})", path=_join(path, key))
        for key in sorted(required):
            if key not in value:
                raise InvalidInput("is required", path=_join(path, key))
        self.data: dict[str, Any] = value
        self.path = path

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, *, max_len: int = 200, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(
                f"expected a non-empty string, got {_kind(value)}", path=self.at(key)
            )
        if len(value) > max_len:
            raise InvalidInput(f"longer than {max_len} characters", path=self.at(key))
        if (why := unstorable(value)) is not None:
            raise InvalidInput(why, path=self.at(key))
        return value

    def opt_text(self, key: str, *, max_len: int = 500) -> str | None:
        return None if self.data.get(key) is None else self.text(key, max_len=max_len)

    def key(self, key: str) -> str:
        value = self.text(key, max_len=64)
        if not all(ch.isalnum() or ch in "-_." for ch in value):
            raise InvalidInput(
                f"{value!r} may only hold letters, digits, '-', '_' and '.'", path=self.at(key)
            )
        return value

    def choice(self, key: str, options: tuple[str, ...], *, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value not in options:
            raise InvalidInput(f"{value!r} is not one of {', '.join(options)}", path=self.at(key))
        assert isinstance(value, str)  # noqa: S101
        return value

    def flag(self, key: str, *, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise InvalidInput(f"expected true or false, got {_kind(value)}", path=self.at(key))
        return value

    def whole(self, key: str, *, minimum: int = 0, maximum: int = 10**9) -> int:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"expected a whole number, got {_kind(value)}", path=self.at(key))
        if not minimum <= value <= maximum:
            raise InvalidInput(f"{value} is not between {minimum} and {maximum}", path=self.at(key))
        return value

    def opt_whole(self, key: str, *, minimum: int = 0) -> int | None:
        return None if self.data.get(key) is None else self.whole(key, minimum=minimum)

    def decimal(self, key: str, *, max_decimals: int | None = None) -> Decimal:
        return parse_decimal(self.data.get(key), path=self.at(key), max_decimals=max_decimals)

    def opt_decimal(self, key: str, *, max_decimals: int | None = None) -> Decimal | None:
        if self.data.get(key) is None:
            return None
        return self.decimal(key, max_decimals=max_decimals)

    def timestamp(self, key: str) -> datetime:
        return parse_timestamp(self.data.get(key), path=self.at(key))

    def opt_timestamp(self, key: str) -> datetime | None:
        return None if self.data.get(key) is None else self.timestamp(key)

    def items(self, key: str) -> Iterator[tuple[str, Any]]:
        """(path, item) for each item of an optional list."""
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise InvalidInput(f"expected a list, got {_kind(value)}", path=self.at(key))
        for index, item in enumerate(value):
            yield f"{self.at(key)}[{index}]", item


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:/-]+")


def _join(path: str, key: str) -> str:
    if not _PLAIN_KEY.fullmatch(key):
        # Any other key is shown quoted and escaped, so a message stays on one line and says
        # exactly which key it means (a newline or a control character included).
        return f"{path}[{json.dumps(key)}]" if path else f"[{json.dumps(key)}]"
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float | FloatLiteral):
        return f"the number {value!r} (write decimals as strings)"
    if isinstance(value, int | str):
        return repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def unstorable(value: str) -> str | None:
    """Why a database cannot keep ``value`` as it is (PostgreSQL refuses both), or None."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which cannot be stored"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (such as \\ud800), which is not valid Unicode"
    return None
