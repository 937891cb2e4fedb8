"""Refusals of untrusted JSON name their value on one line, whatever its keys hold."""

from __future__ import annotations

import pytest

from billing_core.errors import InvalidInput
from billing_core.validate import Obj


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("colour", "doc.colour"),
        ("requests.GET", "doc.requests.GET"),
        ("\n", 'doc["\\n"]'),
        ("a b", 'doc["a b"]'),
        ("\u2028", 'doc["\\u2028"]'),  # a line separator to str.splitlines()
        ("ключ", 'doc["\\u043a\\u043b\\u044e\\u0447"]'),
    ],
)
def test_an_unknown_key_is_named_on_one_line(key: str, shown: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        Obj({key: 1}, "doc", allowed={"key"}, required=set())
    message = str(refused.value)
    assert message.startswith(f"{shown}: unknown key")
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("value", "why"),
    [("a\x00b", "NUL character"), ("a\ud800", "lone surrogate")],
)
def test_text_a_database_cannot_store_is_refused(value: str, why: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        Obj({"name": value}, "doc", allowed={"name"}, required={"name"}).text("name")
    assert str(refused.value).startswith("doc.name: contains a") and why in str(refused.value)
