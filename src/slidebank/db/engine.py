"""Database engines for the node, on SQLite (embedded) or PostgreSQL.

SQLite needs care to be a good multi-process citizen: foreign keys are off unless asked for, a
reader blocks writers unless the journal is WAL, and a transaction that reads before it writes
fails with "database is locked" instead of waiting when another process wrote in between. So
every SQLite connection enables foreign keys, WAL and a 30 s busy timeout, and connections asked
for with `WRITE_OPTIONS` start with `BEGIN IMMEDIATE`, taking the write lock (and waiting for
it) up front. PostgreSQL needs none of this.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
BEGIN_OPTION = "slidebank_sqlite_begin"
WRITE_OPTIONS: dict[str, Any] = {BEGIN_OPTION: "IMMEDIATE"}
"""Execution options for a write transaction: `engine.execution_options(**WRITE_OPTIONS)`."""


def create_database_engine(url: str, **kwargs: Any) -> Engine:
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


__all__ = ["WRITE_OPTIONS", "create_database_engine"]
