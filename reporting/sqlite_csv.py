"""CSV downloads from one SQLite database through the ``sqlite3`` cursor, past SQLAlchemy.

The general path reads every row through SQLAlchemy's result processing (a ``datetime``
parsed from SQLite's text for each timestamp), builds a dict per row, then formats each
timestamp back to text: most of a download's time. Here the report's own statement, ordered
and compiled by SQLAlchemy as always, runs once on the raw cursor, and SQLite itself does
the formatting: a timestamp stored in one of the UTC forms SQLAlchemy and SQLite write
(``YYYY-MM-DD HH:MM:SS``, with or without ``.ffffff``, with or without ``+00:00``) becomes
the CSV's ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` by string functions, and a text a spreadsheet
would run gets its ``'`` (as PostgreSQL's COPY path does): the rows go from the cursor to
the CSV writer with no Python per row. A timestamp stored in any other form (or as a
number) reaches the SQL function ``sediment_csv_timestamp``, which this module registers
on the connection for the download: it formats that one value in Python, parsed and written
as the general path does, so the output is always the general path's bytes. (An ``EXISTS``
over every row used to look for such values first: a second scan of the table, a seventh of
a download's time.)

Only statements whose every column is returned ready by ``sqlite3`` (or is a timestamp)
take this path (:func:`sqlite_statement`): numerics, booleans and dates, which SQLAlchemy
converts, keep the general one. The download is one read transaction, and
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

from reporting.stored_values import StoredUTCDateTime
from sediment.core.schema.types import UTCDateTime

#: Rows per ``fetchmany``: enough to amortise the call, few enough to stay flat in memory.
FETCH_ROWS = 2000

#: The SQL function that formats, in Python, a timestamp stored in a form SQL does not know:
#: ``sediment_csv_timestamp(value, column_index)``.
PYTHON_TIMESTAMP = "sediment_csv_timestamp"


@dataclass(frozen=True)
class SqliteStatement:
    """The ordered rows with every cell formatted in SQL (formulas escaped), and per output
    column how :data:`PYTHON_TIMESTAMP` parses a timestamp SQL could not format."""

    formatted: Any
    #: Per column: None (not a timestamp), or the result processor of a timestamp.
    timestamps: tuple[Callable[[Any], Any] | None, ...]


def sqlite_statement(inner: sa.Subquery, columns: Sequence[str],
                     order: Sequence[sa.ColumnElement[Any]], dialect: sa.Dialect, *,
                     formula_prefixes: Sequence[str] | None) -> SqliteStatement | None:
    """The ordered rows of ``inner`` ready for :func:`stream_sqlite_csv`, or None when a
    column needs SQLAlchemy's processing (a numeric, a boolean, a date) or the database is
    not SQLite.

    :param formula_prefixes: the first characters of text a spreadsheet would run, to be
        prefixed with ``'``; None writes text as it is (``formula=raw``).

    A blob, which SQLite keeps in a column of any type, is written as the general path
    writes it (:func:`reporting.stored_values.blob_text`), not as Python's ``b'...'``: one
    more ``CASE`` branch per cell, which costs a download about 6%.
    """
    if dialect.name != "sqlite":
        return None
    timestamps: list[Callable[[Any], Any] | None] = []
    for name in columns:
        declared = inner.c[name].type
        base = (declared.impl_instance if isinstance(declared, sa.types.TypeDecorator)
                else declared)
        if isinstance(base, sa.DateTime):
            # The column's own reading (an application's timestamp is read leniently)
            parse: Callable[[Any], Any] | None = declared.dialect_impl(
                dialect).result_processor(dialect, None)
            timestamps.append(parse or _unchanged)
        elif declared.dialect_impl(dialect).result_processor(dialect, None) is not None:
            return None
        else:
            timestamps.append(None)
    cells: list[sa.ColumnElement[Any]] = []
    for index, (name, timestamp) in enumerate(zip(columns, timestamps, strict=True)):
        column: sa.ColumnElement[Any] = inner.c[name]
        if timestamp is not None:
            cells.append(_formatted_timestamp(column, index, _utc_when_zoneless(
                inner.c[name].type)).label(name))
        elif formula_prefixes is not None and isinstance(column.type, sa.String):
            # Cheapest test first: the range check alone sends most text past the IN list
            # (SQLite tests the three in order; this order halved the escape's cost).
            codes = [ord(prefix) for prefix in formula_prefixes]
            first = sa.func.unicode(column)
            cells.append(sa.case(_blob_case(column),
                                 (sa.and_(first <= max(codes), first.in_(codes),
                                          sa.func.typeof(column) == "text"),
                                  sa.literal("'") + column), else_=column).label(name))
        else:
            cells.append(sa.case(_blob_case(column), else_=column).label(name))
    formatted = sa.select(*cells).order_by(*order)
    return SqliteStatement(formatted.compile(dialect=dialect), tuple(timestamps))


def _blob_case(column: sa.ColumnElement[Any]
               ) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[Any]]:
    """The ``CASE`` branch that writes a blob as ``hex()`` does."""
    return sa.func.typeof(column) == "blob", sa.func.hex(column)


def _utc_when_zoneless(declared: sa.types.TypeEngine[Any]) -> bool:
    """Whether the column's type reads text without a zone as UTC (Sediment's own
    timestamps, a SQL report's), rather than as a wall-clock time of no stated zone (an
    application's ``DATETIME``, served so in JSON)."""
    return isinstance(declared, UTCDateTime | StoredUTCDateTime)


