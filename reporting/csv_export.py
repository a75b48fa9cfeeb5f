"""Stream any report as CSV, in flat memory, safe to open in a spreadsheet.

Three paths, chosen per request, with the same output:

* **COPY** (PostgreSQL, one database, a row report whose lookups live in that database):
  ``COPY (<the report's own SQL>) TO STDOUT (FORMAT csv, HEADER)``, with formula escaping
  and timestamp formatting done in the SQL. psycopg2 hands COPY output over one row at a
  time, so a producer thread gathers it into ~64 KiB chunks and passes them through a
  small bounded queue: a slow client slows the COPY instead of filling memory.
* **SQLite** (one SQLite database, a row report whose lookups live in it, no column
  SQLAlchemy converts): the report's own SQL on the raw cursor, written a column at a time
  (:mod:`reporting.sqlite_csv`).
* **Chunked** (``source=all``, aggregates, the rest): the JSON pages' own keyset stream in
  chunks, written with the ``csv`` module into ~64 KiB chunks.

All quote per RFC 4180 (fields with commas, quotes, CR or LF). Records end in CRLF on the
SQLite and chunked paths and LF on the COPY path (PostgreSQL's choice); every CSV reader,
Python's and pandas' included, reads both the same.

Everything that could refuse a download (bad parameters, the row cap, the concurrency
limit) is decided before the first byte. A failure after that raises inside the stream, so
the server cuts the transfer off: the client sees a broken download, never an error
message written into the file.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from reporting.csv_columns import csv_chunks
from reporting.execution import (
    STREAM_CHUNK,
    count_rows,
    iter_rows,
    output_columns,
)
from reporting.metrics import CSV_ACTIVE, CSV_REFUSED
from reporting.report_databases import ReportDatabases, apply_lookups, databases_of
from reporting.report_error import ReportError
from reporting.reports.base import RowReport
from reporting.request import ReportRequest
from reporting.sqlite_csv import sqlite_statement, stream_sqlite_csv
from reporting.statements import order_terms, source_query
from reporting.stored_values import blob_text
from sediment.core.pgcopy import raw_cursor, render

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS = 8
#: Characters that make a spreadsheet treat a cell as a formula (or hide its start).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n", "\0")
#: Characters of ``datetime.isoformat(timespec="microseconds")`` a timestamp is written with:
#: ``YYYY-MM-DDTHH:MM:SS.ffffff``, the offset cut (``strftime`` took 2 us a cell, seven
#: times as long, and its ``%Y`` writes year 999 as 999). A timestamp with a time zone gets
#: a ``Z`` after it (in UTC); one without none, as the JSON pages serve it: a column
#: written in local time is no UTC instant.
TIMESTAMP_CHARACTERS = 26
_PG_TIMESTAMP = 'YYYY-MM-DD"T"HH24:MI:SS.US'
#: What the csv-module path writes for PostgreSQL's ``infinity`` and ``-infinity``, which
#: psycopg2 reads as Python's latest and earliest values, by API type.
_INFINITIES = {"datetime": ("9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00.000000Z"),
               "date": ("9999-12-31", "0001-01-01")}


class ExportLimiter:
    """At most ``limit`` downloads at once in this process; the next one gets a 429."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def acquire(self) -> ExportSlot:
        if not self._slots.acquire(blocking=False):
            CSV_REFUSED.labels("too_many_exports").inc()
            raise ReportError(429, "too_many_exports", "the maximum number of CSV downloads "
                              "is running; retry shortly", headers={"Retry-After": "10"})
        CSV_ACTIVE.inc()
        return ExportSlot(self._slots)


class ExportSlot:
    """One download's place; released once, by whichever comes first: the stream ending or
    the server closing the response (a client that disconnects early)."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        self._slots = slots
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._slots.release()
                CSV_ACTIVE.dec()

    def guard(self, body: Iterator[bytes]) -> Iterator[bytes]:
        """``body``, releasing the slot when it ends, fails or is closed."""
        try:
            yield from body
        finally:
            self.release()


def escape_formula(value: str) -> str:
    """Prefix a text cell a spreadsheet would run as a formula with ``'``."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def check_row_cap(databases: ReportDatabases, request: ReportRequest, cap: int) -> int:
    """Count the rows before the first byte; refuse with 413 beyond ``cap``."""
    count, _ = count_rows(databases, request)
    if count > cap:
        CSV_REFUSED.labels("export_too_large").inc()
        raise ReportError(413, "export_too_large", f"this download would hold {count:,} rows, "
                          f"more than the limit of {cap:,}; narrow it with filters")
    return count


