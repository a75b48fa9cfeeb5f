"""CSV downloads from one SQLite database through the ``sqlite3`` cursor, past SQLAlchemy.

The general path reads every row through SQLAlchemy's result processing (a ``datetime``
parsed from SQLite's text for each timestamp), builds a dict per row, then formats each
timestamp back to text: most of a download's time. Here the report's own statement, ordered
and compiled by SQLAlchemy as always, runs once on the raw cursor, and SQLite itself does
the formatting: a timestamp stored in one of the UTC forms SQLAlchemy and SQLite write
(``YYYY-MM-DD HH:MM:SS``, with or without ``.ffffff``, with or without ``+00:00``) becomes
the CSV's ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` by string functions, and a text a spreadsheet
would run gets its ``'`` (as PostgreSQL's COPY path does): the rows go from the cursor to
the CSV writer with no Python per row. One ``EXISTS`` first looks for a timestamp stored in
any other form; if there is one, the rows are formatted in Python instead (parsed and
written as the general path does), so the output is always the general path's bytes.

Only statements whose every column is returned ready by ``sqlite3`` (or is a timestamp)
take this path (:func:`sqlite_statement`): numerics, booleans and dates, which SQLAlchemy
converts, keep the general one. The check and the download are one read transaction, and
``reports.statement_timeout_ms`` bounds the whole of it, as it bounds PostgreSQL's COPY:
the ``reports.csv_max_rows`` default (5,000,000) streams in well under the default 30 s.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

#: Rows per ``fetchmany``: enough to amortise the call, few enough to stay flat in memory.
FETCH_ROWS = 2000


@dataclass(frozen=True)
class SqliteStatement:
    """A compiled statement and, per output column, how its stored value becomes a cell;
    with the same rows formatted by SQLite, and the check that SQLite can format them."""

    compiled: Any
    #: Per column: None (written as stored), or the result processor of a timestamp.
    timestamps: tuple[Callable[[Any], Any] | None, ...]
    #: The rows with every cell formatted in SQL (formulas escaped).
    formatted: Any
    #: ``EXISTS``: some timestamp is stored in a form the SQL formatting does not know
    #: (None without timestamp columns).
    unusual: Any


def sqlite_statement(inner: sa.Subquery, columns: Sequence[str],
                     order: Sequence[sa.ColumnElement[Any]], dialect: sa.Dialect, *,
                     formula_prefixes: Sequence[str] | None) -> SqliteStatement | None:
    """The ordered rows of ``inner`` ready for :func:`stream_sqlite_csv`, or None when a
    column needs SQLAlchemy's processing (a numeric, a boolean, a date) or the database is
    not SQLite.

    :param formula_prefixes: the first characters of text a spreadsheet would run, to be
        prefixed with ``'``; None writes text as it is (``formula=raw``).
    """
    if dialect.name != "sqlite":
        return None
    statement = sa.select(*(inner.c[name] for name in columns)).order_by(*order)
    timestamps: list[Callable[[Any], Any] | None] = []
    for selected in statement.selected_columns:
        declared = selected.type
        base = (declared.impl_instance if isinstance(declared, sa.types.TypeDecorator)
                else declared)
        if isinstance(base, sa.DateTime):
            parse: Callable[[Any], Any] | None = base.dialect_impl(dialect).result_processor(
                dialect, None)
            timestamps.append(parse or _unchanged)
        elif declared.dialect_impl(dialect).result_processor(dialect, None) is not None:
            return None
        else:
            timestamps.append(None)
    cells: list[sa.ColumnElement[Any]] = []
    odd: list[sa.ColumnElement[bool]] = []
    for name, timestamp in zip(columns, timestamps, strict=True):
        column: sa.ColumnElement[Any] = inner.c[name]
        if timestamp is not None:
            formatted_timestamp = _formatted_timestamp(column)
            cells.append(formatted_timestamp.label(name))
            odd.append(sa.and_(column.is_not(None), formatted_timestamp.is_(None)))
        elif formula_prefixes is not None and isinstance(column.type, sa.String):
            codes = [ord(prefix) for prefix in formula_prefixes]
            cells.append(sa.case((sa.and_(sa.func.typeof(column) == "text",
                                          sa.func.unicode(column).in_(codes)),
                                  sa.literal("'") + column), else_=column).label(name))
        else:
            cells.append(column.label(name))
    formatted = sa.select(*cells).order_by(*order)
    unusual = sa.select(sa.exists().where(sa.or_(*odd))) if odd else None
    return SqliteStatement(statement.compile(dialect=dialect), tuple(timestamps),
                           formatted.compile(dialect=dialect),
                           unusual.compile(dialect=dialect) if unusual is not None else None)


def _formatted_timestamp(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A stored UTC timestamp as the CSV writes it, or NULL for a form this does not know."""
    def part(*bounds: int) -> sa.ColumnElement[str]:
        return sa.func.substr(column, *bounds, type_=sa.String)

    size, day = sa.func.length(column), part(1, 10)
    spaced, fraction = part(11, 1) == " ", part(20, 1) == "."
    return sa.case(
        (sa.func.typeof(column) != "text", sa.null()),
        (sa.and_(size == 26, spaced, fraction), day + "T" + part(12) + "Z"),
        (sa.and_(size == 19, spaced), day + "T" + part(12) + ".000000Z"),
        (sa.and_(size == 25, spaced, part(20) == "+00:00"), day + "T" + part(12, 8) + ".000000Z"),
        (sa.and_(size == 32, spaced, fraction, part(27) == "+00:00"),
         day + "T" + part(12, 15) + "Z"),
        else_=sa.null())


