"""Locks that hold across every process of a node, on every host that shares its database.

One lock for the writers that must follow each other on PostgreSQL (SQLite's write transaction
already excludes every other writer), and named site-wide locks for long operations (ingest).

The audit chain's head and the catalog version are both counters that each writer increments in
its transaction. Taking this one transaction-scoped advisory lock before either means writers take
them in one order — no deadlock between a registration (version, then audit entry) and a job
(audit entry, then facts and version) — and the chain never forks.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

WRITERS_LOCK_ID = 0x5A_0D17


def serialise_writers(session: Session) -> None:
    """Wait for the writers' lock; held until this transaction ends (re-entrant within it)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITERS_LOCK_ID})


@contextmanager
def site_lock(engine: Engine, name: str, fallback: Path) -> Iterator[None]:
    """Exclusive across every process of the node, held until the block ends.

    On PostgreSQL, a session advisory lock on a connection of its own: processes on other hosts
    sharing the database wait for it, and it is released if the holder dies (the connection drops).
    On SQLite, whose database lives on one host, a file lock at `fallback`.
    """
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
        return
    with open(fallback, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
