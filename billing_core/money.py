"""Exact money: a Decimal amount and an ISO 4217 currency, rounded in one place."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from babel.numbers import list_currencies

from billing_core.errors import CurrencyMismatch, InvalidInput

# ISO 4217 minor-unit exponents that are not 2. CLDR (and so Babel) differs from ISO for a few
# currencies (IQD, for one), and invoices follow ISO, so the table is kept here, explicitly.
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}
_KNOWN = frozenset(list_currencies())

MAX_UNIT_PRICE_DECIMALS = 12
# Plain decimal notation only: no exponent, no underscores, no "+", no spaces, no NaN.
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def check_currency(code: object, *, path: str | None = None) -> str:
    """Return ``code`` if it is an ISO 4217 code Babel knows, else refuse it."""
    if not isinstance(code, str) or code not in _KNOWN or len(code) != 3 or not code.isupper():
        raise InvalidInput(f"{code!r} is not an ISO 4217 currency code", path=path)
    return code


def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point of the currency's minor unit (EUR 2, JPY 0, KWD 3)."""
    return _EXPONENTS.get(currency, 2)


def round_to_minor_unit(amount: Decimal, currency: str) -> Decimal:
    """The one rounding rule: half up, to the currency's minor unit."""
    quantum = _QUANTA.get(currency)
    if quantum is None:
        quantum = _QUANTA[currency] = Decimal(1).scaleb(-minor_unit_exponent(currency))
    return amount.quantize(quantum, ROUND_HALF_UP)


# The minor unit as a Decimal (0.01), by currency: every amount of an invoice is rounded or
# printed through here, tens of times per invoice, and building the quantum cost as much as
# the quantize itself.
_QUANTA: dict[str, Decimal] = {}


class FloatLiteral:
    """A JSON number with a fraction or exponent, kept as written so it can be refused.

    Parse JSON with ``json.loads(text, parse_float=FloatLiteral)``: the value then reaches the
    validation that knows its path, instead of becoming a binary float.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def parse_decimal(
    value: object,
    *,
    path: str | None = None,
    max_decimals: int | None = None,
    allow_negative: bool = False,
) -> Decimal:
    """Parse a decimal string (never a float) into a finite Decimal, or refuse it."""
    if isinstance(value, FloatLiteral | float):
        raise InvalidInput(
            f'the number {value!r} must be written as a decimal string ("{value!r}")', path=path
        )
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(
            f'expected a decimal string such as "12.30", got {type(value).__name__}', path=path
        )
    text = str(value)
    if not _DECIMAL.fullmatch(text):
        raise InvalidInput(f'{value!r} is not a decimal number such as "12.30"', path=path)
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise InvalidInput(f"{value!r} is not a decimal number", path=path) from None
    if number < 0 and not allow_negative:
        raise InvalidInput(f"{value!r} is negative", path=path)
    _, _, fraction = text.partition(".")
    if max_decimals is not None and len(fraction.rstrip("0")) > max_decimals:
        raise InvalidInput(f"{value!r} has more than {max_decimals} decimal places", path=path)
    return number


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount in one currency; adding other currencies raises."""

    amount: Decimal
    currency: str

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal(0), currency)

    @classmethod
    def of(cls, amount: Decimal | int | str, currency: str) -> Money:
        """Money rounded to the currency's minor unit."""
        return cls(round_to_minor_unit(Decimal(amount), currency), currency)

    def rounded(self) -> Money:
        return Money(round_to_minor_unit(self.amount, self.currency), self.currency)

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money | int) -> Money:
        if isinstance(other, int) and other == 0:  # lets sum() start from 0
            return self
        if not isinstance(other, Money):
            return NotImplemented
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    __radd__ = __add__

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def min(self, other: Money) -> Money:
        return self if self <= other else other

    def is_zero(self) -> bool:
        return self.amount == 0

    def to_str(self) -> str:
        """Major units with exactly the currency's decimals: "12.30", JPY "1230"."""
        return str(round_to_minor_unit(self.amount, self.currency))

    def __str__(self) -> str:
        return f"{self.to_str()} {self.currency}"


def total(amounts: Iterable[Money], currency: str) -> Money:
    """Sum that is well defined for an empty iterable."""
    return sum(amounts, Money.zero(currency))
