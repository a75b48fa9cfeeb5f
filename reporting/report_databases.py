"""What reports read: each database's read-only engine and tables, and the rows both share.

A row caught between the archiver's ARCHIVE commit and its PRIMARY delete is in both
databases. The ledger records, per run, since when it may have left such rows
(:func:`pending_windows`); ARCHIVE rows whose keys are still in PRIMARY are left out of
ARCHIVE's side, so merged results count every row once. Keys of any shape work the same:
one column or several, integers, UUIDs or text. Row pages check only the rows they are
about to return (:func:`drop_shared_rows`); aggregates and exact counts exclude the few
shared keys in SQL (:func:`exclude_shared`). When no batch is in flight all of this costs
one small indexed ledger query.

Reference columns that live only in PRIMARY (names, categories) reach ARCHIVE rows through
:func:`apply_lookups`: one query per page, never a join across databases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from reporting.lru import LRUCache
from reporting.reports.base import DatabaseTables, Lookup, Report
from reporting.request import ReportRequest
from sediment.core.databases import ARCHIVE, DATABASES, PRIMARY, Database
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT

#: A row's primary key values, in the key's column order.
Key = tuple[Any, ...]

SHARED_KEY_CHUNK = 5000
#: Row-report statements kept per app, one per request shape (see reporting.statements).
CACHED_STATEMENTS = 512
#: Combined aggregate results kept per app (see reporting.aggregation); each holds one
#: row per group, so a few dozen bound the memory.
CACHED_AGGREGATES = 32


@dataclass(frozen=True)
class ReportDatabases:
    """The read-only engines and the tables of each database, as the app built them."""

    engines: Mapping[Database, sa.Engine]
    tables: Mapping[Database, DatabaseTables]
    #: Built statements by request shape; they refer to these tables, so they live here.
    statements: LRUCache[Any, Any] = field(
        default_factory=lambda: LRUCache(CACHED_STATEMENTS), compare=False, repr=False)
    #: Seconds a combined aggregate result is reused (0: never), and the results.
    aggregate_ttl: float = 0.0
    aggregates: LRUCache[Any, Any] = field(
        default_factory=lambda: LRUCache(CACHED_AGGREGATES), compare=False, repr=False)


def databases_of(request: ReportRequest) -> list[Database]:
    """The databases a request reads, PRIMARY first."""
    return list(DATABASES) if request.source == "all" else [request.source]


def apply_lookups(databases: ReportDatabases, request: ReportRequest, lookups: Sequence[Lookup],
                  rows: list[dict[str, Any]]) -> None:
    """Fill reference columns (names, categories) from PRIMARY, one query per table, in the
    rows where they are still empty: those that came from ARCHIVE, which has no reference
    tables to join. Nothing to do when the request reads PRIMARY alone: its statement joined
    them already. (In a merge, a PRIMARY row whose join found nothing is asked again, and
    again finds nothing.)"""
    if ARCHIVE not in databases_of(request):
        return
    by_table: dict[tuple[str, str], list[Lookup]] = {}
    for lookup in lookups:
        by_table.setdefault((lookup.table, lookup.key), []).append(lookup)
    for (table_name, key), group in by_table.items():
        empty = [row for row in rows if row.get(group[0].column) is None]
        ids = sorted({row[key] for row in empty if row.get(key) is not None})
        found_rows = reference_rows(databases, table_name, [lookup.value for lookup in group], ids)
        values: dict[Any, Any] = {row[0]: row[1:] for row in found_rows}
        for row in empty:
            found = values.get(row.get(key))
            for index, lookup in enumerate(group):
                row[lookup.column] = found[index] if found else None


def reference_rows(databases: ReportDatabases, table_name: str, columns: Sequence[str],
                   ids: Sequence[Any]) -> list[Sequence[Any]]:
    """``(id, *columns)`` of the PRIMARY reference rows with these ids: one query."""
    if not len(ids):
        return []
    table = databases.tables[PRIMARY][table_name]
    engine = databases.engines[PRIMARY]
    query = sa.select(table.c.id, *(table.c[name] for name in columns)).where(
        in_parameter(table.c.id, "keys", engine.dialect.name))
    with engine.connect() as connection:
        return list(connection.execute(query, {"keys": list(ids)}).all())


def in_parameter(column: sa.ColumnElement[Any], name: str, dialect: str,
                 type_: sa.types.TypeEngine[Any] | None = None) -> sa.ColumnElement[bool]:
    """``column IN :name``, the list bound at execution: one array parameter on PostgreSQL
    (an expanding ``IN`` of a hundred values is rendered and planned anew on every request),
    an expanding parameter elsewhere. The array is cast to the column's type: psycopg2
    sends UUIDs and enum labels as text, which PostgreSQL will not compare with them.

    :param type_: the values' type, when not the column's.
    """
    type_ = type_ if type_ is not None else column.type
    if dialect == "postgresql":
        array = postgresql.ARRAY(type_)
        return column == sa.any_(sa.cast(sa.bindparam(name, type_=array), array))
    return column.in_(sa.bindparam(name, expanding=True, type_=type_))


def pending_windows(databases: ReportDatabases, root: str | None) -> list[tuple[int, datetime]]:
    """``(run, since)`` of every run of ``root``'s policy that may have left rows in both
    databases: those it archived since ``since``. One indexed ledger query; empty unless a
    batch is in flight or a run died mid-batch (see ``archive_run_tables.pending_since``)."""
    if root is None:
        return []
    ledger = databases.tables[ARCHIVE]["archive_run_tables"]
    query = sa.select(ledger.c.run_id, ledger.c.pending_since).where(
        ledger.c.table_name == root, ledger.c.pending_since.is_not(None))
    with databases.engines[ARCHIVE].connect() as connection:
        return [(int(run), since) for run, since in connection.execute(query)]


def key_names(databases: ReportDatabases, table_name: str) -> tuple[str, ...]:
    """The primary key columns of PRIMARY's ``table_name``."""
    return tuple(column.name for column in databases.tables[PRIMARY][table_name].primary_key)


