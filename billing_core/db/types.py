"""Column types that keep money exact and time zones attached on SQLite and PostgreSQL.

SQLite has no decimal type (SQLAlchemy's Numeric would store a float there), so decimals are
stored as text and summed by ``dsum``/``dmax`` aggregates written in Python with Decimal.
PostgreSQL uses its own exact ``numeric`` and ``sum``/``max``.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import TypeDecorator, TypeEngine


class Dec(TypeDecorator[Decimal]):
    """An exact decimal: PostgreSQL ``numeric`` (unconstrained), SQLite canonical text."""

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String())
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            value = Decimal(value)
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes only; stored in UTC, returned aware in UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(DateTime(timezone=dialect.name != "sqlite"))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} refused: every datetime must be aware")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class dec_sum(GenericFunction[Decimal]):  # noqa: N801 - SQL function naming
    """Exact SUM over a Dec column."""

    type = Dec()
    inherit_cache = True
    name = "dec_sum"


class dec_max(GenericFunction[Decimal]):  # noqa: N801
    """Exact MAX over a Dec column."""

    type = Dec()
    inherit_cache = True
    name = "dec_max"


@compiles(dec_sum)
def _sum_default(element: Any, compiler: Any, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(dec_sum, "sqlite")
def _sum_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"dsum({compiler.process(element.clauses, **kw)})"


@compiles(dec_max)
def _max_default(element: Any, compiler: Any, **kw: Any) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


@compiles(dec_max, "sqlite")
def _max_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"dmax({compiler.process(element.clauses, **kw)})"


class _DecimalSum:
    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = Decimal(value) + (self.total or 0)

    def finalize(self) -> str | None:
        return None if self.total is None else str(self.total)


class _DecimalMax:
    def __init__(self) -> None:
        self.best: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            number = Decimal(value)
            if self.best is None or number > self.best:
                self.best = number

    def finalize(self) -> str | None:
        return None if self.best is None else str(self.best)


def register_sqlite_functions(connection: sqlite3.Connection) -> None:
    connection.create_aggregate("dsum", 1, _DecimalSum)  # type: ignore[arg-type]
    connection.create_aggregate("dmax", 1, _DecimalMax)  # type: ignore[arg-type]
