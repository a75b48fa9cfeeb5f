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
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from reporting.pagination import PageCursor, after, after_nullable, cursor_values
from reporting.pgfetch import DirectStatement, direct_statement
from reporting.report_databases import ReportDatabases, exclude_shared, in_parameter
from reporting.reports.base import DatabaseTables, Lookup, RowReport
from reporting.request import COMPARISONS, FilterClause, ReportRequest
from reporting.stored_values import CursorBound, StoredDateTime, instant_condition
from sediment.core.collation import in_code_point_order
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
    #: For a nullable sort column: a later page whose cursor's sort value is NULL.
    next_null_page: sa.Select[Any] | None = None
    #: The pages compiled for the psycopg2 cursor, where that is possible.
    first_page_direct: DirectStatement | None = None
    next_page_direct: DirectStatement | None = None
    next_null_page_direct: DirectStatement | None = None

    def statement(self, cursor: PageCursor | None) -> sa.Select[Any]:
        if cursor is None:
            return self.first_page
        if self.next_null_page is not None and cursor.values[0] is None:
            return self.next_null_page
        return self.next_page

    def direct(self, cursor: PageCursor | None) -> DirectStatement | None:
        if cursor is None:
            return self.first_page_direct
        if self.next_null_page is not None and cursor.values[0] is None:
            return self.next_null_page_direct
        return self.next_page_direct

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
        tables = exclude_shared(databases, tables, report)
    dialect = databases.engines[name].dialect
    if tables is not databases.tables[name]:
        return build_query(request, report, tables, dialect)
    shape = (name, report.collection, report.name, tuple(sorted(request.params.items())),
             tuple((clause.column, clause.op) for clause in request.filters),
             request.sort, request.descending, request.source == "all")
    query: SourceQuery = databases.statements.get_or_build(
        shape, lambda: build_query(request, report, tables, dialect))
    return query


def build_query(request: ReportRequest, report: RowReport, tables: DatabaseTables,
                dialect: sa.Dialect) -> SourceQuery:
    subquery = report.query(tables, request.params).subquery("report")
    merged = request.source == "all"
    order_columns = [in_code_point_order(subquery.c[c], tables.dialect) if merged
                     else subquery.c[c] for c in request.order]
    bound_types = [bound_type(subquery.c[c]) for c in request.order]
    if tables.dialect == "sqlite":  # a cursor may hold a value as SQLite stored it
        bound_types = [CursorBound(typed) for typed in bound_types]
    joined, lookups = join_lookups(subquery, tables, report.lookups)
    # The report's columns in its declared order, so each row is built once, in its final
    # shape: a lookup this database cannot join is a NULL for apply_lookups to fill.
    selected = [lookups[c.name] if c.name in lookups else subquery.c[c.name]
                for c in report.columns]
    filtered = sa.select(*selected).select_from(joined).where(
        *filter_conditions(subquery, request.filters, tables.dialect))
    nullable = sorts_nullable(request)
    ordered = filtered.order_by(*order_terms(request, order_columns))
    limit = sa.bindparam("limit", type_=sa.Integer)
    first_page = ordered.limit(limit)
    next_null_page = None
    if nullable:
        next_page = ordered.where(after_nullable(
            order_columns, request.descending, cursor_is_null=False, types=bound_types))
        next_null_page = ordered.where(after_nullable(
            order_columns, request.descending, cursor_is_null=True, types=bound_types)
        ).limit(limit)
    else:
        next_page = ordered.where(after(order_columns, request.descending, types=bound_types))
    next_page = next_page.limit(limit)
    return SourceQuery(
        filtered=filtered, ordered=ordered, first_page=first_page, next_page=next_page,
        next_null_page=next_null_page,
        first_page_direct=direct_statement(first_page, dialect),
        next_page_direct=direct_statement(next_page, dialect),
        next_null_page_direct=(direct_statement(next_null_page, dialect)
                               if next_null_page is not None else None))


def sorts_nullable(request: ReportRequest) -> bool:
    """Whether ``request`` sorts on a column that can hold NULL (keys never do)."""
    return request.sort not in request.key and request.report.column(request.sort).nullable


def order_terms(request: ReportRequest, columns: Sequence[sa.ColumnElement[Any]]
                ) -> list[sa.ColumnElement[Any]]:
    """The ORDER BY of ``request`` over its order ``columns`` (sort column, then key). A
    nullable sort column has its NULLs last ascending, first descending: SQLite's default
    is the opposite; PostgreSQL's is this, so its indexes still serve it."""
    terms: list[sa.ColumnElement[Any]] = [
        column.desc() if request.descending else column.asc() for column in columns]
    if sorts_nullable(request):
        first = columns[0]
        terms[0] = first.desc().nulls_first() if request.descending else first.asc().nulls_last()
    return terms


def bound_type(column: sa.ColumnElement[Any]) -> sa.types.TypeEngine[Any]:
    """The type a filter or cursor value is bound with for ``column``: the column's own,
    except that a timestamp without a time zone takes the UTC instant as its naive UTC
    wall-clock time (the API's instants are always aware)."""
    if isinstance(column.type, sa.DateTime) and not column.type.timezone:
        return NaiveUTC()
    return column.type


class NaiveUTC(sa.types.TypeDecorator[datetime]):
    """Binds an aware instant to a ``timestamp without time zone`` as UTC wall-clock time."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value



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
    conditions: list[sa.ColumnElement[bool]] = []
    for index, clause in enumerate(filters):
        column, name = source.c[clause.column], _filter_name(index)
        # An application's timestamp on SQLite is compared as instants, not as its text.
        as_instant = isinstance(column.type, StoredDateTime)
        if clause.op == "in":
            conditions.append(instant_condition(column, "in", name) if as_instant
                              else in_parameter(column, name, dialect, bound_type(column)))
        elif clause.op == "isnull":
            conditions.append(column.is_(None) == sa.bindparam(name, type_=sa.Boolean))
        elif clause.op in ("like", "ilike"):
            pattern = sa.bindparam(name, type_=sa.String)
            matched = _pattern_matchable(column, dialect)
            conditions.append(matched.like(pattern) if clause.op == "like"
                              else matched.ilike(pattern))
        elif as_instant:
            conditions.append(instant_condition(column, clause.op, name))
        else:
            value = sa.bindparam(name, type_=bound_type(column))
            conditions.append(COMPARISONS[clause.op](column, value))
    return conditions


def _pattern_matchable(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """``column`` as LIKE can match it. PostgreSQL refuses LIKE and ILIKE under a
    nondeterministic collation (an application's case-insensitive ICU collation, ``CREATE
    COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)``): a
    column with a collation of its own is matched in the database's default one, which is
    always deterministic. ``C`` and ``POSIX`` are, and keep their indexes."""
    collation = getattr(column.type, "collation", None)
    if dialect == "postgresql" and collation and collation not in ("C", "POSIX"):
        return column.collate("default")
    return column


def _filter_name(index: int) -> str:
    return f"filter_{index}"
