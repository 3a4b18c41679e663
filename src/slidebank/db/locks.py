"""One lock for the writers that must follow each other on PostgreSQL (SQLite's write transaction
already excludes every other writer).

The audit chain's head and the catalog version are both counters that each writer increments in
its transaction. Taking this one transaction-scoped advisory lock before either means writers take
them in one order — no deadlock between a registration (version, then audit entry) and a job
(audit entry, then facts and version) — and the chain never forks.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

WRITERS_LOCK_ID = 0x5A_0D17


def serialise_writers(session: Session) -> None:
    """Wait for the writers' lock; held until this transaction ends (re-entrant within it)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITERS_LOCK_ID})