def _formatted_timestamp(column: sa.ColumnElement[Any], index: int,
                         utc_when_zoneless: bool) -> sa.ColumnElement[Any]:
    """A stored timestamp as the CSV writes it: sliced by SQL in the forms SQLAlchemy and
    SQLite write (text without a zone with a ``Z`` only when ``utc_when_zoneless``), else
    formatted by :data:`PYTHON_TIMESTAMP`.

    One ``CASE`` on the length, so that SQLite computes it once per cell (a searched ``CASE``
    testing it in each branch cost a sixth more). Only text can hold the space at position
    11 every branch checks, so a number or a blob of a known length reaches Python too.
    """
    def part(*bounds: int) -> sa.ColumnElement[str]:
        return sa.func.substr(column, *bounds, type_=sa.String)

    day, spaced, fraction = part(1, 10), part(11, 1) == " ", part(20, 1) == "."
    utc = part(20) == "+00:00"
    zoneless = "Z" if utc_when_zoneless else ""
    in_python = getattr(sa.func, PYTHON_TIMESTAMP)(column, index, type_=sa.String)

    def sliced(known: sa.ColumnElement[bool], text: sa.ColumnElement[str]
               ) -> sa.ColumnElement[Any]:
        return sa.case((known, text), else_=in_python)

    return sa.case(
        {26: sliced(sa.and_(spaced, fraction), day + "T" + part(12) + zoneless),
         19: sliced(spaced, day + "T" + part(12) + ".000000" + zoneless),
         25: sliced(sa.and_(spaced, utc), day + "T" + part(12, 8) + ".000000Z"),
         32: sliced(sa.and_(spaced, fraction, part(27) == "+00:00"),
                    day + "T" + part(12, 15) + "Z")},
        value=sa.func.length(column),
        else_=sa.case((column.is_(None), sa.null()), else_=in_python))


def stream_sqlite_csv(connection: sa.Connection, prepared: SqliteStatement,
                      values: Mapping[str, Any], *, header: Sequence[str],
                      cell: Callable[[Any, bool], Any], escape: bool,
                      chunk_bytes: int) -> Iterator[bytes]:
    """Every row of ``prepared`` as CSV (header first), in chunks of about
    ``chunk_bytes``.

    :param cell: the general path's formatter of one value, used for a timestamp stored in
        a form SQL does not format (with ``escape``, formulas escaped).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    # One read transaction, begun through SQLAlchemy so that the statement deadline of
    # reporting.readonly starts now (statements on the raw cursor do not set it: a pooled
    # connection idle for longer than the timeout was interrupted at once).
    connection.exec_driver_sql("BEGIN")
    dbapi_connection: Any = connection.connection.dbapi_connection
    dbapi_connection.create_function(
        PYTHON_TIMESTAMP, 2, timestamp_in_python(prepared.timestamps, cell, escape),
        deterministic=True)
    cursor = dbapi_connection.cursor()
    try:
        _execute(cursor, prepared.formatted, values)
        while rows := cursor.fetchmany(FETCH_ROWS):
            writer.writerows(rows)
            if buffer.tell() >= chunk_bytes:
                yield _drained(buffer)
    finally:
        cursor.close()
        if dbapi_connection.in_transaction:
            dbapi_connection.rollback()
    yield buffer.getvalue().encode()


def _execute(cursor: Any, compiled: Any, values: Mapping[str, Any]) -> Any:
    """Run a compiled statement on the raw cursor, its values through SQLAlchemy's bind
    processors (a timestamp filter becomes the text it is compared with).

    ``ExpandedState.processors`` holds only the expanded (``IN``) parameters' processors;
    the others are the compiled statement's own, which SQLAlchemy's execution context
    reads from the same private attribute. Without them a filter's datetime reached
    ``sqlite3``'s default adapter, whose spelling (``...00+00:00``) is not the stored one:
    ``eq`` matched nothing in a download its JSON pages showed rows for.
    """
    expanded = compiled.construct_expanded_state(values)
    processors = {**compiled._bind_processors, **expanded.processors}
    cursor.execute(expanded.statement, [
        processors[name](expanded.parameters[name]) if name in processors
        else expanded.parameters[name] for name in expanded.positiontup])
    return cursor


def _drained(buffer: io.StringIO) -> bytes:
    chunk = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    return chunk


def timestamp_in_python(timestamps: Sequence[Callable[[Any], Any] | None],
                        cell: Callable[[Any, bool], Any], escape: bool
                        ) -> Callable[[Any, int], Any]:
    """The body of :data:`PYTHON_TIMESTAMP`: a stored value of timestamp column ``index``
    parsed by SQLAlchemy and formatted by ``cell``, as the general path writes it (text;
    a number an application stored there is written as it is, as that path serves it)."""
    def formatted(value: Any, index: int) -> Any:
        process = timestamps[index]
        assert process is not None
        if value is None:
            return None
        return cell(process(value) if isinstance(value, str) else value, escape)
    return formatted


def _unchanged(value: Any) -> Any:
    return value
