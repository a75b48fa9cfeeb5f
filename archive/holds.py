"""Legal holds: rows no purge or expiry touches while they are held.

Holds live in ARCHIVE (``archive_holds``), never in an application-owned PRIMARY. A hold
names one row of a policy's table by its key; it covers that row wherever it is (PRIMARY
or ARCHIVE) and, since a root travels with its children, the root it belongs to and all
of that root's rows. Who placed it, when and why are kept as the command line gave them,
and so is its release.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from archive.keys import Key, key_columns, key_of_texts, key_text, keys_in, stored_key
from archive.scope import Level, ascend
from sediment.core.schema.archive import ArchiveHold

holds: sa.Table = ArchiveHold.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Hold:
    """One hold as the ledger keeps it."""

    id: int
    table: str
    key: tuple[str, ...]
    reason: str
    held_by: str
    held_at: datetime
    released_by: str | None = None
    released_at: datetime | None = None
    release_reason: str | None = None

    @property
    def shown_key(self) -> str:
        return ",".join(self.key)


def add_holds(archive: sa.Engine, table: str, keys: Sequence[Key], *, reason: str,
              held_by: str, now: datetime,
              before_commit: Callable[[sa.Connection], None] | None = None,
              ) -> tuple[list[Hold], list[Hold]]:
    """Hold each key of ``table``.

    :param before_commit: called with the transaction's connection once the holds are
        written; raise to place none. A sweep's batch cannot start (or end) in between, so
        what it checks (that the rows exist) stays true once the holds are in force.
    :returns: the holds placed, and the holds already in force for some of the keys
        (those keys get no second hold).
    """
    placed: list[Hold] = []
    with archive.begin() as connection:
        current = {hold.key: hold for hold in _active(connection, [table])}
        existing = [current[_texts(key)] for key in keys if _texts(key) in current]
        for key in keys:
            if _texts(key) in current:
                continue
            hold_id = int(connection.execute(holds.insert().values(
                table_name=table, row_key=stored_key(key), reason=reason, held_by=held_by,
                held_at=now).returning(holds.c.id)).scalar_one())
            hold = Hold(hold_id, table, _texts(key), reason, held_by, now)
            current[hold.key] = hold
            placed.append(hold)
        if before_commit is not None:
            before_commit(connection)
    return placed, existing


def release_holds(archive: sa.Engine, ids: Sequence[int], *, released_by: str, reason: str,
                  now: datetime) -> tuple[list[Hold], list[int]]:
    """Release holds by id.

    :returns: the holds released, and the ids that named no hold in force.
    """
    with archive.begin() as connection:
        active = {hold.id: hold for hold in _active(connection)}
        released = [active[hold_id] for hold_id in ids if hold_id in active]
        if released:
            connection.execute(holds.update().where(
                holds.c.id.in_([hold.id for hold in released])).values(
                released_by=released_by, released_at=now, release_reason=reason))
    return released, [hold_id for hold_id in ids if hold_id not in active]


def list_holds(archive: sa.Engine, *, released: bool = False) -> list[Hold]:
    """Holds in force (and released ones too, when asked), oldest first."""
    query = sa.select(holds).order_by(holds.c.id)
    if not released:
        query = query.where(holds.c.released_at.is_(None))
    with archive.connect() as connection:
        return [_hold(row) for row in connection.execute(query)]


def held_keys(archive: sa.Connection | sa.Engine, tables: Mapping[str, sa.Table]
              ) -> dict[str, list[Key]]:
    """The keys held now, per table of ``tables`` (by full name), read as the columns'
    types."""
    if isinstance(archive, sa.Engine):
        with archive.connect() as connection:
            return held_keys(connection, tables)
    found: dict[str, list[Key]] = {}
    for hold in _active(archive, list(tables)):
        found.setdefault(hold.table, []).append(key_of_texts(tables[hold.table], hold.key))
    return found


def held_roots(levels: Sequence[Level], held: Mapping[str, Sequence[Key]]
               ) -> sa.ColumnElement[bool] | None:
    """The condition on the root table (``levels[0]``) selecting every root that is held
    itself or has a held row among its children; ``None`` when nothing is held.

    ``held`` is keyed by the tables' full names, which PRIMARY's tables and their ARCHIVE
    twins share.
    """
    conditions: list[sa.ColumnElement[bool]] = []
    for level in levels:
        keys = held.get(level.table.fullname)
        if not keys:
            continue
        rows = keys_in(key_columns(level.table), list(keys))
        conditions.append(ascend(levels, level.table.fullname, rows))
    return sa.or_(*conditions) if conditions else None


def _active(connection: sa.Connection, tables: Sequence[str] | None = None) -> list[Hold]:
    query = sa.select(holds).where(holds.c.released_at.is_(None))
    if tables is not None:
        query = query.where(holds.c.table_name.in_(tables))
    return [_hold(row) for row in connection.execute(query.order_by(holds.c.id))]


def _hold(row: sa.Row[Any]) -> Hold:
    return Hold(row.id, row.table_name, tuple(json.loads(row.row_key)), row.reason,
                row.held_by, row.held_at, row.released_by, row.released_at, row.release_reason)


def _texts(key: Key) -> tuple[str, ...]:
    return tuple(key_text(value) for value in key)
