"""Schema migrations (Alembic), run from code: the migrations travel inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from slidebank.db.engine import WRITE_OPTIONS, create_database_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


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
    engine = create_database_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        config = alembic_config()
        with engine.execution_options(**WRITE_OPTIONS).begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if owned:
            engine.dispose()
