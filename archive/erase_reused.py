"""Keys that name two rows, which an erasure must not follow.

An erasure follows keys across the two databases: an order found in ARCHIVE leads to its
items by the order's key, in ARCHIVE and in PRIMARY. Once PRIMARY reuses an archived row's
key for a new row (a SQLite table without ``AUTOINCREMENT`` issues ``max(rowid) + 1``
again; ``TRUNCATE ... RESTART IDENTITY`` resets a sequence), that key leads from the
subject's archived order to another subject's new order and its items, which were erased
with the subject's. The archiver refuses such keys until PRIMARY's row gets another one
(:mod:`archive.reused_keys`); an erasure refuses them too, before anything goes.

A key in both databases is no reuse when both rows hold the same values (PRIMARY restored
from a backup), or when ARCHIVE's row is a copy an interrupted batch left (its run's
pending window is still open): both rows are then the same row of the same subject.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from archive import ledger
from archive.keys import Key, key_columns, key_filters
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT

if TYPE_CHECKING:
    from archive.erase import ErasurePlan


def reused_in_plan(engines: Any, twins: Mapping[str, sa.Table], plan: ErasurePlan
                   ) -> list[str]:
    """One line per table of an erasure whose found keys PRIMARY reused, saying what to
    do; empty when none is. Keys are counted, never shown: the line goes to the ledger,
    which keeps no personal data.
    """
    lines: list[str] = []
    with engines.primary.connect() as primary, engines.archive.connect() as archive:
        windows: dict[int, datetime] | None = None
        for table in plan.tables:
            twin = twins.get(table.fullname)
            keys = set().union(*(rows.keys for (_, name), rows in plan.found.items()
                                 if name == table.fullname))
            if twin is None or not keys:
                continue
            # The columns both hold (a twin may lack one PRIMARY added since, unevolved).
            columns = [column.name for column in table.columns if column.name in twin.c]
            live = _rows_by_key(primary, table, columns, keys)
            archived = _rows_by_key(archive, twin, [*columns, ARCHIVE_RUN_ID, ARCHIVED_AT],
                                    keys.intersection(live))
            if not archived:
                continue
            if windows is None:
                windows = ledger.open_windows(archive)
            reused = sum(1 for key, row in archived.items()
                         if not _same(live[key], row[:-2])
                         and not ledger.left_over(windows, row[-2], row[-1]))
            if reused:
                one = reused == 1
                lines.append(
                    f"{table.fullname}: {reused:,} {'row' if one else 'rows'} this erasure "
                    f"reaches {'has a key' if one else 'have keys'} that PRIMARY reused for a "
                    f"new row after archiving the old one, so it would reach another "
                    f"subject's rows through {'it' if one else 'them'}; give PRIMARY's "
                    "rows other keys ('archive verify' lists the keys in both databases), "
                    "then erase again")
    return lines


def _rows_by_key(connection: sa.Connection, table: sa.Table, columns: Sequence[str],
                 keys: set[Key]) -> dict[Key, tuple[Any, ...]]:
    """``table``'s rows under ``keys`` (those it holds), as tuples of ``columns``."""
    key = key_columns(table)
    width = len(key)
    rows: dict[Key, tuple[Any, ...]] = {}
    for condition in key_filters(key, sorted(keys, key=str), connection.dialect):
        query = sa.select(*key, *(table.c[name] for name in columns)).where(condition)
        rows.update((tuple(row[:width]), tuple(row[width:]))
                    for row in connection.execute(query))
    return rows


def _same(live: Sequence[Any], archived: Sequence[Any]) -> bool:
    """Whether two rows hold the same values (NaN equal to NaN, as a stored copy is)."""
    return all(a == b or (a != a and b != b)  # only NaN is unequal to itself
               for a, b in zip(live, archived, strict=True))
