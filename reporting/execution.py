"""Run a validated report request against one database or both.

Row reports stream each database in keyset chunks and merge the sorted streams
(``heapq.merge``); aggregate reports combine per-database partials in pandas. Either way
the two databases are queried separately: nothing is ever joined across them.

A row caught between the archiver's ARCHIVE commit and its PRIMARY delete is in both
databases. The ledger says which runs may have left such rows (``copied > deleted``); the
ones still in PRIMARY are excluded from ARCHIVE's side, so merged results count every row
once. When no run is in flight that costs one small ledger query.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from reporting.pagination import PageCursor, after
from reporting.reports.base import (
    AggregateReport,
    Lookup,
    ReferenceData,
    RowReport,
    SourceTables,
)
from reporting.request import FilterClause, ReportRequest

STREAM_CHUNK = 1000
SHARED_KEY_CHUNK = 5000


@dataclass(frozen=True)
class ReportSources:
    """The read-only engines and the tables of each database, as the app built them."""

    engines: Mapping[str, sa.Engine]
    tables: Mapping[str, SourceTables]


@dataclass
class Page:
    rows: list[dict[str, Any]]
    columns: list[str]
    has_more: bool
    next_cursor: PageCursor | None
    count: int | None = None
    count_kind: str = "none"
    took_ms: float = 0.0
    sources: list[str] = field(default_factory=list)


def sources_of(request: ReportRequest) -> list[str]:
    return ["primary", "archive"] if request.source == "all" else [request.source]


def run_page(sources: ReportSources, request: ReportRequest, cursor: PageCursor | None) -> Page:
    """Compute one page of ``request`` starting after ``cursor``."""
    started = time.perf_counter()
    wanted = request.limit + 1  # one more than the page tells whether another page follows
    rows = list(itertools.islice(iter_rows(sources, request, cursor, chunk=wanted), wanted))
    has_more = len(rows) > request.limit
    rows = rows[: request.limit]
    report = request.report
    if isinstance(report, RowReport):
        apply_lookups(sources, report.lookups, rows)
    next_cursor = None
    if has_more and rows:
        next_cursor = PageCursor(tuple(rows[-1][c] for c in (request.sort, *request.key)))
    columns = output_columns(request, rows)
    page = Page(rows=[{c: row.get(c) for c in columns} for row in rows], columns=columns,
                has_more=has_more, next_cursor=next_cursor, sources=sources_of(request))
    if request.count != "none":
        page.count, page.count_kind = count_rows(sources, request)
    page.took_ms = round((time.perf_counter() - started) * 1000, 2)
    return page


def output_columns(request: ReportRequest, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The declared columns, or for a pivot the columns the data produced."""
    report = request.report
    if isinstance(report, AggregateReport) and report.is_wide(request.params):
        if rows:
            return list(rows[0].keys())
        return list(report.wide_key)
    return [c.name for c in report.columns]


def iter_rows(sources: ReportSources, request: ReportRequest,
              cursor: PageCursor | None = None,
              chunk: int = STREAM_CHUNK) -> Iterator[dict[str, Any]]:
    """Every row of ``request`` after ``cursor``, in order (lookups not yet applied for row
    reports: callers apply them per page or per chunk).

    :param chunk: rows fetched per keyset query and database: a page asks for exactly what
        it needs, an export for large chunks.
    """
    report = request.report
    if isinstance(report, AggregateReport):
        frame = aggregate_frame(sources, request, report)
        yield from _page_frame(frame, request, cursor)
        return
    assert isinstance(report, RowReport)
    streams = [_source_stream(sources, request, report, name, cursor, chunk)
               for name in sources_of(request)]
    if len(streams) == 1:
        yield from streams[0]
        return
    order = (request.sort, *request.key)
    with closing(streams[0]), closing(streams[1]):
        yield from heapq.merge(*streams, key=lambda row: tuple(row[c] for c in order),
                               reverse=request.descending)


def _source_stream(sources: ReportSources, request: ReportRequest, report: RowReport,
                   name: str, cursor: PageCursor | None, chunk: int
                   ) -> Generator[dict[str, Any]]:
    base, order_columns = source_statement(sources, request, report, name)
    ordering = [c.desc() if request.descending else c.asc() for c in order_columns]
    last = cursor
    with sources.engines[name].connect() as connection:
        while True:
            statement = base if last is None else base.where(
                after(order_columns, last, request.descending))
            result = connection.execute(statement.order_by(*ordering).limit(chunk))
            names = list(result.keys())
            rows = [dict(zip(names, row, strict=True)) for row in result]
            yield from rows
            if len(rows) < chunk:
                return
            last = PageCursor(tuple(rows[-1][c] for c in (request.sort, *request.key)))


