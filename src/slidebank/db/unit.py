"""The unit of work: one session per operation, and one transaction per change.

A service asks for `read()` to look and `write()` to change. A write session begins with the
database's write lock held (SQLite `BEGIN IMMEDIATE`; PostgreSQL serialises where it must with
advisory locks), commits when the block ends and rolls back if it raises — so a change and the
audit entry that records it, written in the same session, commit together or not at all.

Use cases that span services (an erasure touches the catalog, jobs, pseudonyms and the audit) open
one `write()` and hand its session to each service's session-level functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from slidebank.db.engine import WRITE_OPTIONS


class UnitOfWork:
    """Sessions over one engine; objects stay readable after commit (services return plain values)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        self._write = sessionmaker(bind=engine.execution_options(**WRITE_OPTIONS), expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; nothing it does is committed."""
        with self._read() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose changes commit together when the block ends, or not at all."""
        with self._write.begin() as session:
            yield session
