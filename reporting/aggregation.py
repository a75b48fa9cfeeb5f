"""Aggregate reports: per-database partial aggregates combined exactly in pandas.

Sums add, minima and maxima combine, and ``count(DISTINCT ...)`` adds because a row lives in
one database (rows caught in both are excluded from ARCHIVE's side first). The combined
groups are then finished (lookups, derived columns, pivots), filtered, sorted and paged in
Python: their number is bounded by the groups, not by the rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from reporting.pagination import PageCursor
from reporting.reports.base import AggregateReport, ReferenceData
from reporting.request import FilterClause, ReportRequest
from reporting.sources import ReportSources, apply_lookups, exclude_shared, sources_of


def reference_data(sources: ReportSources) -> ReferenceData:
    products = sources.tables["primary"]["products"]
    with sources.engines["primary"].connect() as connection:
        categories = dict(connection.execute(sa.select(products.c.id, products.c.category)).all())
    return ReferenceData(product_categories=categories)


@dataclass(frozen=True)
class Combined:
    """An aggregate report's combined, finished and filtered groups, and when they were
    computed (``meta.computed_at``)."""

    frame: pd.DataFrame
    computed_at: datetime
    ledger_version: tuple[int, int]


def combined_groups(sources: ReportSources, request: ReportRequest,
                    report: AggregateReport) -> Combined:
    """:func:`aggregate_frame`, reused for ``sources.aggregate_ttl`` seconds per query.

    Every page of an aggregate report needs all of its groups, so without reuse page ten
    costs what page one does. Application writes show after at most the TTL. Archiving
    moves rows between the databases without changing their union, so a ``source=all``
    result stays exact while a run goes on (rows caught in both are counted once either
    way); a one-database result is dropped as soon as the archiver has moved rows (the
    ledger's version changed).
    """
    if sources.aggregate_ttl <= 0:
        return Combined(aggregate_frame(sources, request, report), datetime.now(UTC), (0, 0))
    version = ledger_version(sources) if request.source != "all" else (0, 0)
    key = (report.name, request.source, tuple(sorted(request.params.items())),
           tuple((clause.column, clause.op, clause.value) for clause in request.filters))
    cached: Combined | None = sources.aggregates.get(key)
    now = datetime.now(UTC)
    if cached is not None and cached.ledger_version == version \
            and (now - cached.computed_at).total_seconds() < sources.aggregate_ttl:
        return cached
    fresh = Combined(aggregate_frame(sources, request, report), now, version)
    sources.aggregates.put(key, fresh)
    return fresh


def ledger_version(sources: ReportSources) -> tuple[int, int]:
    """Changes whenever an archival run starts, records a batch or ends: the newest run's id
    and the batches of the runs in progress (two indexed look-ups)."""
    runs = sources.tables["archive"]["archive_runs"]
    newest = sa.select(sa.func.coalesce(sa.func.max(runs.c.id), 0)).scalar_subquery()
    running = (sa.select(sa.func.coalesce(sa.func.sum(runs.c.batches), 0))
               .where(runs.c.status == "running").scalar_subquery())
    with sources.engines["archive"].connect() as connection:
        first, second = connection.execute(sa.select(newest, running)).one()
    return int(first), int(second)


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


def page_frame(frame: pd.DataFrame, request: ReportRequest,
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
