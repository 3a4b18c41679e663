"""Which database the suite's nodes use: SQLite by default, PostgreSQL with SLIDEBANK_TEST_DATABASE=postgresql.

`make test` runs the suite twice, once per database: every node a test opens (the `node` fixture, the
`slidebank` processes `run_cli` and `running_server` start, nodes built by hand) asks `database_url`
for its home's database. On PostgreSQL each home gets its own empty database on the session's private
cluster (one per xdist worker), made at first use, so tests stay as independent as separate SQLite
files. Tests that look inside the catalog use `catalog_sql`, which speaks to either.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine

from postgres import create_database, dump, dump_restore
from slidebank.node import Node, NodeSettings

POSTGRESQL = os.environ.get("SLIDEBANK_TEST_DATABASE", "sqlite") == "postgresql"

_server: list[str] = []  # the session's PostgreSQL server, set by conftest's fixture
_by_home: dict[Path, str] = {}


def use_server(url: str) -> None:
    _server[:] = [url]


def database_url(home: Path) -> str:
    """The catalog database of the node whose folder is `home`."""
    if not POSTGRESQL:
        return f"sqlite:///{home / 'catalog.sqlite'}"
    key = home.resolve()
    if key not in _by_home:
        if not _server:
            raise RuntimeError("SLIDEBANK_TEST_DATABASE=postgresql but no PostgreSQL server was started")
        _by_home[key] = create_database(_server[0])
    return _by_home[key]


def database_env(home: Path) -> dict[str, str]:
    """The environment a `slidebank` process needs to open `home`'s database."""
    return {"SLIDEBANK_DATABASE_URL": database_url(home)} if POSTGRESQL else {}


def copy_database(source_home: Path, target_home: Path) -> None:
    """Give `target_home` a consistent copy of `source_home`'s catalog, while the source may be in use."""
    if not POSTGRESQL:
        with contextlib.closing(sqlite3.connect(source_home / "catalog.sqlite")) as source, \
                contextlib.closing(sqlite3.connect(target_home / "catalog.sqlite")) as copy:
            source.backup(copy)
        return
    dump_restore(database_url(source_home), database_url(target_home))


@contextmanager
def catalog_sql(home: Path) -> Iterator[Connection]:
    """A connection to `home`'s catalog in one transaction, for tests that read or tamper with rows."""
    engine = create_engine(database_url(home))
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def in_seconds(seconds: int) -> str:
    """SQL for "now plus `seconds`" in the catalog's own clock, as stored timestamps are compared."""
    if POSTGRESQL:
        return f"now() + interval '{int(seconds)} seconds'"
    return f"datetime('now', '+{int(seconds)} seconds')"


def catalog_bytes(home: Path) -> bytes:
    """Everything the catalog database holds, as bytes, to check that a value is not stored in the clear:
    the SQLite file and its write-ahead log, or a dump of the PostgreSQL database."""
    if not POSTGRESQL:
        return b"".join(path.read_bytes() for path in (home / "catalog.sqlite", home / "catalog.sqlite-wal")
                        if path.exists())
    return dump(database_url(home))


def refuse_inserts(home: Path, table: str, message: str, when: str | None = None) -> None:
    """Make the database refuse inserts into `table` (those where `when` holds of NEW, or all): a failing
    disk or audit store, as the database itself would report it."""
    with catalog_sql(home) as sql:
        if POSTGRESQL:
            sql.exec_driver_sql(f"CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS "
                                f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$")
            condition = f"WHEN ({when}) " if when else ""
            sql.exec_driver_sql(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW "
                                f"{condition}EXECUTE FUNCTION refuse_{table}()")
        else:
            condition = f"WHEN {when} " if when else ""
            sql.exec_driver_sql(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} {condition}"
                                f"BEGIN SELECT RAISE(ABORT, '{message}'); END")


def allow_inserts(home: Path, table: str) -> None:
    with catalog_sql(home) as sql:
        if POSTGRESQL:
            sql.exec_driver_sql(f"DROP TRIGGER refuse_{table} ON {table}")
            sql.exec_driver_sql(f"DROP FUNCTION refuse_{table}()")
        else:
            sql.exec_driver_sql(f"DROP TRIGGER refuse_{table}")


def open_node(home: Path, *, migrate: bool = True) -> Node:
    """The node at `home`, as `Node.open` opens it from the environment, on the pass's database."""
    return Node(replace(NodeSettings.from_environment(home), database_url=database_url(home)), migrate=migrate)


def point_environment_at(home: Path, monkeypatch: Any) -> None:
    """Set this process's environment as a user of `home`'s node would (for `Client.local`, which
    opens the node from the environment)."""
    for name, value in database_env(home).items():
        monkeypatch.setenv(name, value)
