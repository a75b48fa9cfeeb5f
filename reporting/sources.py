"""Where reports read from: the read-only engines and tables, and what both databases share.

A row caught between the archiver's ARCHIVE commit and its PRIMARY delete is in both
databases. The ledger says which runs may have left such rows (``copied > deleted``); the
ones still in PRIMARY are excluded from ARCHIVE's side, so merged results count every row
once. When no run is in flight that costs one small ledger query.

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
from reporting.reports.base import Lookup, SourceTables
from reporting.request import ReportRequest

SHARED_KEY_CHUNK = 5000
#: Row-report statements kept per app, one per request shape (see reporting.statements).
CACHED_STATEMENTS = 512


@dataclass(frozen=True)
class ReportSources:
    """The read-only engines and the tables of each database, as the app built them."""

    engines: Mapping[str, sa.Engine]
    tables: Mapping[str, SourceTables]
    #: Built statements by request shape; they refer to these tables, so they live here.
    statements: LRUCache[Any, Any] = field(
        default_factory=lambda: LRUCache(CACHED_STATEMENTS), compare=False, repr=False)


def sources_of(request: ReportRequest) -> list[str]:
    return ["primary", "archive"] if request.source == "all" else [request.source]


def apply_lookups(sources: ReportSources, lookups: Sequence[Lookup],
                  rows: list[dict[str, Any]]) -> None:
    """Fill reference columns (names, categories) from PRIMARY, one query per table, in the
    rows where they are still empty: those that came from ARCHIVE, which has no reference
    tables to join. (A PRIMARY row whose join found nothing is asked again, and again finds
    nothing.)"""
    primary = sources.tables["primary"]
    by_table: dict[tuple[str, str], list[Lookup]] = {}
    for lookup in lookups:
        by_table.setdefault((lookup.table, lookup.key), []).append(lookup)
    for (table_name, key), group in by_table.items():
        empty = [row for row in rows if row.get(group[0].column) is None]
        ids = sorted({row[key] for row in empty if row.get(key) is not None})
        table = primary[table_name]
        values: dict[Any, Any] = {}
        if ids:
            engine = sources.engines["primary"]
            query = sa.select(table.c.id, *(table.c[lookup.value] for lookup in group)).where(
                in_parameter(table.c.id, "keys", engine.dialect.name))
            with engine.connect() as connection:
                values = {row[0]: row[1:] for row in connection.execute(query, {"keys": ids})}
        for row in empty:
            found = values.get(row.get(key))
            for index, lookup in enumerate(group):
                row[lookup.column] = found[index] if found else None


def in_parameter(column: sa.ColumnElement[Any], name: str,
                 dialect: str) -> sa.ColumnElement[bool]:
    """``column IN :name``, the list bound at execution: one array parameter on PostgreSQL
    (an expanding ``IN`` of a hundred values is rendered and planned anew on every request),
    an expanding parameter elsewhere."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(column.type)))
    return column.in_(sa.bindparam(name, expanding=True))


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
