"""Alembic environment of the node's database; driven from code by `slidebank.db.schema.upgrade_schema`.

A connection handed over in `config.attributes["connection"]` is used as is (its transaction is
the caller's); otherwise `sqlalchemy.url` is opened with the catalog's engine settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from slidebank.db.engine import WRITE_OPTIONS, create_database_engine
from slidebank.db.models import Base  # every table, for autogenerate and the schema test

# Any stable 64-bit number: serialises concurrent migrations of the same PostgreSQL database.
MIGRATION_LOCK_ID = 0x51_1DE_BA_4C


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no database: hand over a connection or set sqlalchemy.url")
    engine = create_database_engine(url)
    try:
        with engine.execution_options(**WRITE_OPTIONS).connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
