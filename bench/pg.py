"""PostgreSQL databases for one benchmark run: created fresh, cloned per run, dropped at the end."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _dsn(name: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


class Cluster:
    """The databases of one run, all named ``bench_<id>_*``; ``drop_all`` removes them."""

    def __init__(self) -> None:
        self.prefix = f"bench_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def url(self, name: str) -> str:
        """The SQLAlchemy URL the product reads from DATABASE_URL."""
        return _dsn(name).replace("postgresql://", "postgresql+psycopg://", 1)

    def dsn(self, name: str) -> str:
        return _dsn(name)

    def _admin(self, statement: sql.Composable) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(statement)

    def create(self, suffix: str, *, template: str | None = None) -> str:
        name = self.name(suffix)
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if template is None:
            self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            self._admin(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        if name not in self.created:
            self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(reversed(self.created)):
            self.drop(name)

    @contextmanager
    def connect(self, name: str, **kwargs: Any) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.dsn(name), **kwargs) as conn:
            yield conn

    def scalar(self, name: str, query: str, params: tuple[Any, ...] = ()) -> Any:
        with self.connect(name) as conn:
            row = conn.execute(query.encode(), params).fetchone()  # type: ignore[call-overload]
            return None if row is None else row[0]

    def rows(self, name: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.connect(name) as conn:
            return list(conn.execute(query.encode(), params))  # type: ignore[call-overload]

    def execute(self, name: str, query: str) -> None:
        with self.connect(name, autocommit=True) as conn:
            conn.execute(query.encode())  # type: ignore[call-overload]


def server_version() -> str:
    with psycopg.connect(ADMIN_DSN) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"
