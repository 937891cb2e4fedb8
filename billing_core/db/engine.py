"""Engines and transactions for SQLite (trial) and PostgreSQL (production)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, bindparam, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker

from billing_core.db.types import register_sqlite_functions

# Connections kept open per process (PostgreSQL): as many as ``serve`` has threads answering
# Slack (bot.server.LazyWork), so that eight requests at once do not open and close a
# connection each past SQLAlchemy's default of five (a new backend process every time:
# measured with 8 clients, 85 connections opened in 640 requests, 17 with this). The pool
# opens them only when needed; a CLI command still uses one or two.
POOL_SIZE = 16

# Pages of a table not known to be all-visible past which an import vacuums it (see
# ``Database.refresh_visibility_after``): 4 MB, some 45,000 usage events. A vacuum of a large
# table costs 0.1-0.2 s however few rows are new, about a second for 5,000,000 of them; an
# import takes about three seconds for 45,000.
VISIBILITY_AFTER = 512


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the per-backend settings the billing core relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)
        _configure_sqlite(engine)
        return engine
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": POOL_SIZE}
    return create_engine(url, pool_pre_ping=True, **{**options, **kwargs})


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are opened by hand below, as BEGIN IMMEDIATE: a writer takes the lock up
        # front instead of failing half way when another process writes (SQLite's deadlock case).
        dbapi_connection.isolation_level = None
        register_sqlite_functions(dbapi_connection)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The engine plus a session factory; ``transaction()`` is the unit of work."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits together or not at all."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only.

        PostgreSQL: without BEGIN and COMMIT (autocommit). At READ COMMITTED each statement
        sees its own snapshot inside a transaction too, so the transaction would only add two
        round trips to every Slack read; nothing here locks or writes. SQLite: a transaction.
        """
        if self.dialect != "postgresql":
            with self.transaction() as session:
                yield session
            return
        with self._sessions() as session:
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    def refresh_visibility(self, table: str) -> None:
        """PostgreSQL: VACUUM ``table``, skipping it if another vacuum holds it.

        After a big import the new rows are not yet marked all-visible, so index-only scans
        still read the table row by row; autovacuum would get there within minutes, a billing
        run on the 1st cannot wait. Costs one pass over the pages changed since the last
        vacuum; nothing is locked against readers or writers. SQLite: nothing to do.

        No ANALYZE here: the imports that wrote the rows refreshed the table's statistics
        (``refresh_statistics``), and sampling it again cost a quarter of a second for nothing.
        """
        if self.dialect != "postgresql":
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM (SKIP_LOCKED) {table}")

    def refresh_visibility_after(self, table: str) -> bool:
        """PostgreSQL: :meth:`refresh_visibility` of ``table`` once VISIBILITY_AFTER of its pages
        or more are not known to be all-visible; True when it vacuumed. SQLite: nothing.

        Until then each row read through an index from such a page costs a visit of the table
        itself: at full scale an organization's ``/billing balance`` read its 1,250 events of
        the month in 17 ms instead of 2 ms (``bench/RESULTS.md``). Autovacuum gets there too
        where it is on, in its own time.

        The count is the table's size on disk now less the pages the last VACUUM or ANALYZE
        found all-visible: exact after an import (it only adds pages), never a wait on the
        server's statistics (the insert counters reach them up to seconds late).
        """
        if self.dialect != "postgresql":
            return False
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            unseen = conn.execute(text(_NOT_ALL_VISIBLE), {"t": table}).scalar_one()
        if unseen < VISIBILITY_AFTER:
            return False
        self.refresh_visibility(table)
        return True

    def refresh_statistics(self, written: Mapping[str, int]) -> list[str]:
        """PostgreSQL: ANALYZE each table of ``written`` (table -> rows just written) whose
        statistics are stale: the rows written exceed autovacuum's analyze threshold (50 rows
        + 10 % of the table as last counted), or the table has grown by more than a tenth
        since it was last counted (many small writes add up); returns the tables analyzed.
        SQLite: nothing.

        The planner picks the plans of /billing and of the next run from these statistics. A
        bulk write (an import, a billing run, a load) can multiply a table; autovacuum would
        analyze it within a minute or so where it is on and not busy, but where it is off, or
        for a database cloned from a template (its activity counters start at zero), the
        tables keep the row counts of their birth and every read is planned blind: seq scans
        that grow with the data. The command that made the change knows it made one.
        """
        if self.dialect != "postgresql":
            return []
        candidates = [name for name, rows in written.items() if rows > 0]
        if not candidates:
            return []
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # The size on disk is read now (no statistics delay), so growth since the last
            # count is seen whichever command or process made it.
            found = conn.execute(
                text(
                    "SELECT n, c.reltuples, c.relpages, "
                    "pg_relation_size(c.oid) / current_setting('block_size')::int "
                    "FROM unnest(CAST(:names AS text[])) AS n "
                    "JOIN pg_class c ON c.oid = to_regclass(n)"
                ),
                {"names": candidates},
            ).all()
            stale = [
                name
                for name, rows, pages, pages_now in found
                if written[name] > 50 + 0.1 * max(float(rows), 0.0) or pages_now > 1.1 * pages + 8
            ]
        if len(stale) > 1:
            # One connection per table, two at a time: ANALYZE works on one core, and a billing
            # run ends with four tables to count while the client has nothing else to do.
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="analyze") as pool:
                list(pool.map(self._analyze, stale))
        elif stale:
            self._analyze(stale[0])
        return stale

    def _analyze(self, table: str) -> None:
        # The name comes from the caller's table list, never from input; SKIP_LOCKED: a table
        # another ANALYZE or VACUUM holds is being refreshed already.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {table}")


_NOT_ALL_VISIBLE = (
    "SELECT greatest(pg_relation_size(c.oid) / current_setting('block_size')::int"
    " - c.relallvisible, 0) FROM pg_class c WHERE c.oid = to_regclass(:t)"
)


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT that understands ON CONFLICT on both backends."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def among(column: QueryableAttribute[int], ids: Collection[int]) -> ColumnElement[bool]:
    """``column IN ids``, the ids written into the statement as integer literals."""
    # A list of hundreds of ids bound one parameter each costs ~3 ms of client CPU per
    # statement (SQLAlchemy expands it, psycopg parses the long text anew: too long for its
    # cache); written inline, a sixth of that, on either backend.
    return column.in_(bindparam(None, list(ids), expanding=True, literal_execute=True))


def ids_param(name: str) -> BindParameter[Any]:
    """A placeholder for a list of ids given at execution, written into the statement as
    integer literals like :func:`among`'s: a statement built once, for ``IN`` over any ids."""
    return bindparam(name, expanding=True, literal_execute=True)


def copy_rows(connection: Connection, statement: str, rows: Iterable[Sequence[Any]]) -> None:
    """PostgreSQL: stream ``rows`` through ``COPY ... FROM STDIN`` on the connection's
    transaction; a refused row raises ``DBAPIError`` like any statement would."""
    driver = connection.connection.driver_connection
    assert driver is not None  # noqa: S101
    import psycopg  # noqa: PLC0415 - PostgreSQL only

    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
    except psycopg.Error as exc:  # a duplicate key, or a NUL character PostgreSQL refuses
        raise DBAPIError(statement, None, exc) from None