def present_in_primary(databases: ReportDatabases, table_name: str,
                       keys: Sequence[Key]) -> set[Key]:
    """Which of ``keys`` are still in PRIMARY's ``table_name``: indexed lookups, a few
    thousand keys each."""
    table = databases.tables[PRIMARY][table_name]
    columns = [table.c[name] for name in key_names(databases, table_name)]
    engine = databases.engines[PRIMARY]
    present: set[Key] = set()
    with engine.connect() as connection:
        for start in range(0, len(keys), SHARED_KEY_CHUNK):
            chunk = list(keys[start:start + SHARED_KEY_CHUNK])
            if len(columns) == 1:
                query = sa.select(*columns).where(
                    in_parameter(columns[0], "keys", engine.dialect.name))
                found = connection.execute(query, {"keys": [key[0] for key in chunk]})
            else:
                found = connection.execute(sa.select(*columns).where(
                    sa.tuple_(*columns).in_(chunk)))
            present.update(tuple(row) for row in found)
    return present


def drop_shared_rows(databases: ReportDatabases, table_name: str,
                     rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ARCHIVE ``rows`` of ``table_name`` minus those whose key is still in PRIMARY
    (PRIMARY's copy wins). Call only while a pending window is open: the cost is one lookup
    of the rows at hand, whatever the size of the run that left them."""
    names = key_names(databases, table_name)
    keys = [tuple(row[name] for name in names) for row in rows]
    shared = present_in_primary(databases, table_name, keys)
    if not shared:
        return rows
    return [row for row, key in zip(rows, keys, strict=True) if key not in shared]


def shared_keys(databases: ReportDatabases, table_name: str,
                windows: Sequence[tuple[int, datetime]]) -> list[Key]:
    """Keys of ``table_name`` present in both databases (left by an in-flight or killed
    batch). Bounded by the pending windows, not by their runs: the candidates are ARCHIVE
    rows a pending run stamped since its window opened, then checked against PRIMARY."""
    twin = databases.tables[ARCHIVE][table_name]
    columns = [twin.c[name] for name in key_names(databases, table_name)]
    stamped = sa.or_(*(sa.and_(twin.c[ARCHIVE_RUN_ID] == run, twin.c[ARCHIVED_AT] >= since)
                       for run, since in windows))
    with databases.engines[ARCHIVE].connect() as connection:
        candidates = [tuple(row) for row in connection.execute(
            sa.select(*columns).where(stamped))]
    return sorted(present_in_primary(databases, table_name, candidates))


def exclude_shared(databases: ReportDatabases, archive: DatabaseTables,
                   report: Report) -> DatabaseTables:
    """ARCHIVE's tables without the rows of ``report``'s keyed table still in PRIMARY (and,
    for the policy's root, the rows of its children that point at them)."""
    table_name = report.rows_table
    windows = pending_windows(databases, report.root) \
        if table_name is not None and table_name in archive.tables else []
    keys = shared_keys(databases, table_name, windows) if windows and table_name else []
    if not keys or table_name is None:
        return archive
    tables: dict[str, sa.FromClause] = dict(archive.tables)
    names = key_names(databases, table_name)
    table = archive.tables[table_name]
    tables[table_name] = sa.select(table).where(
        sa.not_(sa.tuple_(*(table.c[name] for name in names)).in_(keys))).subquery(table_name)
    if table_name == report.root and len(names) == 1:
        primary = databases.tables[PRIMARY]
        for name, child in archive.tables.items():
            column = next((fk.parent.name for fk in primary.tables[name].foreign_keys
                           if fk.column.table.name == table_name), None) \
                if name in primary.tables and name != table_name else None
            if column is not None:
                tables[name] = sa.select(child).where(
                    child.c[column].not_in([key[0] for key in keys])).subquery(name)
    return replace(archive, tables=tables)
