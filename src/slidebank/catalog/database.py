"""Engines, sessions and schema migrations for the catalog, on SQLite (embedded) or PostgreSQL.

SQLite needs care to be a good multi-process citizen: foreign keys are off unless asked for, a
reader blocks writers unless the journal is WAL, and a transaction that reads before it writes
fails with "database is locked" instead of waiting when another process wrote in between. So
every SQLite connection enables foreign keys, WAL and a 30 s busy timeout, and connections asked
for with `WRITE_OPTIONS` start with `BEGIN IMMEDIATE`, taking the write lock (and waiting for
it) up front. PostgreSQL needs none of this.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
BEGIN_OPTION = "slidebank_sqlite_begin"
WRITE_OPTIONS: dict[str, Any] = {BEGIN_OPTION: "IMMEDIATE"}
"""Execution options for a write transaction: `engine.execution_options(**WRITE_OPTIONS)`."""


def create_catalog_engine(url: str, **kwargs: Any) -> Engine:
    """An Engine for `url`; plain `postgresql://` URLs get the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's implicit, late BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable with WAL at commit boundaries
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_OPTION)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC: everything is stored in UTC, but SQLite hands datetimes back without a zone."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the catalog returns plain dicts anyway)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration built in code: the migrations travel inside the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Bring the catalog schema up to `revision`; safe to call from several processes at once.

    The migration runs in one transaction: on SQLite that transaction holds the write lock from
    its first statement; on PostgreSQL env.py takes an advisory lock. A second caller waits, then
    finds the schema current and does nothing.
    """
    owned = isinstance(engine_or_url, str)
    engine = create_catalog_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        config = alembic_config()
        with engine.execution_options(**WRITE_OPTIONS).begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if owned:
            engine.dispose()


__all__ = [
    "MIGRATIONS",
    "WRITE_OPTIONS",
    "alembic_config",
    "create_catalog_engine",
    "session_factory",
    "upgrade_schema",
]
