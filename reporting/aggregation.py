"""Aggregate reports: per-database partial aggregates combined exactly in pandas.

Sums add, minima and maxima combine, and ``count(DISTINCT ...)`` adds because a row lives in
one database (rows caught in both are excluded from ARCHIVE's side first). The combined
groups are then finished (lookups, derived columns, pivots), filtered, sorted and paged in
Python: their number is bounded by the groups, not by the rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from reporting.pagination import PageCursor
from reporting.report_databases import (
    ReportDatabases,
    databases_of,
    exclude_shared,
    reference_rows,
)
from reporting.reports.base import AggregateReport, Lookup, ReferenceData
from reporting.request import COMPARISONS, FilterClause, ReportRequest
from sediment.core.databases import ARCHIVE, PRIMARY, Database


def reference_data(databases: ReportDatabases) -> ReferenceData:
    products = databases.tables[PRIMARY]["products"]
    with databases.engines[PRIMARY].connect() as connection:
        categories = dict(connection.execute(sa.select(products.c.id, products.c.category)).all())
    return ReferenceData(product_categories=categories)


@dataclass(frozen=True)
class Combined:
    """An aggregate report's combined, finished and filtered groups, and when they were
    computed (``meta.computed_at``)."""

    frame: pd.DataFrame
    computed_at: datetime
    ledger_version: tuple[int, int]
    #: Row positions of ``frame`` in each sort order asked for so far.
    orders: dict[tuple[tuple[str, ...], bool], Any] = field(
        default_factory=dict, compare=False, repr=False)

    def order(self, columns: tuple[str, ...], descending: bool) -> Any:
        """Positions of the rows sorted by ``columns`` (missing values last), computed once
        per order; concurrent first requests may both compute it, with the same result."""
        key = (columns, descending)
        positions = self.orders.get(key)
        if positions is None:
            ranked = self.frame.reset_index(drop=True).sort_values(
                list(columns), ascending=not descending, kind="stable", na_position="last")
            positions = ranked.index.to_numpy()
            self.orders[key] = positions
        return positions


def combined_groups(databases: ReportDatabases, request: ReportRequest,
                    report: AggregateReport) -> Combined:
    """:func:`aggregate_frame`, reused for ``databases.aggregate_ttl`` seconds per query.

    Every page of an aggregate report needs all of its groups, so without reuse page ten
    costs what page one does. Application writes show after at most the TTL. Archiving
    moves rows between the databases without changing their union, so a ``source=all``
    result stays exact while a run goes on (rows caught in both are counted once either
    way); a one-database result is dropped as soon as the archiver has moved rows (the
    ledger's version changed).
    """
    if databases.aggregate_ttl <= 0:
        return Combined(aggregate_frame(databases, request, report), datetime.now(UTC), (0, 0))
    version = ledger_version(databases) if request.source != "all" else (0, 0)
    key = (report.name, request.source, tuple(sorted(request.params.items())),
           tuple((clause.column, clause.op, clause.value) for clause in request.filters))
    cached: Combined | None = databases.aggregates.get(key)
    now = datetime.now(UTC)
    if cached is not None and cached.ledger_version == version \
            and (now - cached.computed_at).total_seconds() < databases.aggregate_ttl:
        return cached
    fresh = Combined(aggregate_frame(databases, request, report), now, version)
    databases.aggregates.put(key, fresh)
    return fresh


def ledger_version(databases: ReportDatabases) -> tuple[int, int]:
    """Changes whenever an archival run starts, records a batch or ends: the newest run's id
    and the batches of the runs in progress (two indexed look-ups)."""
    runs = databases.tables[ARCHIVE]["archive_runs"]
    newest = sa.select(sa.func.coalesce(sa.func.max(runs.c.id), 0)).scalar_subquery()
    running = (sa.select(sa.func.coalesce(sa.func.sum(runs.c.batches), 0))
               .where(runs.c.status == "running").scalar_subquery())
    with databases.engines[ARCHIVE].connect() as connection:
        first, second = connection.execute(sa.select(newest, running)).one()
    return int(first), int(second)


def aggregate_frame(databases: ReportDatabases, request: ReportRequest,
                    report: AggregateReport) -> pd.DataFrame:
    """Combine each database's partial aggregates exactly, then finish and filter.

    The two databases aggregate at the same time (each query is the database's work, not
    this process's), and their partials become columns without a detour through row dicts.
    """
    reference = reference_data(databases)

    def partial(name: Database) -> pd.DataFrame:
        tables = databases.tables[name]
        if name == ARCHIVE and request.source == "all":
            tables = exclude_shared(databases, tables, report)
        statement = report.partials(tables, request.params, reference)
        with databases.engines[name].connect() as connection:
            result = connection.execute(statement)
            return _columns_frame(list(result.keys()), result.fetchall())

    names = databases_of(request)
    if len(names) == 1:
        frames = [partial(names[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            frames = list(pool.map(partial, names))
    partial_columns = [*report.group_by, *report.combine]
    frames = [f for f in frames if not f.empty]
    if frames:
        combined = pd.concat(frames, ignore_index=True)
        combined = combined.groupby(list(report.group_by), as_index=False, sort=False).agg(
            dict(report.combine))
    else:
        combined = pd.DataFrame({c: pd.Series(dtype="object") for c in partial_columns})
    frame = _with_lookups(databases, report.lookups, combined)
    frame = frame[[*partial_columns, *(lookup.column for lookup in report.lookups)]]
    # Filter as early as the column exists: before a pivot folds it away, after ``finish``
    # for columns it derives (a rank).
    early = [c for c in request.filters if c.column in frame.columns]
    frame = _filter_frame(frame, early)
    if report.finish is not None:
        frame = report.finish(frame, request.params)
    return _filter_frame(frame, [c for c in request.filters if c not in early])


def _columns_frame(names: list[str], rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype="object") for name in names})
    columns = zip(*rows, strict=True)  # rows of one result: all of the same length
    return pd.DataFrame({name: list(values) for name, values in zip(names, columns,
                                                                     strict=True)})


def _with_lookups(databases: ReportDatabases, lookups: Sequence[Lookup],
                  frame: pd.DataFrame) -> pd.DataFrame:
    """Add reference columns (names) from PRIMARY: one query and one merge per table."""
    by_table: dict[tuple[str, str], list[Lookup]] = {}
    for lookup in lookups:
        by_table.setdefault((lookup.table, lookup.key), []).append(lookup)
    for (table, key), group in by_table.items():
        ids = frame[key].dropna().unique().tolist() if len(frame) else []
        found = reference_rows(databases, table, [lookup.value for lookup in group], ids)
        values = _columns_frame(["__lookup_key", *(lookup.column for lookup in group)], found)
        if frame[key].dtype != values["__lookup_key"].dtype:
            values["__lookup_key"] = values["__lookup_key"].astype(frame[key].dtype)
        frame = frame.merge(values, how="left", left_on=key, right_on="__lookup_key",
                            sort=False).drop(columns="__lookup_key")
    return frame


def _filter_frame(frame: pd.DataFrame, filters: Sequence[FilterClause]) -> pd.DataFrame:
    for clause in filters:
        column = frame[clause.column]
        mask = (column.isin(clause.value) if clause.op == "in"
                else COMPARISONS[clause.op](column, clause.value))
        frame = frame[mask]
    return frame


#: Groups turned into Python rows at a time when streaming (a CSV of every group).
ROWS_PER_CHUNK = 1000


def page_frame(combined: Combined, request: ReportRequest,
               cursor: PageCursor | None) -> Iterator[dict[str, Any]]:
    """The groups in the request's order, from just after ``cursor``.

    The sort order is computed once per combined result and sort (an index array, kept with
    the result), the cursor is found by binary search in it, and only the rows read are
    turned into Python values: page ten of 100,000 groups costs what page one does.
    """
    frame = combined.frame
    order = [request.sort, *request.key]
    positions = combined.order(tuple(order), request.descending)
    columns = [frame.columns.get_loc(c) for c in order]

    def values_at(index: int) -> tuple[Any, ...]:
        row = int(positions[index])
        return tuple(_python(frame.iat[row, column]) for column in columns)

    start = 0
    if cursor is not None:
        low, high = 0, len(positions)
        while low < high:  # the first group strictly after the cursor in page order
            middle = (low + high) // 2
            here = values_at(middle)
            after = here < cursor.values if request.descending else here > cursor.values
            if after:
                high = middle
            else:
                low = middle + 1
        start = low
    for chunk in range(start, len(positions), ROWS_PER_CHUNK):
        rows = frame.iloc[positions[chunk:chunk + ROWS_PER_CHUNK]].to_dict("records")
        for row in rows:
            yield {k: _python(v) for k, v in row.items()}


def _python(value: Any) -> Any:
    """numpy and pandas scalars to plain Python values (JSON, cursors, comparisons)."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if value is None or (not isinstance(value, str | datetime) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value
