"""The bottom of the package graph: engines, the tables, migrations and the unit of work."""

from slidebank.db.engine import WRITE_OPTIONS, create_database_engine
from slidebank.db.schema import upgrade_schema
from slidebank.db.unit import UnitOfWork

__all__ = ["WRITE_OPTIONS", "UnitOfWork", "create_database_engine", "upgrade_schema"]
