"""Inserting many rows at driver speed, for bulk loads and derived indexes."""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from sqlalchemy import ColumnElement, Table, any_, bindparam, func, insert, literal, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from slidebank.db.models.base import MANY_DEFAULTS, Base


def among(dialect: str, column: Any, values: list[Any]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `= ANY(array)`, one parameter instead of thousands
    (psycopg spends more time splitting a query of 1,000 placeholders than the server runs it)."""
    if dialect == "postgresql":
        return column == any_(literal(values, ARRAY(column.type)))
    return column.in_(values)


def allocate_ids(session: Session, target: type[Base] | Table, count: int) -> list[int]:
    """Primary keys for `count` rows about to be inserted, so that a bulk load knows the ids it
    writes instead of reading them back. PostgreSQL draws them from the column's sequence (safe
    beside concurrent writers); SQLite continues after the highest id, safe because a write
    transaction there holds the database's only write lock (`BEGIN IMMEDIATE`)."""
    if count <= 0:
        return []
    table = target if isinstance(target, Table) else target.metadata.tables[target.__tablename__]
    if session.get_bind().dialect.name == "postgresql":
        return list(session.scalars(text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) "
                                         "FROM generate_series(1, :count)"), {"table": table.name, "count": count}))
    top = session.scalar(select(func.max(table.c.id))) or 0
    return list(range(top + 1, top + 1 + count))


def insert_rows(session: Session, target: type[Base] | Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows with the driver's executemany: values converted by the columns' own SQLAlchemy
    types, Python defaults (uuid, accession, created_at…) filled in for columns the rows leave out.
    The same rows SQLAlchemy's executemany writes; it spends ~20× longer per row in Python, which
    at millions of rows is most of a bulk load. PostgreSQL gets them by COPY. Every row must
    carry the same keys."""
    if not rows:
        return
    table = target if isinstance(target, Table) else target.metadata.tables[target.__tablename__]
    connection = session.connection()
    dialect = connection.dialect
    given = list(rows[0])
    defaulted = [c for c in table.columns if c.name not in rows[0] and c.default is not None and not c.primary_key]
    names = given + [c.name for c in defaulted]
    columns = {c.name: c for c in table.columns}
    compiled = insert(table).values({name: bindparam(name) for name in names}).compile(dialect=dialect)
    values = [
        [*itemgetter(*given)(row)] if len(given) > 1 else [row[given[0]]] for row in rows
    ] if given else [[] for _ in rows]
    for column in defaulted:
        maker: Any = column.default
        if MANY_DEFAULTS in column.info:
            made = column.info[MANY_DEFAULTS](len(values))
        elif maker.is_callable:
            made = [maker.arg(None) for _ in values]
        else:
            made = [maker.arg] * len(values)
        for row, value in zip(values, made, strict=True):
            row.append(value)
    for index, name in enumerate(names):
        processor = columns[name].type._cached_bind_processor(dialect)
        if processor is not None:
            for row in values:
                if row[index] is not None:
                    row[index] = processor(row[index])
    if dialect.name == "postgresql":  # COPY: one stream, no statement per row
        _copy(connection, table, names, values)
        return
    if compiled.positional:
        order = [names.index(name) for name in compiled.positiontup or []]
        parameters: list[Any] = [tuple(row[i] for i in order) for row in values]
    else:
        parameters = [dict(zip(names, row, strict=True)) for row in values]
    connection.exec_driver_sql(compiled.string, parameters)


def _copy(connection: Any, table: Table, names: list[str], values: list[list[Any]]) -> None:
    quote = connection.dialect.identifier_preparer.quote
    statement = f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"
    driver = connection.connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in values:
            copy.write_row(row)
