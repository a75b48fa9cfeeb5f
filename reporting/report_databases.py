"""What reports read: each database's read-only engine and tables, and the rows both share.

A row caught between the archiver's ARCHIVE commit and its PRIMARY delete is in both
databases. The ledger records the key range of every batch that may have left such rows
(:func:`pending_ranges`); ARCHIVE rows in those ranges that are still in PRIMARY are left
out of ARCHIVE's side, so merged results count every row once. Row pages check only the
rows they are about to return (:func:`drop_shared_rows`); aggregates and exact counts
exclude the few shared keys in SQL (:func:`exclude_shared`). When no batch is in flight all
of this costs one small indexed ledger query.

Reference columns that live only in PRIMARY (names, categories) reach ARCHIVE rows through
:func:`apply_lookups`: one query per page, never a join across databases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from reporting.lru import LRUCache
from reporting.reports.base import DatabaseTables, Lookup
from reporting.request import ReportRequest
from sediment.core.databases import ARCHIVE, DATABASES, PRIMARY, Database

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


def apply_lookups(databases: ReportDatabases, lookups: Sequence[Lookup],
                  rows: list[dict[str, Any]]) -> None:
    """Fill reference columns (names, categories) from PRIMARY, one query per table, in the
    rows where they are still empty: those that came from ARCHIVE, which has no reference
    tables to join. (A PRIMARY row whose join found nothing is asked again, and again finds
    nothing.)"""
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


def in_parameter(column: sa.ColumnElement[Any], name: str,
                 dialect: str) -> sa.ColumnElement[bool]:
    """``column IN :name``, the list bound at execution: one array parameter on PostgreSQL
    (an expanding ``IN`` of a hundred values is rendered and planned anew on every request),
    an expanding parameter elsewhere."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(column.type)))
    return column.in_(sa.bindparam(name, expanding=True))


def pending_ranges(databases: ReportDatabases, root: str) -> list[tuple[int, int, int]]:
    """``(run, low, high)`` of every archival batch of ``root`` that may have left rows in
    both databases: one indexed ledger query, empty unless a batch is in flight or a run
    died mid-batch (see ``archive_run_tables.pending_low``)."""
    ledger = databases.tables[ARCHIVE]["archive_run_tables"]
    query = sa.select(ledger.c.run_id, ledger.c.pending_low, ledger.c.pending_high).where(
        ledger.c.table_name == root, ledger.c.pending_low.is_not(None))
    with databases.engines[ARCHIVE].connect() as connection:
        return [(int(run), int(low), int(high)) for run, low, high in connection.execute(query)]


def present_in_primary(databases: ReportDatabases, root: str, keys: Sequence[int]) -> set[int]:
    """Which of ``keys`` are still in PRIMARY's ``root``: one indexed lookup."""
    if not keys:
        return set()
    table = databases.tables[PRIMARY][root]
    engine = databases.engines[PRIMARY]
    query = sa.select(table.c.id).where(in_parameter(table.c.id, "keys", engine.dialect.name))
    with engine.connect() as connection:
        return set(connection.execute(query, {"keys": list(keys)}).scalars())


def drop_shared_rows(databases: ReportDatabases, root: str, key: str,
                     ranges: Sequence[tuple[int, int, int]],
                     rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ARCHIVE ``rows`` minus those whose ``key`` is still in PRIMARY (PRIMARY's copy wins).

    Only keys inside a pending range can be in both databases, and only those of the rows
    at hand are looked up: the cost is one lookup of at most a page of keys, whatever the
    size of the run that left them.
    """
    suspects = [row[key] for row in rows
                if any(low <= row[key] <= high for _run, low, high in ranges)]
    shared = present_in_primary(databases, root, suspects)
    return [row for row in rows if row[key] not in shared] if shared else rows


def shared_keys(databases: ReportDatabases, root: str) -> list[int]:
    """Keys of ``root`` present in both databases (left by an in-flight or killed batch).

    Bounded by the pending batches, not by their runs: the candidates are ARCHIVE rows
    stamped with a pending run inside its key range, then checked against PRIMARY.
    """
    ranges = pending_ranges(databases, root)
    if not ranges:
        return []
    twin = databases.tables[ARCHIVE][root]
    candidates: list[int] = []
    with databases.engines[ARCHIVE].connect() as connection:
        for run, low, high in ranges:
            candidates += connection.execute(sa.select(twin.c.id).where(
                twin.c.archive_run_id == run, twin.c.id.between(low, high))).scalars()
    present: list[int] = []
    for start in range(0, len(candidates), SHARED_KEY_CHUNK):
        present += present_in_primary(databases, root, candidates[start:start + SHARED_KEY_CHUNK])
    return sorted(present)


def exclude_shared(databases: ReportDatabases, archive: DatabaseTables,
                   root: str) -> DatabaseTables:
    """ARCHIVE's tables without the rows of ``root`` keys still in PRIMARY (and their children)."""
    keys = shared_keys(databases, root) if root in archive.tables else []
    if not keys:
        return archive
    tables: dict[str, sa.FromClause] = dict(archive.tables)
    primary = databases.tables[PRIMARY]
    for name, table in archive.tables.items():
        column = "id" if name == root else next(
            (fk.parent.name for fk in primary.tables[name].foreign_keys
             if fk.column.table.name == root), None) if name in primary.tables else None
        if column is not None:
            tables[name] = sa.select(table).where(table.c[column].not_in(keys)).subquery(name)
    return replace(archive, tables=tables)
