"""How rows travel between the two databases: read, upsert, read back.

Two interchangeable paths with one interface:

* :class:`CopyTransfer`, when both databases are PostgreSQL: ``COPY (SELECT ... FOR UPDATE
  SKIP LOCKED) TO STDOUT`` out of PRIMARY, ``COPY`` straight into the archive table (inside
  a savepoint; through a staging table and ``ON CONFLICT`` only when a key is already
  there), and the batch read back with ``COPY``. Rows stay COPY text lines the whole way,
  so the read-back comparison is exact and no Python objects are built per row.
* :class:`CoreTransfer` everywhere else (one database of each kind; two SQLite files take
  :mod:`archive.attached` instead, which copies inside SQLite): Core
  selects and a dialect upsert (``ON CONFLICT DO UPDATE``) through ``executemany``.

Rows are hashable (COPY lines or tuples), so the read-back check compares the selected and
the archived rows as exact multisets: stricter than a checksum, and cheaper in Python.

The upsert overwrites a copy left by an interrupted run with the locked PRIMARY row: PRIMARY
holds the truth until its delete commits (see docs/architecture.md); never a row archived
for good under a key PRIMARY reused (:mod:`archive.reused_keys`). It returns how many
overwritten rows each earlier run had copied, so the ledger can hand them over.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from archive.keys import Key, is_integer, key_after, key_columns, key_filters
from archive.policy import ArchivePolicy, ChildLink
from archive.reused_keys import PendingWindows, TakenOver, may_overwrite, taken_over
from sediment.core.pgcopy import (
    copy_lines_in,
    copy_out,
    decode_field,
    encode_value,
    quote_columns,
    render,
)
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT


class Transfer(Protocol):
    """Moves one table's rows of a batch; rows are opaque to everyone else.

    Keys (and other column values) are read out of rows with :meth:`values_of`, in the
    form :func:`archive.keys.key_filters` binds: Python values on the portable path, the
    server's text form for non-integer columns on the COPY path. :meth:`key_expression`
    selects a column in that same form, so that keys read by a plain query compare equal
    to keys read out of rows.
    """

    def select_roots(self, connection: sa.Connection, policy: ArchivePolicy, cutoff: datetime,
                     after_key: Key | None, limit: int) -> list[Any]: ...

    def select_children(self, connection: sa.Connection, link: ChildLink,
                        parent_values: Sequence[Key]) -> list[Any]: ...

    def values_of(self, table: sa.Table, columns: Sequence[sa.Column[Any]],
                  rows: Sequence[Any]) -> list[Key]: ...

    def key_expression(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]: ...

    def upsert(self, connection: sa.Connection, twin: sa.Table, columns: Sequence[str],
               rows: list[Any], keys: Sequence[Key], *, run_id: int,
               archived_at: datetime, windows: PendingWindows) -> TakenOver: ...

    def read_back(self, connection: sa.Connection, twin: sa.Table, columns: Sequence[str],
                  *, run_id: int, archived_at: datetime) -> list[Any]: ...


def transfer_for(primary: sa.Engine, archive: sa.Engine) -> Transfer:
    """Pick the fastest path the two backends allow."""
    if primary.dialect.name == archive.dialect.name == "postgresql":
        return CopyTransfer()
    return CoreTransfer()


def positions(table: sa.Table, columns: Sequence[sa.Column[Any]]) -> list[int]:
    """Where ``columns`` sit in a row of ``table`` (rows hold every column, in table order)."""
    names = [column.name for column in table.columns]
    return [names.index(column.name) for column in columns]


def roots_query(policy: ArchivePolicy, cutoff: datetime, after_key: Key | None,
                limit: int, dialect: sa.Dialect) -> sa.Select[Any]:
    """The next batch of aged roots by key (keyset, never OFFSET), locked on PostgreSQL."""
    query = sa.select(*policy.root.columns).where(policy.aged(cutoff))
    if after_key is not None:
        query = query.where(key_after(policy.key, after_key, dialect))
    query = query.order_by(*policy.key).limit(limit)
    if dialect.name == "postgresql":
        # A row an application transaction holds stays for a later batch instead of
        # blocking this one; a second runner likewise skips what the first has locked.
        query = query.with_for_update(skip_locked=True)
    return query


def children_query(link: ChildLink, of_parents: sa.ColumnElement[bool],
                   dialect: sa.Dialect) -> sa.Select[Any]:
    """Children matching one :func:`key_filters` condition, locked on PostgreSQL.

    ``SKIP LOCKED``: a child an application transaction holds would otherwise make the
    batch wait out ``lock_timeout`` and fail, again on every retry. What was skipped shows
    in :func:`some_children_held`, and its root stays for a later run.
    """
    query = sa.select(*link.table.columns).where(of_parents).order_by(*link.key)
    return query.with_for_update(skip_locked=True) if dialect.name == "postgresql" else query


def some_children_held(connection: sa.Connection, link: ChildLink,
                       parent_values: Sequence[Key], locked: int) -> bool:
    """Whether a writer holds some child of ``parent_values``: the locking select got
    ``locked`` rows, and an unlocked count finds more. Never on SQLite, whose write lock
    covers the whole database.

    Counted after the locking select. No child can appear in between, since inserting one
    needs a lock on its parent, which the batch holds.
    """
    if connection.dialect.name != "postgresql":
        return False
    total = 0
    for condition in key_filters(link.columns, parent_values, connection.dialect):
        total += int(connection.execute(
            sa.select(sa.func.count()).select_from(link.table).where(condition)).scalar_one())
    return total > locked


def child_parents(connection: sa.Connection, transfer: Transfer, link: ChildLink,
                  parent_values: Sequence[Key]) -> dict[Key, Key]:
    """Every child of ``parent_values``: its key -> the parent value it references, read
    without locks, in the transfer's key form."""
    parents: dict[Key, Key] = {}
    width = len(link.key)
    expressions = [transfer.key_expression(column) for column in (*link.key, *link.columns)]
    for condition in key_filters(link.columns, parent_values, connection.dialect):
        for row in connection.execute(sa.select(*expressions).where(condition)):
            parents[tuple(row[:width])] = tuple(row[width:])
    return parents