def source_statement(sources: ReportSources, request: ReportRequest, report: RowReport,
                     name: str) -> tuple[sa.Select[Any], list[sa.ColumnElement[Any]]]:
    """The filtered (unordered, unlimited) statement of a row report on one database, and
    the columns that order it (sort column, then key)."""
    tables = sources.tables[name]
    if name == "archive" and request.source == "all":
        tables = exclude_shared(sources, tables, report.root)
    subquery = report.query(tables, request.params).subquery("report")
    order_columns: list[sa.ColumnElement[Any]] = [
        subquery.c[c] for c in (request.sort, *request.key)]
    joined, columns = join_lookups(subquery, tables, report.lookups)
    statement = sa.select(subquery, *columns).select_from(joined).where(
        *filter_conditions(subquery, request.filters))
    return statement, order_columns


def join_lookups(subquery: sa.Subquery, tables: SourceTables, lookups: Sequence[Lookup]
                 ) -> tuple[sa.FromClause, list[sa.ColumnElement[Any]]]:
    """Join the reference tables that live in this database (PRIMARY) in SQL.

    ARCHIVE has no reference tables: its rows get the columns from :func:`apply_lookups`.
    """
    joined: sa.FromClause = subquery
    columns: list[sa.ColumnElement[Any]] = []
    for index, lookup in enumerate(lookups):
        if lookup.table not in tables.tables:
            continue
        reference = tables[lookup.table].alias(f"lookup_{index}")
        joined = joined.outerjoin(reference, reference.c.id == subquery.c[lookup.key])
        columns.append(reference.c[lookup.value].label(lookup.column))
    return joined, columns


def filter_conditions(source: sa.Subquery, filters: Sequence[FilterClause]
                      ) -> list[sa.ColumnElement[bool]]:
    conditions = []
    for clause in filters:
        column = source.c[clause.column]
        conditions.append({
            "eq": lambda c, v: c == v, "ne": lambda c, v: c != v, "in": lambda c, v: c.in_(v),
            "gt": lambda c, v: c > v, "gte": lambda c, v: c >= v,
            "lt": lambda c, v: c < v, "lte": lambda c, v: c <= v,
        }[clause.op](column, clause.value))
    return conditions


def apply_lookups(sources: ReportSources, lookups: Sequence[Lookup],
                  rows: list[dict[str, Any]]) -> None:
    """Fill reference columns (names, categories) from PRIMARY, one query per table, in the
    rows that do not have them yet (those that came from ARCHIVE)."""
    primary = sources.tables["primary"]
    by_table: dict[tuple[str, str], list[Lookup]] = {}
    for lookup in lookups:
        by_table.setdefault((lookup.table, lookup.key), []).append(lookup)
    for (table_name, key), group in by_table.items():
        rows = [row for row in rows if group[0].column not in row]
        ids = sorted({row[key] for row in rows if row.get(key) is not None})
        table = primary[table_name]
        values: dict[Any, Any] = {}
        if ids:
            engine = sources.engines["primary"]
            query = sa.select(table.c.id, *(table.c[lookup.value] for lookup in group)).where(
                keys_in(table.c.id, ids, engine.dialect.name))
            with engine.connect() as connection:
                values = {row[0]: row[1:] for row in connection.execute(query)}
        for row in rows:
            found = values.get(row.get(key))
            for index, lookup in enumerate(group):
                row[lookup.column] = found[index] if found else None


def keys_in(column: sa.ColumnElement[Any], keys: list[Any],
            dialect: str) -> sa.ColumnElement[bool]:
    """``column IN keys`` as one array parameter on PostgreSQL: an expanding ``IN`` of a
    hundred values is rendered and planned anew on every request."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam("keys", keys, type_=postgresql.ARRAY(column.type)))
    return column.in_(keys)


def shared_keys(sources: ReportSources, root: str) -> list[int]:
    """Keys of ``root`` present in both databases (left by an in-flight or killed run)."""
    archive = sources.tables["archive"]
    ledger = archive["archive_run_tables"]
    with sources.engines["archive"].connect() as connection:
        runs = list(connection.execute(sa.select(ledger.c.run_id).where(
            ledger.c.table_name == root, ledger.c.copied > ledger.c.deleted)).scalars())
        if not runs:
            return []
        twin = archive[root]
        candidates = list(connection.execute(sa.select(twin.c.id).where(
            twin.c.archive_run_id.in_(runs))).scalars())
    table = sources.tables["primary"][root]
    present: list[int] = []
    with sources.engines["primary"].connect() as connection:
        for start in range(0, len(candidates), SHARED_KEY_CHUNK):
            chunk = candidates[start:start + SHARED_KEY_CHUNK]
            present += connection.execute(sa.select(table.c.id).where(table.c.id.in_(chunk))
                                          ).scalars()
    return present


def exclude_shared(sources: ReportSources, archive: SourceTables, root: str) -> SourceTables:
    """ARCHIVE's tables without the rows of ``root`` keys still in PRIMARY (and their children)."""
    keys = shared_keys(sources, root) if root in archive.tables else []
    if not keys:
        return archive
    tables: dict[str, sa.FromClause] = dict(archive.tables)
    primary = sources.tables["primary"]
    for name, table in archive.tables.items():
        column = "id" if name == root else next(
            (fk.parent.name for fk in primary.tables[name].foreign_keys
             if fk.column.table.name == root), None) if name in primary.tables else None
        if column is not None:
            tables[name] = sa.select(table).where(table.c[column].not_in(keys)).subquery(name)
    return replace(archive, tables=tables)


