"""Shared fixtures: a fresh database per test on SQLite and on a real PostgreSQL.

PostgreSQL comes from BILLING_TEST_POSTGRES_URL (default: the local server on 127.0.0.1:5432).
Without one, its tests skip on a developer's machine but fail in CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_core.db.engine import Database
from billing_core.db.migrate import upgrade
from billing_core.services import BillingService

PG_ADMIN_URL = os.environ.get(
    "BILLING_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


_PG_PROBLEM: str | None | bool = False  # False: not probed yet


def require_postgres() -> None:
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _pg_reachable()
    if _PG_PROBLEM:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {_PG_PROBLEM}"
        if IN_CI:
            pytest.fail(message + " (CI must run the PostgreSQL tests)", pytrace=False)
        pytest.skip(message)


def _pg_url(name: str) -> str:
    return sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that tests clone (CREATE DATABASE ... TEMPLATE)."""
    require_postgres()
    name = f"billing_tpl_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    upgrade(_pg_url(name))
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def new_database_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated, empty database of ``kind``, dropped after the test."""
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / f"billing-{uuid.uuid4().hex[:6]}.db"
        shutil.copy(template, target)
        return f"sqlite:///{target}"
    template_name: str = request.getfixturevalue("pg_template")
    name = f"billing_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    request.addfinalizer(drop)
    return _pg_url(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL, once on SQLite and once on PostgreSQL."""
    return new_database_url(request.param, request, tmp_path)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh PostgreSQL database URL (for tests that only make sense there)."""
    require_postgres()
    return new_database_url("postgresql", request, tmp_path)


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    """A plain engine on the test's PostgreSQL database: the test's own connections."""
    created = sa.create_engine(pg_url)
    yield created
    created.dispose()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def service(db: Database) -> BillingService:
    return BillingService(db, invoice_prefix="INV")
