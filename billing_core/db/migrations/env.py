"""Alembic environment: the URL comes from the caller, never from a file with secrets."""

from __future__ import annotations

from alembic import context

from billing_core.db.engine import make_engine
from billing_core.db.tables import Base

config = context.config
url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL given to the migrations")

engine = make_engine(url)
with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch migrations copy a table and drop the old one, which its children's foreign
        # keys would refuse; SQLite only turns the checks off outside a transaction, so here,
        # before the first statement begins one. They are checked once the migration is done.
        driver = connection.connection.driver_connection
        assert driver is not None  # noqa: S101
        driver.execute("PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise RuntimeError(f"the migration left rows without their parent: {broken[:5]}")
    if sqlite:
        driver.execute("PRAGMA foreign_keys=ON")
engine.dispose()