def stream_sqlite_csv(connection: sa.Connection, prepared: SqliteStatement,
                      values: Mapping[str, Any], *, header: Sequence[str],
                      cell: Callable[[Any, bool], Any], escape: bool,
                      chunk_bytes: int) -> Iterator[bytes]:
    """Every row of ``prepared`` as CSV (header first), in chunks of about
    ``chunk_bytes``.

    :param cell: the general path's formatter of one value, used when some timestamp is
        stored in a form SQL does not format (with ``escape``, formulas escaped).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    # One read transaction for the check and the rows, so that no timestamp the check did
    # not see reaches the formatted rows; begun through SQLAlchemy so that the statement
    # deadline of reporting.readonly starts now (statements on the raw cursor do not set
    # it: a pooled connection idle for longer than the timeout was interrupted at once).
    connection.exec_driver_sql("BEGIN")
    dbapi_connection: Any = connection.connection.dbapi_connection
    cursor = dbapi_connection.cursor()
    try:
        unusual = prepared.unusual is not None and bool(
            _execute(cursor, prepared.unusual, values).fetchone()[0])
        if not unusual:
            _execute(cursor, prepared.formatted, values)
            while rows := cursor.fetchmany(FETCH_ROWS):
                writer.writerows(rows)
                if buffer.tell() >= chunk_bytes:
                    yield _drained(buffer)
        else:
            _execute(cursor, prepared.compiled, values)
            while rows := cursor.fetchmany(FETCH_ROWS):
                writer.writerows(_formatted_rows(prepared, rows, cell, escape))
                if buffer.tell() >= chunk_bytes:
                    yield _drained(buffer)
    finally:
        cursor.close()
        if dbapi_connection.in_transaction:
            dbapi_connection.rollback()
    yield buffer.getvalue().encode()


def _execute(cursor: Any, compiled: Any, values: Mapping[str, Any]) -> Any:
    """Run a compiled statement on the raw cursor, its values through SQLAlchemy's bind
    processors (a timestamp filter becomes SQLAlchemy's stored form)."""
    expanded = compiled.construct_expanded_state(values)
    processors = expanded.processors
    cursor.execute(expanded.statement, [
        processors[name](expanded.parameters[name]) if name in processors
        else expanded.parameters[name] for name in expanded.positiontup])
    return cursor


def _drained(buffer: io.StringIO) -> bytes:
    chunk = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    return chunk


def _formatted_rows(prepared: SqliteStatement, rows: Sequence[Sequence[Any]],
                    cell: Callable[[Any, bool], Any], escape: bool) -> Iterator[list[Any]]:
    """Rows as the general path writes them, every value through its formatter (some
    timestamp is stored in a form :func:`_formatted_timestamp` does not know)."""
    for row in rows:
        yield [cell(value if process is None or value is None else process(value), escape)
               for value, process in zip(row, prepared.timestamps, strict=True)]


def _unchanged(value: Any) -> Any:
    return value
