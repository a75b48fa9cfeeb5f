"""A row report's SQL on one database, built once per request shape and reused.

Building a report's statement (its query, the lookup joins, the filters, the keyset
condition) costs about as much Python as running it. Yet the statement depends only on the
*shape* of a request: the report, the database, the report's parameters, which filters with
which operators, and the sort. Every value a client varies from page to page (filter values,
the cursor, the limit) is a bound parameter, so one statement object serves every request of
that shape, and SQLAlchemy's compiled cache, keyed on that object, is hit as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from reporting.pagination import PageCursor, after, cursor_values
from reporting.pgfetch import DirectStatement, direct_statement
from reporting.report_databases import ReportDatabases, exclude_shared, in_parameter
from reporting.reports.base import DatabaseTables, Lookup, RowReport
from reporting.request import COMPARISONS, FilterClause, ReportRequest
from sediment.core.databases import ARCHIVE, Database


@dataclass(frozen=True)
class SourceQuery:
    """One row report's statements on one database for one request shape."""

    #: The report, lookups joined, filters applied: no order, no limit.
    filtered: sa.Select[Any]
    #: ``filtered`` ordered by the sort column then the key: every row, in page order.
    ordered: sa.Select[Any]
    #: The first page: ordered by sort column then key, ``LIMIT :limit``.
    first_page: sa.Select[Any]
    #: Any later page: as ``first_page``, strictly after the cursor's values.
    next_page: sa.Select[Any]
    #: The two pages compiled for the psycopg2 cursor, where that is possible.
    first_page_direct: DirectStatement | None = None
    next_page_direct: DirectStatement | None = None

    def statement(self, cursor: PageCursor | None) -> sa.Select[Any]:
        return self.first_page if cursor is None else self.next_page

    def direct(self, cursor: PageCursor | None) -> DirectStatement | None:
        return self.first_page_direct if cursor is None else self.next_page_direct

    def values(self, filters: Sequence[FilterClause], cursor: PageCursor | None = None,
               limit: int | None = None) -> dict[str, Any]:
        """The bound values of one request of this shape."""
        values = {_filter_name(index): list(clause.value) if clause.op == "in" else clause.value
                  for index, clause in enumerate(filters)}
        if cursor is not None:
            values |= cursor_values(cursor)
        if limit is not None:
            values["limit"] = limit
        return values


def source_query(databases: ReportDatabases, request: ReportRequest, report: RowReport,
                 name: Database, *, without_shared: bool = False) -> SourceQuery:
    """The statements of ``request`` on database ``name``, from the cache when possible.

    :param without_shared: on ARCHIVE's side of ``source=all``, leave out in SQL the rows
        caught between an archiver's two commits (for counts, which see every row; pages
        drop them as they read them). Such a statement holds their keys, so it is built
        afresh whenever there are any.
    """
    tables = databases.tables[name]
    if without_shared and name == ARCHIVE and request.source == "all":
        tables = exclude_shared(databases, tables, report.root)
    dialect = databases.engines[name].dialect
    if tables is not databases.tables[name]:
        return build_query(request, report, tables, dialect)
    shape = (name, report.name, tuple(sorted(request.params.items())),
             tuple((clause.column, clause.op) for clause in request.filters),
             request.sort, request.descending)
    query: SourceQuery = databases.statements.get_or_build(
        shape, lambda: build_query(request, report, tables, dialect))
    return query


def build_query(request: ReportRequest, report: RowReport, tables: DatabaseTables,
                dialect: sa.Dialect) -> SourceQuery:
    subquery = report.query(tables, request.params).subquery("report")
    order_columns = [subquery.c[c] for c in (request.sort, *request.key)]
    joined, lookups = join_lookups(subquery, tables, report.lookups)
    # The report's columns in its declared order, so each row is built once, in its final
    # shape: a lookup this database cannot join is a NULL for apply_lookups to fill.
    selected = [lookups[c.name] if c.name in lookups else subquery.c[c.name]
                for c in report.columns]
    filtered = sa.select(*selected).select_from(joined).where(
        *filter_conditions(subquery, request.filters, tables.dialect))
    ordered = filtered.order_by(*(c.desc() if request.descending else c.asc()
                                  for c in order_columns))
    limit = sa.bindparam("limit", type_=sa.Integer)
    first_page = ordered.limit(limit)
    next_page = ordered.where(after(order_columns, request.descending)).limit(limit)
    return SourceQuery(
        filtered=filtered, ordered=ordered, first_page=first_page, next_page=next_page,
        first_page_direct=direct_statement(first_page, dialect),
        next_page_direct=direct_statement(next_page, dialect))


def join_lookups(subquery: sa.Subquery, tables: DatabaseTables, lookups: Sequence[Lookup]
                 ) -> tuple[sa.FromClause, dict[str, sa.ColumnElement[Any]]]:
    """Join the reference tables that live in this database (PRIMARY) in SQL; the columns
    of those that do not (ARCHIVE) are NULL, filled by
    :func:`reporting.report_databases.apply_lookups` from PRIMARY."""
    joined: sa.FromClause = subquery
    columns: dict[str, sa.ColumnElement[Any]] = {}
    for index, lookup in enumerate(lookups):
        if lookup.table not in tables.tables:
            columns[lookup.column] = sa.null().label(lookup.column)
            continue
        reference = tables[lookup.table].alias(f"lookup_{index}")
        joined = joined.outerjoin(reference, reference.c.id == subquery.c[lookup.key])
        columns[lookup.column] = reference.c[lookup.value].label(lookup.column)
    return joined, columns


def filter_conditions(source: sa.Subquery, filters: Sequence[FilterClause], dialect: str
                      ) -> list[sa.ColumnElement[bool]]:
    """One condition per filter, its value a bound parameter named by its position."""
    conditions = []
    for index, clause in enumerate(filters):
        column, name = source.c[clause.column], _filter_name(index)
        if clause.op == "in":
            conditions.append(in_parameter(column, name, dialect))
            continue
        value = sa.bindparam(name, type_=column.type)
        conditions.append(COMPARISONS[clause.op](column, value))
    return conditions


def _filter_name(index: int) -> str:
    return f"filter_{index}"
