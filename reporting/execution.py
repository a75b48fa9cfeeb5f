"""Run a validated report request against one database or both.

Row reports stream each database in keyset chunks and merge the sorted streams
(``heapq.merge``); aggregate reports are combined by :mod:`reporting.aggregation`. Either
way the two databases are queried separately: nothing is ever joined across them.

:mod:`reporting.aggregation` is imported where an aggregate is computed, not at the top:
it brings pandas and numpy, about half of the service's memory at rest, which a service
serving only row reports and CSV never needs.
"""

from __future__ import annotations

import heapq
import itertools
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from reporting.pagination import PageCursor, cursor_after
from reporting.pgfetch import fetch_direct
from reporting.report_databases import (
    ReportDatabases,
    apply_lookups,
    databases_of,
    drop_shared_rows,
    pending_windows,
)
from reporting.report_error import ReportError
from reporting.reports.base import AggregateReport, RowReport
from reporting.request import ReportRequest
from reporting.row_dicts import row_dict
from reporting.statements import SourceQuery, source_query
from sediment.core.databases import ARCHIVE, Database
from sediment.core.instants import StoredInstant

STREAM_CHUNK = 1000


@dataclass
class Page:
    rows: list[dict[str, Any]]
    columns: list[str]
    has_more: bool
    next_cursor: PageCursor | None
    count: int | None = None
    count_kind: str = "none"
    took_ms: float = 0.0
    databases: list[Database] = field(default_factory=list)
    #: For aggregate reports: when the groups were combined (they may be reused a while).
    computed_at: datetime | None = None


def run_page(databases: ReportDatabases, request: ReportRequest, cursor: PageCursor | None) -> Page:
    """Compute one page of ``request`` starting after ``cursor``."""
    started = time.perf_counter()
    wanted = request.limit + 1  # one more than the page tells whether another page follows
    report = request.report
    # An aggregate is combined once per request: the page and its count come from one frame.
    combined = None
    if isinstance(report, AggregateReport):
        from reporting.aggregation import combined_groups  # pandas: see the module docstring
        combined = combined_groups(databases, request, report)
    frame = combined.frame if combined is not None else None
    if frame is not None:
        assert combined is not None
        from reporting.aggregation import page_frame
        rows = list(itertools.islice(page_frame(combined, request, cursor), wanted))
    elif request.source != "all":  # one database: the page is one query
        assert isinstance(report, RowReport)
        query = source_query(databases, request, report, request.source)
        with databases.engines[request.source].connect() as connection:
            rows = fetch_rows(connection, query, request, cursor, wanted)
    else:  # one row more: at limit 1, a pair sharing one place ends the page after both
        rows = list(itertools.islice(iter_rows(databases, request, cursor, chunk=wanted + 1),
                                     wanted + 1))
    end = _page_end(rows, request) if request.source == "all" and frame is None \
        else request.limit
    has_more = len(rows) > end
    rows = rows[:end]
    next_cursor = None
    if has_more and rows:
        next_cursor = cursor_after(rows[-1], request)
    columns = output_columns(request, rows)
    if isinstance(report, RowReport):
        apply_lookups(databases, request, report.lookups, rows)  # rows are in their final shape
        if request.columns:
            rows = [{c: row[c] for c in columns} for row in rows]
    else:
        rows = [{c: row.get(c) for c in columns} for row in rows]
    page = Page(rows=rows, columns=columns, has_more=has_more, next_cursor=next_cursor,
                databases=databases_of(request),
                computed_at=combined.computed_at if combined is not None else None)
    if request.count != "none":
        page.count, page.count_kind = ((len(frame), "exact") if frame is not None
                                       else count_rows(databases, request))
    page.took_ms = round((time.perf_counter() - started) * 1000, 2)
    return page


def _page_end(rows: Sequence[Mapping[str, Any]], request: ReportRequest) -> int:
    """How many of a merged page's ``rows`` it shows: ``request.limit``, except when that
    would end it between two rows of one place in the order (one key in both databases,
    which PRIMARY reused after archiving the old row): a cursor after the first skipped the
    second. The page then ends before the pair, or at limit 1 after it."""
    end = request.limit
    if len(rows) <= end or not _same_place(rows[end - 1], rows[end], request.order):
        return end
    return end - 1 if end > 1 else end + 1


def _same_place(first: Mapping[str, Any], second: Mapping[str, Any],
                order: Sequence[str]) -> bool:
    return all(first[column] == second[column] for column in order)


