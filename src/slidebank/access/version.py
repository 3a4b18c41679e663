"""The governance version: how every process learns, on its next request, that access changed.

Services call `bump(session)` inside the transaction that changes who may read what (grants,
revocations, policies, committees, stewards, accounts, tokens, sessions, erasure), so the new
number is visible exactly when the change is. `GovernanceWatch.current()` reads it on a dedicated
connection in a few microseconds (SQLite) — cheap enough for every request, tile requests included.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from slidebank.db.engine import create_database_engine
from slidebank.db.models import GovernanceState

STATE_ROW = 1
_READ_VERSION = "SELECT version FROM governance_state WHERE id = 1"


def bump(session: Session) -> None:
    """Make every process drop what it cached about access, once this transaction commits."""
    changed = session.execute(update(GovernanceState).where(GovernanceState.id == STATE_ROW)
                              .values(version=GovernanceState.version + 1))
    if not getattr(changed, "rowcount", 0):  # a node created before the row existed
        session.add(GovernanceState(id=STATE_ROW, version=1))
        session.flush()


def current_in(session: Session) -> int:
    return int(session.scalar(select(GovernanceState.version).where(GovernanceState.id == STATE_ROW)) or 0)


class GovernanceWatch:
    """Reads the version on its own connection, outside any pool: a held pooled connection per
    thread would starve the pool, and an ORM session costs ten times the query."""

    def __init__(self, engine: Engine) -> None:
        self._url = engine.url
        self._lock = threading.Lock()
        self._connection: Any = None
        self._engine: Engine | None = None

    def current(self) -> int:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._connection is None:
                        self._connection = self._connect()
                    cursor = self._connection.cursor()
                    try:
                        cursor.execute(_READ_VERSION)
                        row = cursor.fetchone()
                    finally:
                        cursor.close()
                    return int(row[0]) if row else 0
                except Exception:  # the server went away: reconnect once, then let it raise
                    self._drop()
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _connect(self) -> Any:
        if self._engine is None:
            self._engine = create_database_engine(self._url.render_as_string(hide_password=False),
                                                  poolclass=NullPool)
        connection = self._engine.raw_connection()
        driver = connection.driver_connection
        if self._engine.dialect.name == "postgresql" and driver is not None:
            driver.autocommit = True  # each read sees the latest commit, and no transaction stays open
        return connection

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
        self._connection = None

    def close(self) -> None:
        with self._lock:
            self._drop()
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