def reference_data(sources: ReportSources) -> ReferenceData:
    products = sources.tables["primary"]["products"]
    with sources.engines["primary"].connect() as connection:
        categories = dict(connection.execute(sa.select(products.c.id, products.c.category)).all())
    return ReferenceData(product_categories=categories)


def aggregate_frame(sources: ReportSources, request: ReportRequest,
                    report: AggregateReport) -> pd.DataFrame:
    """Combine each database's partial aggregates exactly, then finish and filter."""
    reference = reference_data(sources)
    frames = []
    for name in sources_of(request):
        tables = sources.tables[name]
        if name == "archive" and request.source == "all":
            tables = exclude_shared(sources, tables, report.root)
        statement = report.partials(tables, request.params, reference)
        with sources.engines[name].connect() as connection:
            result = connection.execute(statement)
            frames.append(pd.DataFrame(result.fetchall(), columns=list(result.keys())))
    partial_columns = [*report.group_by, *report.combine]
    frames = [f for f in frames if not f.empty]
    if frames:
        combined = pd.concat(frames, ignore_index=True)
        combined = combined.groupby(list(report.group_by), as_index=False, sort=False).agg(
            dict(report.combine))
    else:
        combined = pd.DataFrame({c: pd.Series(dtype="object") for c in partial_columns})
    rows = combined.to_dict("records")
    apply_lookups(sources, report.lookups, rows)
    frame = pd.DataFrame(rows, columns=[*partial_columns, *(lu.column for lu in report.lookups)])
    # Filter as early as the column exists: before a pivot folds it away, after ``finish``
    # for columns it derives (a rank).
    early = [c for c in request.filters if c.column in frame.columns]
    frame = _filter_frame(frame, early)
    if report.finish is not None:
        frame = report.finish(frame, request.params)
    return _filter_frame(frame, [c for c in request.filters if c not in early])


def _filter_frame(frame: pd.DataFrame, filters: Sequence[FilterClause]) -> pd.DataFrame:
    for clause in filters:
        column = frame[clause.column]
        mask = {"eq": lambda c, v: c == v, "ne": lambda c, v: c != v,
                "in": lambda c, v: c.isin(v), "gt": lambda c, v: c > v,
                "gte": lambda c, v: c >= v, "lt": lambda c, v: c < v,
                "lte": lambda c, v: c <= v}[clause.op](column, clause.value)
        frame = frame[mask]
    return frame


def _page_frame(frame: pd.DataFrame, request: ReportRequest,
                cursor: PageCursor | None) -> Iterator[dict[str, Any]]:
    order = [request.sort, *request.key]
    frame = frame.sort_values(order, ascending=not request.descending, kind="stable",
                              na_position="last")
    for row in frame.to_dict("records"):
        record = {k: _python(v) for k, v in row.items()}
        position = tuple(record[c] for c in order)
        if cursor is not None:
            if request.descending and not position < cursor.values:
                continue
            if not request.descending and not position > cursor.values:
                continue
        yield record


def _python(value: Any) -> Any:
    """numpy and pandas scalars to plain Python values (JSON, cursors, comparisons)."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if value is None or (not isinstance(value, str | datetime) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def count_rows(sources: ReportSources, request: ReportRequest) -> tuple[int, str]:
    """Count matching rows: ``exact``, or the planner's ``estimated`` on PostgreSQL."""
    report = request.report
    if isinstance(report, AggregateReport):
        return len(aggregate_frame(sources, request, report)), "exact"
    assert isinstance(report, RowReport)
    total, kind = 0, "exact"
    for name in sources_of(request):
        tables = sources.tables[name]
        if name == "archive" and request.source == "all":
            tables = exclude_shared(sources, tables, report.root)
        subquery = report.query(tables, request.params).subquery("report")
        filtered = sa.select(subquery).where(*filter_conditions(subquery, request.filters))
        engine = sources.engines[name]
        with engine.connect() as connection:
            if request.count == "estimated" and engine.dialect.name == "postgresql":
                compiled = filtered.compile(dialect=engine.dialect,
                                            compile_kwargs={"render_postcompile": True})
                plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}",
                                                  compiled.params).scalar_one()
                total += int(plan[0]["Plan"]["Plan Rows"])
                kind = "estimated"
            else:
                total += int(connection.execute(
                    sa.select(sa.func.count()).select_from(filtered.subquery())).scalar_one())
    return total, kind
