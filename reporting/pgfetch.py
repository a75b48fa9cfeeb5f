"""Report pages on PostgreSQL through the psycopg2 cursor, past SQLAlchemy's execution.

SQLAlchemy still builds and compiles every report statement; this module only runs the
compiled SQL. Per execution, SQLAlchemy Core's machinery (execution context, result
metadata, Row objects, per-value processing) costs about as much Python as psycopg2
itself, and a page is one short query: going around it raised report-page throughput under
load by about a fifth (``bench/report_bench.py``).

Only statements whose results need no processing take this path: every column is of a type
psycopg2 returns ready to use, or a :class:`~sediment.core.databases.UTCDateTime`, which report
sessions (``timezone=UTC``, see :mod:`reporting.readonly`) already return in UTC. Bound
values still go through SQLAlchemy's bind processors, and driver errors surface as
SQLAlchemy's, as they would from ``Connection.execute``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

from reporting.infinities import may_hold_infinity, read_in_c
from sediment.core.pgcopy import raw_cursor
from sediment.core.schema.types import UTCDateTime


@dataclass(frozen=True)
class DirectStatement:
    """A compiled statement and the names of its result columns."""

    compiled: SQLCompiler
    names: tuple[str, ...]


def direct_statement(statement: sa.Select[Any], dialect: sa.Dialect) -> DirectStatement | None:
    """``statement`` ready for :func:`fetch_direct`, or None when it must go through
    SQLAlchemy (not PostgreSQL, or a result column that needs processing)."""
    if dialect.name != "postgresql":
        return None
    if any(_needs_processing(column.type, dialect) for column in statement.selected_columns):
        return None
    return DirectStatement(statement.compile(dialect=dialect),
                           tuple(statement.selected_columns.keys()))


def _needs_processing(type_: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> bool:
    if isinstance(type_, UTCDateTime):
        return False
    try:
        return type_.dialect_impl(dialect).result_processor(dialect, None) is not None
    except Exception:  # e.g. numerics decide by the column's type code: ask SQLAlchemy
        return True


def fetch_direct(connection: sa.Connection, direct: DirectStatement,
                 values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Every row of ``direct`` with ``values`` bound, as plain tuples."""
    expanded = direct.compiled.construct_expanded_state(values)
    processors = expanded.processors
    parameters = {name: processors[name](value) if name in processors else value
                  for name, value in expanded.parameters.items()}
    try:
        rows, description = _read(connection, expanded.statement, parameters, in_c=True)
        if may_hold_infinity(description, rows):
            # Rarely: read again, each timestamp through reporting.infinities' casters.
            rows, _ = _read(connection, expanded.statement, parameters, in_c=False)
        return rows
    except sa.exc.DBAPIError as error:
        if error.connection_invalidated:
            # As Connection.execute does on a disconnect: every pooled connection is suspect
            # (the server restarted, or a proxy dropped them all), not only this one.
            connection.invalidate()
            connection.engine.dispose()
        raise


def _read(connection: sa.Connection, statement: str, parameters: Mapping[str, Any], *,
          in_c: bool) -> tuple[list[tuple[Any, ...]], Any]:
    """Every row of ``statement`` and the cursor's description; timestamps by psycopg2's own
    typecasters when ``in_c`` (see :func:`reporting.infinities.read_in_c`)."""
    with raw_cursor(connection, statement) as cursor:
        if in_c:
            read_in_c(cursor)
        cursor.execute(statement, parameters)
        return cursor.fetchall(), cursor.description
