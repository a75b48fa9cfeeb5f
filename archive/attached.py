"""Both databases SQLite files: SQLite moves the rows itself, none passes through Python.

The batch keeps the paired transactions of :mod:`archive.mover`, on two connections:

1. PRIMARY (the batch connection): ``BEGIN IMMEDIATE`` takes PRIMARY's write lock, held until
   step 3 commits, so no writer can change the batch's rows in between. The batch's root
   keys are read by keyset; the batch is every aged root in ``(after, last]`` and its
   children, to any depth.
2. ARCHIVE, on a connection with PRIMARY attached as ``sediment_primary``: a deferred
   ``BEGIN`` (an immediate one would ask for PRIMARY's write lock too); per table, roots
   first, ``INSERT INTO twin SELECT ... FROM sediment_primary.table WHERE <batch>`` with the
   run's stamp (``ON CONFLICT DO UPDATE`` over a copy an interrupted run left), then
   verified in SQL: as many rows carry the stamp as the batch holds, and no batch row is
   missing from them (``EXCEPT``, which compares NULLs as equal). Ledger, ``COMMIT``.
   The attached PRIMARY shows its last committed state, which is what step 1 read:
   PRIMARY's only writer is step 1's connection, and it has written nothing yet.
3. PRIMARY: children (deepest first) then roots are deleted by the same conditions, each
   count checked against the copy; ``COMMIT``.

Values are copied as SQLite stores them, so a copy is the original byte for byte: no
conversion to Python and back, which is what made the row-by-row path 0.13x the engine's
own speed (``bench/archive_bench.py --sqlite``).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from archive import ledger
from archive.keys import Key, columns_in, integer_key, key_after, key_columns
from archive.mover import (
    ArchiveError,
    BatchResult,
    ReusedKeys,
    Timeouts,
    VerificationError,
    check_columns,
    check_deleted,
)
from archive.policy import ArchivePolicy
from archive.reused_keys import (
    PendingWindows,
    TakenOver,
    log_taken_over,
    may_overwrite,
    reused_keys,
    taken_over,
)
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT

logger = logging.getLogger(__name__)

#: The name PRIMARY is attached under on the ARCHIVE connection.
ATTACHED = "sediment_primary"
#: Statements on PRIMARY's tables, run on the ARCHIVE connection, name them in ATTACHED.
_ON_PRIMARY = {"schema_translate_map": {None: ATTACHED}}


def applies(primary: sa.Engine, archive: sa.Engine) -> bool:
    """Whether both databases are SQLite files, one attachable to the other."""
    return (primary.dialect.name == archive.dialect.name == "sqlite"
            and bool(primary.url.database) and primary.url.database != ":memory:")


@dataclass(frozen=True)
class _Part:
    """One table of a batch: the condition selecting its rows in PRIMARY, and its twin (as
    ``main.<twin>`` on the ARCHIVE connection, where PRIMARY's tables are translated)."""

    table: sa.Table
    twin: sa.Table
    selected: sa.ColumnElement[bool]


@dataclass
class AttachedBatch:
    """A batch between its two commits on the attached path (see the module docstring)."""

    policy: ArchivePolicy
    parts: list[_Part]
    copied: dict[str, int]
    run_id: int
    last_key: Key

    @property
    def roots(self) -> int:
        return self.copied[self.policy.root.fullname]

    def delete(self, source: sa.Connection) -> BatchResult:
        """Step 3, in the PRIMARY transaction that selected the batch; the caller commits."""
        deleted: dict[str, int] = {}
        for part in reversed(self.parts):  # deepest children first
            count = source.execute(part.table.delete().where(part.selected)).rowcount
            check_deleted(part.table, count, self.copied[part.table.fullname])
            deleted[part.table.fullname] = count
        in_order = {part.table.fullname: deleted[part.table.fullname] for part in self.parts}
        return BatchResult(last_key=self.last_key, roots=self.roots, selected=dict(self.copied),
                           deleted=in_order)


def copy_batch(source: sa.Connection, archive: sa.Engine, policy: ArchivePolicy, *,
               cutoff: datetime, after_key: Key | None, limit: int, run_id: int,
               timeouts: Timeouts) -> AttachedBatch | None:
    """Steps 1 and 2 (see the module docstring), in the caller's open PRIMARY transaction
    on ``source``; ``timeouts`` are PostgreSQL's and do not apply here.

    :returns: ``None`` when no aged root is left after ``after_key``.
    """
    del timeouts
    aged = policy.aged(cutoff)
    if after_key is not None:
        aged = aged & key_after(policy.key, after_key, source.dialect)
    batch = sa.select(*policy.key).where(aged).order_by(*policy.key).limit(limit).subquery()
    # One pass over the batch's keys: its last key, its size, its lowest first key column.
    bounds = source.execute(sa.select(
        *batch.c, sa.func.count().over(), sa.func.min(batch.c[0]).over(),
    ).order_by(*(column.desc() for column in batch.c)).limit(1)).first()
    if bounds is None:
        return None
    *last_values, roots, lowest = bounds
    last: Key = tuple(last_values)
    parts = _parts(policy, aged & ~key_after(policy.key, last, source.dialect))
    check_columns(source, policy.tables)
    archived_at = datetime.now(UTC)  # per attempt: a retry must see its own earlier copy
    copied: dict[str, int] = {}
    with _attached(archive, source.engine) as target, target.begin():
        windows = PendingWindows(target, policy.root.fullname)
        for part in parts:
            pending = (ledger.Pending(archived_at, _integer_range(policy, lowest, last))
                       if part.table is policy.root else None)
            copied[part.table.fullname] = _copy_and_verify(target, part, run_id, archived_at,
                                                           pending, windows)
    if copied[policy.root.fullname] != roots:
        raise ArchiveError(f"{policy.root.fullname}: selected {roots} roots, copied "
                           f"{copied[policy.root.fullname]}; nothing was deleted")
    return AttachedBatch(policy, parts, copied, run_id, last)


def _parts(policy: ArchivePolicy, roots: sa.ColumnElement[bool]) -> list[_Part]:
    """Each table's rows of the batch, as a condition: the roots', then each child's
    through its parent's (parents first)."""
    selected = {policy.root.fullname: roots}
    parts = [_Part(policy.root, _in_main(policy.archive_root), roots)]
    for link in policy.children:
        parents = sa.select(*link.referenced).where(selected[link.parent.fullname])
        selected[link.table.fullname] = columns_in(link.columns, parents)
        parts.append(_Part(link.table, _in_main(link.archive_table),
                           selected[link.table.fullname]))
    return parts


@functools.cache
def _in_main(twin: sa.Table) -> sa.Table:
    """``twin`` named ``main.<twin>``: on the ARCHIVE connection, where unqualified names are
    translated to the attached PRIMARY, its own tables are the ``main`` database's."""
    return twin.to_metadata(sa.MetaData(), schema="main")


def _copy_and_verify(target: sa.Connection, part: _Part, run_id: int,
                     archived_at: datetime, pending: ledger.Pending | None,
                     windows: PendingWindows) -> int:
    """Copy one table's rows of the batch, verify them, count them in the ledger.

    :param windows: the batch's pending windows, which tell a copy left behind from a row
        archived for good.
    :returns: how many rows were copied.
    :raises ReusedKeys: when ARCHIVE kept archived rows under the batch's keys.
    """
    columns = [column.name for column in part.table.columns]
    twin = part.twin
    rows = sa.select(*part.table.columns,
                     sa.bindparam("archived_at", archived_at, type_=twin.c[ARCHIVED_AT].type),
                     sa.bindparam("run_id", run_id, type_=sa.Integer)).where(part.selected)
    insert = sqlite.insert(twin).from_select([*columns, ARCHIVED_AT, ARCHIVE_RUN_ID], rows)
    taken_over = TakenOver()
    try:
        # A key is already archived only after an interrupted run: try the plain insert.
        with target.begin_nested():
            copied = target.execute(insert, execution_options=_ON_PRIMARY).rowcount
    except sa.exc.IntegrityError:
        taken_over, copied = _upsert(target, part, insert, windows)
    stamped = (twin.c[ARCHIVE_RUN_ID] == run_id) & (twin.c[ARCHIVED_AT] == archived_at)
    found = _count(target, sa.select(twin.c[ARCHIVE_RUN_ID]).where(stamped))
    missing = sa.except_(sa.select(*part.table.columns).where(part.selected),
                         sa.select(*(twin.c[name] for name in columns)).where(stamped))
    differing = _differing_keys(target, missing, [c.name for c in key_columns(part.table)])
    if found != copied or differing:
        batch_keys = sa.select(*key_columns(part.table)).where(part.selected)
        if kept := reused_keys(target, twin, [columns_in(key_columns(twin), batch_keys)],
                               run_id=run_id, archived_at=archived_at, **_ON_PRIMARY):
            raise ReusedKeys(part.table.fullname, kept)
        raise VerificationError(part.table.fullname, copied, copied - len(differing), differing)
    log_taken_over(run_id, part.table.fullname, taken_over)
    ledger.record_copy(target, run_id, part.table.fullname, selected=copied, copied=copied,
                       verified=found, taken_over=taken_over, pending=pending)
    return copied


def _upsert(target: sa.Connection, part: _Part, insert: sqlite.Insert,
            windows: PendingWindows) -> tuple[TakenOver, int]:
    """The batch over copies an interrupted run left: count them by the run that made them,
    then overwrite them with PRIMARY's rows (PRIMARY holds the truth until its delete), but
    never a row archived for good under a key PRIMARY reused (:mod:`archive.reused_keys`).

    :returns: the earlier owners' counts, and the rows written.
    """
    twin = part.twin
    key = [column.name for column in key_columns(part.table)]
    batch_keys = sa.select(*key_columns(part.table)).where(part.selected)
    is_leftover = windows.leftover(twin.c)
    owners = taken_over(target, twin, is_leftover, [sa.select().select_from(twin).where(
        columns_in([twin.c[name] for name in key], batch_keys))], **_ON_PRIMARY)
    overwrite = [c.name for c in twin.columns if c.name not in key]
    columns = [column.name for column in part.table.columns]
    upsert = insert.on_conflict_do_update(
        index_elements=key, set_={name: insert.excluded[name] for name in overwrite},
        where=may_overwrite(target, twin.c, insert.excluded, columns, is_leftover))
    return owners, target.execute(upsert, execution_options=_ON_PRIMARY).rowcount


def _count(target: sa.Connection, query: sa.Select[Any]) -> int:
    return int(target.execute(sa.select(sa.func.count()).select_from(query.subquery()),
                              execution_options=_ON_PRIMARY).scalar_one())


def _differing_keys(target: sa.Connection, missing: sa.CompoundSelect[Any],
                    key: Sequence[str]) -> list[Key]:
    """Keys of up to 11 batch rows with no identical stamped copy."""
    rows = missing.subquery()
    return [tuple(row) for row in target.execute(
        sa.select(*(rows.c[name] for name in key)).limit(11), execution_options=_ON_PRIMARY)]


def _integer_range(policy: ArchivePolicy, lowest: Any, last: Key) -> tuple[int, int] | None:
    """The batch's root key range, for a single integer key (see :class:`ledger.Pending`)."""
    return (int(lowest), int(last[0])) if integer_key(policy.key) else None


@contextmanager
def _attached(archive: sa.Engine, primary: sa.Engine) -> Iterator[sa.Connection]:
    """An ARCHIVE connection with PRIMARY attached, detached again before it goes back to
    the pool (``ATTACH`` and ``DETACH`` need no transaction open)."""
    with archive.connect() as connection:
        driver = connection.connection.dbapi_connection
        assert driver is not None
        driver.execute(f"ATTACH DATABASE ? AS {ATTACHED}", (primary.url.database,))
        try:
            yield connection
        finally:
            try:
                if not connection.invalidated:
                    if connection.in_transaction():
                        connection.rollback()
                    driver.execute(f"DETACH DATABASE {ATTACHED}")
            except (sqlite3.Error, sa.exc.SQLAlchemyError) as exc:
                # Never back to the pool still attached; the batch's own outcome stands.
                logger.warning("detaching PRIMARY from an ARCHIVE connection failed (%s); "
                               "the connection is discarded", exc)
                connection.invalidate()