def uses_copy(databases: ReportDatabases, request: ReportRequest) -> bool:
    """Whether the COPY path can produce this CSV."""
    report = request.report
    if not isinstance(report, RowReport) or request.source == "all":
        return False
    tables = databases.tables[request.source]
    if databases.engines[request.source].dialect.name != "postgresql" or not all(
            lookup.table in tables.tables for lookup in report.lookups):
        return False
    # PostgreSQL writes a float its own way (18, NaN, 1e+15 where the csv module writes
    # 18.0, nan, 1000000000000000.0): such a report takes the csv-module path, so that a
    # download's cells do not depend on its source.
    selected = source_query(databases, request, report, request.source).filtered.selected_columns
    return not any(isinstance(selected[name].type, sa.Float) for name in _columns(request))


def stream_csv(databases: ReportDatabases, request: ReportRequest) -> Iterator[bytes]:
    """The CSV bytes of every row of ``request``, header first, in ~64 KiB chunks.

    The first chunk is made before this returns: a failure before the first byte (a
    statement the database refuses, a value the driver cannot read) raises here, for the
    caller to answer as a problem, instead of breaking a download whose 200 was sent.
    """
    body = _stream(databases, request)
    first = next(body, None)
    return _resumed(first, body)


def _resumed(first: bytes | None, body: Iterator[bytes]) -> Iterator[bytes]:
    if first is not None:
        yield first
    yield from body


def _stream(databases: ReportDatabases, request: ReportRequest) -> Iterator[bytes]:
    escape = request.escape_formulas
    if uses_copy(databases, request):
        return _copy_stream(databases, request, escape=escape)
    direct = _sqlite_stream(databases, request, escape=escape)
    if direct is not None:
        return direct
    return _chunked_stream(databases, request, escape=escape)


def _sqlite_stream(databases: ReportDatabases, request: ReportRequest, *,
                   escape: bool) -> Iterator[bytes] | None:
    """The download through :mod:`reporting.sqlite_csv`, when it can serve it: one SQLite
    database, every lookup joined in its SQL, every column ready as ``sqlite3`` returns it
    (or a timestamp)."""
    report = request.report
    if not isinstance(report, RowReport) or request.source == "all":
        return None
    engine = databases.engines[request.source]
    tables = databases.tables[request.source]
    if engine.dialect.name != "sqlite" or not all(
            lookup.table in tables.tables for lookup in report.lookups):
        return None
    query = source_query(databases, request, report, request.source)
    inner = query.filtered.subquery("rows")
    columns = _columns(request)
    prepared = sqlite_statement(inner, columns,
                                order_terms(request, [inner.c[c] for c in request.order]),
                                engine.dialect)
    if prepared is None:
        return None
    values = query.values(request.filters)

    def rows() -> Iterator[bytes]:
        with engine.connect() as connection:
            yield from stream_sqlite_csv(
                connection, prepared, values, header=columns, cell=_cell,
                formula_prefixes=FORMULA_PREFIXES if escape else None, chunk_bytes=CHUNK_BYTES)

    return rows()


def _columns(request: ReportRequest) -> list[str]:
    return output_columns(request, [])


def _chunked_stream(databases: ReportDatabases, request: ReportRequest, *,
                    escape: bool) -> Iterator[bytes]:
    report = request.report
    prefixes = FORMULA_PREFIXES if escape else None

    def written(value: Any) -> Any:
        return _cell(value, escape)

    rows = iter_rows(databases, request, chunk=STREAM_CHUNK)

    def next_batch() -> list[dict[str, Any]]:
        batch = [row for _, row in zip(range(STREAM_CHUNK), rows, strict=False)]
        if isinstance(report, RowReport):
            apply_lookups(databases, request, report.lookups, batch)
        return batch

    first = next_batch()
    header = output_columns(request, first)

    def batches() -> Iterator[list[list[Any]]]:
        # A column at a time (reporting.csv_columns): a cell at a time through the csv
        # module was most of a merged download's time.
        batch = first
        while True:
            yield [[row.get(name) for row in batch] for name in header]
            if len(batch) < STREAM_CHUNK:
                return
            batch = next_batch()

    yield from csv_chunks(header, batches(), written=written, formula_prefixes=prefixes,
                          chunk_bytes=CHUNK_BYTES)