def output_columns(request: ReportRequest, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns asked for, else the declared ones, or for a pivot the columns the data
    produced."""
    report = request.report
    if request.columns:
        return list(request.columns)
    if isinstance(report, AggregateReport) and report.is_wide(request.params):
        if rows:
            return list(rows[0].keys())
        return list(report.wide_key)
    return [c.name for c in report.columns]


def iter_rows(databases: ReportDatabases, request: ReportRequest,
              cursor: PageCursor | None = None,
              chunk: int = STREAM_CHUNK) -> Iterator[dict[str, Any]]:
    """Every row of ``request`` after ``cursor``, in order (lookups not yet applied for row
    reports: callers apply them per page or per chunk).

    :param chunk: rows fetched per keyset query and database: a page asks for exactly what
        it needs, an export for large chunks.
    """
    report = request.report
    if isinstance(report, AggregateReport):
        from reporting.aggregation import combined_groups, page_frame
        yield from page_frame(combined_groups(databases, request, report), request, cursor)
        return
    assert isinstance(report, RowReport)
    streams = [_source_stream(databases, request, report, name, cursor, chunk)
               for name in databases_of(request)]
    if len(streams) == 1:
        yield from streams[0]
        return
    with closing(streams[0]), closing(streams[1]):
        in_sqlite = all(databases.engines[name].dialect.name == "sqlite"
                        for name in databases_of(request))
        yield from heapq.merge(*streams, key=merge_key(request, sqlite_order=in_sqlite),
                               reverse=request.descending)


def merge_key(request: ReportRequest, *, sqlite_order: bool = False
              ) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The order of a merged page in Python, as both databases' SQL orders it: a nullable
    sort column's NULLs after every value (before, descending).

    :param sqlite_order: both databases are SQLite, which orders an application's
        timestamps by the text it stores (:class:`StoredInstant`), whatever its spelling.
    """
    order = request.order
    sort, key = order[0], order[1:]
    column = request.report.column(request.sort)
    if sqlite_order or column.type in ("datetime", "date"):
        # SQLite keeps any value in any column (an application's Unix times in a DATETIME
        # one, 'n/a' in a DECIMAL one), served as stored and ordered by SQLite numbers
        # first, then text: Python compares neither kind with the other, nor with a datetime.
        rank = _in_sqlite_order if sqlite_order else _in_instant_order
        return lambda row: (row[sort] is None, *rank(row[sort]), *(row[c] for c in key))
    if column.type == "number":
        # PostgreSQL sorts NaN above every number; Python's comparisons with NaN are all
        # false (a Decimal's raise), which left a merge out of order and pages skipping rows.
        return lambda row: (row[sort] is None, *_nan_last(row[sort]), *(row[c] for c in key))
    if request.sort in request.key or not column.nullable:
        return lambda row: tuple(row[c] for c in order)
    return lambda row: (row[sort] is None, row[sort], *(row[c] for c in key))


def _nan_last(value: Any) -> tuple[bool, Any]:
    """A number in PostgreSQL's order: NaN (float or Decimal) after every other number."""
    is_nan = value != value  # true for NaN alone
    return is_nan, None if is_nan else value


def _in_sqlite_order(value: Any) -> tuple[int, Any]:
    """A value as SQLite orders it: numbers, then text (an application's instant by its
    stored text; a column of Sediment's own instants, stored in one form, holds no text to
    compare them with), then blobs."""
    if isinstance(value, StoredInstant):
        return 1, value.stored
    if isinstance(value, str | date | uuid.UUID):
        return 1, value
    return (2 if isinstance(value, bytes) else 0), value


def _in_instant_order(value: Any) -> tuple[int, Any]:
    """A timestamp or date column's value in instant order: numbers first (as SQLite orders
    them), then dates and instants, then text that is neither."""
    return (1 if isinstance(value, date) else 2 if isinstance(value, str) else 0), value


def _source_stream(databases: ReportDatabases, request: ReportRequest, report: RowReport,
                   name: Database, cursor: PageCursor | None, chunk: int
                   ) -> Generator[dict[str, Any]]:
    query = source_query(databases, request, report, name)
    # ARCHIVE's side of a merge leaves out rows still in PRIMARY (caught mid-batch).
    keyed = report.rows_table
    pending = bool(pending_windows(databases, report.root)) \
        if name == ARCHIVE and request.source == "all" and keyed is not None else False
    last = cursor
    with databases.engines[name].connect() as connection:
        while True:
            rows = fetch_rows(connection, query, request, last, chunk)
            kept = drop_shared_rows(databases, keyed, rows) if pending and keyed else rows
            yield from kept
            if len(rows) < chunk:
                return
            last = cursor_after(rows[-1], request)
            if len(kept) < len(rows):
                # A stretch of rows in both databases: read past it in ever larger chunks,
                # not a page's worth of queries per page that follows it.
                chunk = min(chunk * 4, STREAM_CHUNK)


def fetch_rows(connection: sa.Connection, query: SourceQuery, request: ReportRequest,
               cursor: PageCursor | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` rows of ``query`` after ``cursor``, as dicts in column order."""
    values = query.values(request.filters, cursor, limit)
    direct = query.direct(cursor)
    names: Sequence[str]
    rows: Sequence[Sequence[Any]]
    try:
        if direct is not None:
            names, rows = direct.names, fetch_direct(connection, direct, values)
        else:
            result = connection.execute(query.statement(cursor), values)
            names, rows = list(result.keys()), result.all()
    except ValueError as error:  # raised by the driver or a result processor, not by SQL
        raise ReportError(
            422, "unrepresentable_value", f"a stored value in these rows cannot be served "
            f"({error}): Python's dates run from year 1 to 9999, PostgreSQL's from 4713 BC; "
            "leave such rows out with a filter on their column (e.g. [gte]=0001-01-01)"
        ) from error
    # Names and values come from one result, so they match.
    return list(map(row_dict(tuple(names)), rows))


def count_rows(databases: ReportDatabases, request: ReportRequest) -> tuple[int, str]:
    """Count matching rows: ``exact``, or the planner's ``estimated`` on PostgreSQL."""
    report = request.report
    if isinstance(report, AggregateReport):
        from reporting.aggregation import combined_groups
        return len(combined_groups(databases, request, report).frame), "exact"
    assert isinstance(report, RowReport)
    total, kind = 0, "exact"
    for name in databases_of(request):
        query = source_query(databases, request, report, name,
                             without_shared=request.count != "estimated")
        values = query.values(request.filters)
        engine = databases.engines[name]
        with engine.connect() as connection:
            if request.count == "estimated" and engine.dialect.name == "postgresql":
                expanded = query.filtered.compile(
                    dialect=engine.dialect).construct_expanded_state(values)
                plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {expanded.statement}",
                                                  expanded.parameters).scalar_one()
                total += int(plan[0]["Plan"]["Plan Rows"])
                kind = "estimated"
            else:
                total += int(connection.execute(sa.select(sa.func.count()).select_from(
                    query.filtered.subquery()), values).scalar_one())
    return total, kind