def written_by(twin: sa.Table, columns: Sequence[str], run_id: int,
               archived_at: datetime) -> sa.Select[Any]:
    """The twin's rows one batch attempt wrote: every row it inserted or overwrote carries
    its run id and its ``archived_at``, and no other row can (a retry stamps anew).

    Reading these back, not the rows under the batch's keys, finds the same rows when the
    write did its job, and any row it did not write is missing from the comparison: a
    range of the ``(archive_run_id, archived_at)`` index instead of one probe per key.
    """
    return sa.select(*(twin.c[name] for name in columns)).where(
        twin.c[ARCHIVE_RUN_ID] == run_id, twin.c[ARCHIVED_AT] == archived_at)


class CoreTransfer:
    """Rows as tuples in table-column order; portable across backends."""

    def select_roots(self, connection: sa.Connection, policy: ArchivePolicy, cutoff: datetime,
                     after_key: Key | None, limit: int) -> list[Any]:
        query = roots_query(policy, cutoff, after_key, limit, connection.dialect)
        return [tuple(row) for row in connection.execute(query)]

    def select_children(self, connection: sa.Connection, link: ChildLink,
                        parent_values: Sequence[Key]) -> list[Any]:
        rows: list[Any] = []
        for condition in key_filters(link.columns, parent_values, connection.dialect):
            query = children_query(link, condition, connection.dialect)
            rows.extend(tuple(row) for row in connection.execute(query))
        return rows

    def values_of(self, table: sa.Table, columns: Sequence[sa.Column[Any]],
                  rows: Sequence[Any]) -> list[Key]:
        at = positions(table, columns)
        if at == [0]:
            return [(row[0],) for row in rows]
        return [tuple(row[i] for i in at) for row in rows]

    def key_expression(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        return column

    def upsert(self, connection: sa.Connection, twin: sa.Table, columns: Sequence[str],
               rows: list[Any], keys: Sequence[Key], *, run_id: int,
               archived_at: datetime, windows: PendingWindows) -> TakenOver:
        is_leftover = windows.leftover(twin.c)
        owners = taken_over(connection, twin, is_leftover, (
            sa.select().select_from(twin).where(condition)
            for condition in key_filters(key_columns(twin), keys, connection.dialect)))
        insert = (postgresql.insert(twin) if connection.dialect.name == "postgresql"
                  else sqlite.insert(twin))
        key = [column.name for column in key_columns(twin)]
        overwrite = [*columns, ARCHIVED_AT, ARCHIVE_RUN_ID]
        statement = insert.on_conflict_do_update(
            index_elements=key,
            set_={name: insert.excluded[name] for name in overwrite if name not in key},
            where=may_overwrite(connection, twin.c, insert.excluded, columns, is_leftover),
        )
        stamp = {ARCHIVED_AT: archived_at, ARCHIVE_RUN_ID: run_id}
        connection.execute(statement, [{**dict(zip(columns, row, strict=True)), **stamp}
                                       for row in rows])
        return owners

    def read_back(self, connection: sa.Connection, twin: sa.Table, columns: Sequence[str],
                  *, run_id: int, archived_at: datetime) -> list[Any]:
        query = written_by(twin, columns, run_id, archived_at)
        return [tuple(row) for row in connection.execute(query)]


class CopyTransfer:
    """Rows as PostgreSQL COPY text lines, never parsed except for the keys they carry:
    integer columns as ``int``, any other column as the server's text form of its value."""

    def select_roots(self, connection: sa.Connection, policy: ArchivePolicy, cutoff: datetime,
                     after_key: Key | None, limit: int) -> list[Any]:
        query = roots_query(policy, cutoff, after_key, limit, connection.dialect)
        return copy_out(connection, render(connection, query))

    def select_children(self, connection: sa.Connection, link: ChildLink,
                        parent_values: Sequence[Key]) -> list[Any]:
        (of_parents,) = key_filters(link.columns, parent_values, connection.dialect)
        return copy_out(connection, render(connection, children_query(
            link, of_parents, connection.dialect)))

    def values_of(self, table: sa.Table, columns: Sequence[sa.Column[Any]],
                  rows: Sequence[Any]) -> list[Key]:
        at = positions(table, columns)
        if at == [0] and is_integer(columns[0]):  # the common case, without splitting lines
            return [(int(row.partition("\t")[0]),) for row in rows]
        readers = [_integer_field if is_integer(column) else decode_field for column in columns]
        last = max(at)
        if len(at) == 1:
            ((read, i),) = zip(readers, at, strict=True)
            return [(read(row.split("\t", last + 1)[i]),) for row in rows]
        values: list[Key] = []
        for row in rows:
            fields = row.split("\t", last + 1)
            values.append(tuple(read(fields[i]) for read, i in zip(readers, at, strict=True)))
        return values

    def key_expression(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        # ``::text`` runs the type's output function, as COPY does.
        return column if is_integer(column) else sa.cast(column, sa.Text)

    def upsert(self, connection: sa.Connection, twin: sa.Table, columns: Sequence[str],
               rows: list[Any], keys: Sequence[Key], *, run_id: int,
               archived_at: datetime, windows: PendingWindows) -> TakenOver:
        """COPY the lines straight into the archive table; stage them if a key is there.

        A key is already archived only after an interrupted run, so the direct COPY (in a
        savepoint) almost always succeeds. On a unique violation the batch goes through a
        staging table instead: ``ON CONFLICT DO NOTHING``, then the earlier owners are
        counted and their rows overwritten from the stage, which is what ``ON CONFLICT DO
        UPDATE`` would do, with the ledger hand-over it needs: those rows
        :func:`~archive.reused_keys.may_overwrite` lets it overwrite.
        """
        stamp = f"\t{encode_value(archived_at)}\t{run_id}"
        names = quote_columns(connection, [*columns, ARCHIVED_AT, ARCHIVE_RUN_ID])
        target = f"{_quoted_table(connection, twin)} ({names})"
        try:
            with connection.begin_nested():
                copy_lines_in(connection, target, rows, suffix=stamp)
            return TakenOver()
        except sa.exc.IntegrityError:
            return self._upsert_staged(connection, twin, columns, rows, run_id, archived_at,
                                       windows)

    def _upsert_staged(self, connection: sa.Connection, twin: sa.Table, columns: Sequence[str],
                       rows: list[Any], run_id: int, archived_at: datetime,
                       windows: PendingWindows) -> TakenOver:
        quote = connection.dialect.identifier_preparer.quote
        stage, table = quote(f"sediment_stage_{twin.name}"), _quoted_table(connection, twin)
        names = quote_columns(connection, columns)
        key = [quote(column.name) for column in key_columns(twin)]
        connection.exec_driver_sql(
            f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA"
        )
        copy_lines_in(connection, f"{stage} ({names})", rows)
        stamp = {"archived_at": archived_at, "run_id": run_id}
        inserted = connection.exec_driver_sql(
            f"INSERT INTO {table} ({names}, {ARCHIVED_AT}, {ARCHIVE_RUN_ID}) "
            f"SELECT {names}, %(archived_at)s, %(run_id)s FROM {stage} "
            f"ON CONFLICT ({', '.join(key)}) DO NOTHING", stamp,
        ).rowcount
        if inserted == len(rows):
            return TakenOver()
        # Rows this statement inserted carry this batch's stamp; the others were there before:
        # those it may overwrite are counted by their earlier run, then overwritten.
        existing = twin.alias("t")
        staged = sa.table(f"sediment_stage_{twin.name}", *(sa.column(c) for c in columns)
                          ).alias("s")
        is_leftover = windows.leftover(existing.c)
        conflicting = sa.and_(
            *(existing.c[column.name] == staged.c[column.name] for column in key_columns(twin)),
            existing.c[ARCHIVED_AT] != archived_at,
            may_overwrite(connection, existing.c, staged.c, columns, is_leftover))
        owners = taken_over(connection, existing, is_leftover,
                            [sa.select().select_from(existing, staged).where(conflicting)])
        allowed = conflicting.compile(dialect=connection.dialect)
        updates = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in columns if quote(c) not in key)
        assignments = f"{updates}, " if updates else ""
        connection.exec_driver_sql(
            f"UPDATE {table} t SET {assignments}{ARCHIVED_AT} = %(archived_at)s, "
            f"{ARCHIVE_RUN_ID} = %(run_id)s FROM {stage} s WHERE {allowed}",
            {**stamp, **allowed.params})
        return owners

    def read_back(self, connection: sa.Connection, twin: sa.Table, columns: Sequence[str],
                  *, run_id: int, archived_at: datetime) -> list[Any]:
        query = written_by(twin, columns, run_id, archived_at)
        return copy_out(connection, render(connection, query))


def _integer_field(field: str) -> int | None:
    return None if field == "\\N" else int(field)


def _quoted_table(connection: sa.Connection, table: sa.Table) -> str:
    """``schema.table`` (or ``table``), each part quoted as the dialect requires."""
    preparer = connection.dialect.identifier_preparer
    return preparer.format_table(table)