def _cell(value: Any, escape: bool) -> Any:
    if isinstance(value, datetime):
        written = value.isoformat(timespec="microseconds")[:TIMESTAMP_CHARACTERS]
        return written if value.tzinfo is None else written + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if escape and isinstance(value, str):
        return escape_formula(value)
    if isinstance(value, bytes):
        return blob_text(value)
    return value


def copy_statement(databases: ReportDatabases, request: ReportRequest,
                   escape: bool) -> tuple[sa.Select[Any], dict[str, Any]]:
    """The report's own SQL, ordered, with CSV cell formatting done by PostgreSQL, and the
    values of its bound parameters."""
    report = request.report
    assert isinstance(report, RowReport)
    query = source_query(databases, request, report, databases_of(request)[0])
    inner = query.filtered.subquery("rows")
    types = {c.name: c.type for c in report.columns}
    cells: list[sa.ColumnElement[Any]] = []
    for column_name in _columns(request):
        column: sa.ColumnElement[Any] = inner.c[column_name]
        if types[column_name] in _INFINITIES:
            column = _without_infinities(column, types[column_name])
        elif types[column_name] == "boolean":  # as the csv module writes one, not t and f
            column = sa.case((column.is_(True), "True"), (column.is_(False), "False"))
        elif types[column_name] == "string" and escape:
            column = sa.case((sa.func.left(column, 1).in_(FORMULA_PREFIXES[:-1]),
                              sa.literal("'") + column), else_=column)
        cells.append(column.label(column_name))
    statement = sa.select(*cells).order_by(
        *order_terms(request, [inner.c[c] for c in request.order]))
    return statement, query.values(request.filters)


def _without_infinities(column: sa.ColumnElement[Any], kind: str) -> sa.ColumnElement[Any]:
    """A timestamp (``to_char``, in UTC) or date cell for COPY, its infinities written as
    the csv-module path writes them (``to_char`` alone wrote an empty cell, as for NULL)."""
    latest, earliest = _INFINITIES[kind]
    if kind != "datetime":
        formatted: sa.ColumnElement[Any] = sa.cast(column, sa.Text)
    elif isinstance(column.type, sa.DateTime) and not column.type.timezone:
        latest, earliest = latest.removesuffix("Z"), earliest.removesuffix("Z")
        formatted = sa.func.to_char(column, _PG_TIMESTAMP)
    else:
        formatted = sa.func.to_char(sa.func.timezone("UTC", column), _PG_TIMESTAMP + '"Z"')
    return sa.case((column == sa.literal_column("'infinity'"), latest),
                   (column == sa.literal_column("'-infinity'"), earliest), else_=formatted)


class _Sink:
    """The file psycopg2 COPYs into: gathers rows into chunks for the queue."""

    def __init__(self, chunks: queue.Queue[object], abort: threading.Event) -> None:
        self.chunks = chunks
        self.abort = abort
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes | str) -> None:
        if self.abort.is_set():
            raise OSError("the client went away; COPY aborted")
        part = data.encode() if isinstance(data, str) else data
        self.parts.append(part)
        self.size += len(part)
        if self.size >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.put(b"".join(self.parts))
            self.parts, self.size = [], 0

    def put(self, item: object) -> None:
        while not self.abort.is_set():
            try:
                self.chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


_DONE = object()


def _copy_stream(databases: ReportDatabases, request: ReportRequest, *,
                 escape: bool) -> Iterator[bytes]:
    engine = databases.engines[databases_of(request)[0]]
    statement, values = copy_statement(databases, request, escape)
    chunks: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
    abort = threading.Event()
    sink = _Sink(chunks, abort)

    def produce() -> None:
        try:
            with engine.connect() as connection:
                query = render(connection, statement, values)
                sql = f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)"
                with raw_cursor(connection, sql) as cursor:
                    cursor.copy_expert(sql, sink, size=CHUNK_BYTES)
            sink.flush()
            sink.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            sink.put(exc)

    producer = threading.Thread(target=produce, name="csv-copy", daemon=True)
    producer.start()
    try:
        while True:
            item = chunks.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        abort.set()
        producer.join(timeout=30)


def export_filename(request: ReportRequest, today: date) -> str:
    return f"{request.report.name}_{today.isoformat()}.csv"
