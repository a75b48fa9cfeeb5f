"""One archival batch: the paired transactions that move aged rows PRIMARY -> ARCHIVE.

The order is what makes a crash harmless:

1. PRIMARY transaction opens; the next aged roots are selected by key and locked (``FOR
   UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), then their children.
   Children are locked ``SKIP LOCKED`` too and compared with an unlocked read of them: a
   root whose child a writer holds is left for a later run (``skipped_locked``), so one
   application transaction cannot stall the run.
2. ARCHIVE transaction: roots then children are upserted, stamped with the run id, read
   back and compared with what was selected (as exact multisets of rows). A mismatch
   raises before anything is deleted. The ledger's counters and the run's pending key
   range are written in the same transaction. ARCHIVE commits.
3. In the still-open PRIMARY transaction, children then roots are deleted by key, the roots
   re-checked against the age predicate, every count asserted. PRIMARY commits.

Killed before 2 commits: nothing changed. Killed between 2 and 3: the rows are in both
databases; the next run re-copies them (overwriting with PRIMARY's version) and deletes
them. Nothing is lost, and reports that merge both sides deduplicate by key meanwhile. A
row archived for good is never overwritten by a new PRIMARY row under its key
(:mod:`archive.reused_keys`): the batch stops with :class:`ReusedKeys`.

:func:`select_batch` (step 1), :meth:`SelectedBatch.copy` (step 2) and :func:`delete_batch`
(step 3) are separate so that the runner can overlap batches, each in its own database
session: select batch N+1 in PRIMARY while batch N is copied into ARCHIVE, and copy N+1
while N is deleted (:mod:`archive.pipeline`). They raise :class:`ArchiveError` when
verification or a delete count fails, and let ``sqlalchemy.exc.OperationalError`` through
when a connection drops: the caller rolls back the PRIMARY transaction, so both databases
stay consistent and the batch is safe to retry as a whole.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from archive import ledger
from archive.keys import Key, integer_key, key_columns, key_filters
from archive.policy import ArchivePolicy, ChildLink
from archive.reflection import column_names
from archive.reused_keys import (
    PendingWindows,
    TakenOver,
    log_taken_over,
    reused_keys,
    reused_text,
)
from archive.transfer import Transfer, child_parents, some_children_held, transfer_for

logger = logging.getLogger(__name__)


class ArchiveError(RuntimeError):
    """A batch refused to complete; nothing was deleted from PRIMARY."""


class SchemaDrift(ArchiveError):
    """PRIMARY's tables changed in a way the twins do not follow (yet): nothing was copied."""


class VerificationError(ArchiveError):
    """Rows read back from ARCHIVE differ from the rows selected in PRIMARY."""

    def __init__(self, table: str, expected: int, found: int, keys: Sequence[Key],
                 cause: str = "") -> None:
        shown = ", ".join(_shown(key) for key in keys[:10]) + (" ..." if len(keys) > 10 else "")
        super().__init__(
            f"verification failed for table {table!r}: selected {expected} rows, read back "
            f"{found} matching; differing keys: {shown or 'none'}. Nothing was deleted from "
            f"PRIMARY; {cause or 'find what else writes to ARCHIVE'}, then re-run"
        )
        self.table = table
        self.keys = list(keys)


class ReusedKeys(ArchiveError):
    """PRIMARY holds new rows under keys ARCHIVE keeps archived rows under, with other
    values: the batch refused to overwrite them (see :mod:`archive.reused_keys`)."""

    def __init__(self, table: str, found: Sequence[tuple[Key, int]]) -> None:
        super().__init__(reused_text(table, found))
        self.table = table
        self.keys = [key for key, _ in found]


def _shown(key: Key) -> str:
    return str(key[0]) if len(key) == 1 else "(" + ", ".join(map(str, key)) + ")"


@dataclass(frozen=True)
class Timeouts:
    """Per-transaction limits; PostgreSQL only (SQLite waits on its busy timeout)."""

    statement_ms: int
    lock_ms: int


@dataclass
class BatchResult:
    """What one batch moved, per table (root first)."""

    last_key: Key
    roots: int
    selected: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    #: Roots left for a later run because a writer held one of their children.
    skipped_locked: int = 0

    @property
    def rows(self) -> int:
        return sum(self.deleted.values())


@dataclass
class _TableRows:
    table: sa.Table
    twin: sa.Table
    rows: list[Any]
    keys: list[Key]
    #: For a child table, once a writer held some row: each row's root key (through its
    #: parent's), read without locks.
    roots: dict[Key, Key] | None = None

    def without(self, blocked: set[Key]) -> _TableRows:
        """These rows minus those of the given roots (the roots themselves, or children)."""
        keep = [index for index, key in enumerate(self.keys)
                if (self.roots[key] if self.roots is not None else key) not in blocked]
        return _TableRows(self.table, self.twin, [self.rows[i] for i in keep],
                          [self.keys[i] for i in keep], self.roots)


@dataclass
class SelectedBatch:
    """A batch after step 1: its rows selected and locked in the caller's open PRIMARY
    transaction, ARCHIVE not touched yet. :meth:`copy` is step 2."""

    policy: ArchivePolicy
    parts: list[_TableRows]
    cutoff: datetime
    run_id: int
    #: The key the next batch selects after (the last root selected, moved or skipped).
    last_key: Key
    skipped_locked: int
    transfer: Transfer

    @property
    def roots(self) -> int:
        return len(self.parts[0].keys)

    def copy(self, archive: sa.Engine, timeouts: Timeouts) -> CopiedBatch:
        """Step 2: upsert every part into ARCHIVE, read it back and compare, then write the
        ledger's counters and the run's pending window, all in one ARCHIVE transaction.

        Touches ARCHIVE only, so it may run in another thread than the one that selected
        the batch (see :mod:`archive.pipeline`). The ledger rows are written after the
        last comparison: their row locks, which the runner's count of a finished batch
        waits for, are then held only for the commit.
        """
        if self.parts[0].rows:
            archived_at = datetime.now(UTC)  # per attempt: a retry must see its own copy
            filled = [part for part in self.parts if part.rows]
            with archive.begin() as target:
                set_up_batch(target, timeouts)
                windows = PendingWindows(target, self.policy.root.fullname)
                checked = [(part, *_copy_and_verify(self.transfer, target, part, self.run_id,
                                                    archived_at, windows))
                           for part in filled]
                for part, found, taken_over in checked:
                    pending = (ledger.Pending(archived_at, _integer_range(part))
                               if part is self.parts[0] else None)
                    ledger.record_copy(target, self.run_id, part.table.fullname,
                                       selected=len(part.rows), copied=len(part.rows),
                                       verified=found, taken_over=taken_over,
                                       pending=pending)
        return CopiedBatch(**vars(self))


@dataclass
class CopiedBatch(SelectedBatch):
    """A batch between its two commits: ARCHIVE holds its verified copy, and the PRIMARY
    transaction that selected it is still open, its rows locked, nothing deleted yet."""

    def delete(self, source: sa.Connection) -> BatchResult:
        """Step 3: see :func:`delete_batch`."""
        return delete_batch(source, self)


def select_batch(
    source: sa.Connection,
    archive: sa.Engine,
    policy: ArchivePolicy,
    *,
    cutoff: datetime,
    after_key: Key | None,
    limit: int,
    run_id: int,
    timeouts: Timeouts,
) -> SelectedBatch | None:
    """Step 1: select and lock the next batch in the caller's open PRIMARY transaction on
    ``source`` (on PostgreSQL a connection holding half of the policy's runner lock, so no
    batch outlives the lock). ``archive`` only decides how rows travel.

    :returns: ``None`` when no aged root is left after ``after_key``.
    """
    transfer = transfer_for(source.engine, archive)
    set_up_batch(source, timeouts)
    roots = transfer.select_roots(source, policy, cutoff, after_key, limit)
    if not roots:
        return None
    root_keys = transfer.values_of(policy.root, policy.key, roots)
    batch = [_TableRows(policy.root, policy.archive_root, roots, root_keys)]
    parts = {policy.root.fullname: batch[0]}
    held = False
    for link in policy.children:  # parents first, so each level selects by the one above
        parent_values = _referenced_values(transfer, link, parts[link.parent.fullname])
        rows = (transfer.select_children(source, link, parent_values)
                if parent_values else [])
        part = _TableRows(link.table, link.archive_table, rows,
                          transfer.values_of(link.table, link.key, rows))
        batch.append(part)
        parts[link.table.fullname] = part
        held = held or (bool(parent_values)
                        and some_children_held(source, link, parent_values, len(rows)))
    check_columns(source, [part.table for part in batch if part.rows])
    blocked = _roots_of_held_children(source, transfer, policy, parts) if held else set()
    if blocked:
        # A writer holds a child of these roots: moving the root without that child
        # would fail the delete (or orphan it), and waiting would stall the batch.
        logger.info("policy %s run %d: %d roots skipped, a writer holds their children",
                    policy.name, run_id, len(blocked))
        batch = [part.without(blocked) for part in batch]
    return SelectedBatch(policy, batch, cutoff, run_id, root_keys[-1], len(blocked), transfer)


def delete_batch(source: sa.Connection, copied: CopiedBatch) -> BatchResult:
    """Step 3, once ARCHIVE has committed: delete exactly the copied rows in the PRIMARY
    transaction that selected them. The caller commits it.

    :raises ArchiveError: when a count differs (the caller must roll back).
    """
    deleted = _delete(source, copied.policy, copied.parts, copied.cutoff)
    logger.debug("policy %s run %d moved %s", copied.policy.name, copied.run_id, deleted)
    return BatchResult(
        last_key=copied.last_key, roots=copied.roots,
        selected={part.table.fullname: len(part.rows) for part in copied.parts},
        deleted=deleted, skipped_locked=copied.skipped_locked,
    )


def check_columns(connection: sa.Connection, tables: Sequence[sa.Table]) -> None:
    """Refuse to copy rows of a table whose columns changed since the run read its schema.

    Checked under the batch's row locks, which an ``ALTER TABLE`` has to wait for: a column
    added after this check cannot hold values this batch would leave behind.
    """
    for table in tables:
        now = column_names(connection, table)
        known = {column.name for column in table.columns}
        if now != known:
            added, dropped = sorted(now - known), sorted(known - now)
            raise SchemaDrift(
                f"{table.fullname} changed during the run (added: {', '.join(added) or '-'}; "
                f"dropped: {', '.join(dropped) or '-'}): nothing of this batch was copied; "
                "the next run follows the change")


def _integer_range(part: _TableRows) -> tuple[int, int] | None:
    """The lowest and highest key of a batch's roots, for a single integer key (the merged
    reports look for rows in both databases by this range)."""
    if not integer_key(key_columns(part.table)):
        return None
    keys = [int(key[0]) for key in part.keys]
    return min(keys), max(keys)


def _referenced_values(transfer: Transfer, link: ChildLink, parent: _TableRows) -> list[Key]:
    """The values of the parent rows that ``link``'s foreign key references: their keys,
    or the referenced unique columns (a NULL there references nothing)."""
    if link.references_key:
        return parent.keys
    values = transfer.values_of(parent.table, link.referenced, parent.rows)
    return [value for value in dict.fromkeys(values) if None not in value]


def _roots_of_held_children(source: sa.Connection, transfer: Transfer, policy: ArchivePolicy,
                            parts: dict[str, _TableRows]) -> set[Key]:
    """Roots with a descendant the locking selects skipped; every child part learns its
    rows' roots on the way (through its parent's), so that it can drop theirs."""
    root_part = parts[policy.root.fullname]
    root_of: dict[str, dict[Key, Key]] = {policy.root.fullname: {k: k for k in root_part.keys}}
    blocked: set[Key] = set()
    for link in policy.children:
        part, parent = parts[link.table.fullname], parts[link.parent.fullname]
        parent_roots = root_of[link.parent.fullname]
        if not link.references_key:  # key the parent's roots by the referenced values
            referenced = transfer.values_of(parent.table, link.referenced, parent.rows)
            parent_roots = {value: parent_roots[key]
                            for value, key in zip(referenced, parent.keys, strict=True)}
        parent_values = _referenced_values(transfer, link, parent)
        immediate = child_parents(source, transfer, link, parent_values) if parent_values else {}
        part.roots = {key: parent_roots[value] for key, value in immediate.items()}
        root_of[link.table.fullname] = part.roots
        locked = set(part.keys)
        blocked.update(root for key, root in part.roots.items() if key not in locked)
    return blocked


def same_rows(found: Sequence[Any], expected: Sequence[Any]) -> bool:
    """Whether ``found`` holds exactly ``expected``, as multisets.

    A batch's rows carry their key, so they are distinct: then equal lengths and equal sets
    decide it (``found``'s set has as many members as ``found`` only if it repeats none),
    in C, where comparing two ``Counter`` objects loops in Python over every row.
    """
    if len(found) != len(expected):
        return False
    distinct = set(expected)
    if len(distinct) == len(expected):
        return set(found) == distinct
    return Counter(found) == Counter(expected)


def _copy_and_verify(transfer: Transfer, connection: sa.Connection, part: _TableRows,
                     run_id: int, archived_at: datetime,
                     windows: PendingWindows) -> tuple[int, TakenOver]:
    """Upsert one part (with rows) and compare what ARCHIVE now holds with it.

    :param windows: the batch's pending windows, which tell a copy left behind from a row
        archived for good.
    :returns: the rows read back, and the rows taken over by the run that had copied them.
    :raises ReusedKeys: when ARCHIVE kept archived rows under the batch's keys.
    :raises VerificationError: when they differ otherwise.
    """
    columns = [column.name for column in part.table.columns]
    taken_over = transfer.upsert(connection, part.twin, columns, part.rows, part.keys,
                                 run_id=run_id, archived_at=archived_at, windows=windows)
    found = transfer.read_back(connection, part.twin, columns, run_id=run_id,
                               archived_at=archived_at)
    if not same_rows(found, part.rows):
        if kept := reused_keys(
                connection, part.twin,
                key_filters(key_columns(part.twin), part.keys, connection.dialect),
                run_id=run_id, archived_at=archived_at):
            raise ReusedKeys(part.table.fullname, kept)
        differing = sorted(set(transfer.values_of(part.table, key_columns(part.table),
                                                  list(set(part.rows) ^ set(found)))),
                           key=str)
        raise VerificationError(part.table.fullname, len(part.rows),
                                len(part.rows) - len(differing), differing,
                                lost_zone(transfer, part.table, part.rows, found))
    log_taken_over(run_id, part.table.fullname, taken_over)
    return len(found), taken_over


def lost_zone(transfer: Transfer, table: sa.Table, selected: Sequence[Any],
              found: Sequence[Any]) -> str:
    """Why a row came back changed, when it is a timestamp that lost (or gained) its zone:
    SQLite keeps any text in a ``DATETIME`` column, ``'... +00:00'`` included, which a
    PostgreSQL ARCHIVE's ``timestamp without time zone`` keeps without it. Every run failed
    with "find what else writes to ARCHIVE". No values are shown: they may be personal."""
    key = key_columns(table)
    before = dict(zip(transfer.values_of(table, key, selected), selected, strict=True))
    for found_key, after in zip(transfer.values_of(table, key, found), found, strict=True):
        original = before.get(found_key)
        if original is None or isinstance(original, str):  # COPY lines keep their zones
            continue
        for column, was, came in zip(table.columns, original, after, strict=True):
            if (isinstance(was, datetime) and isinstance(came, datetime)
                    and (was.tzinfo is None) != (came.tzinfo is None)):
                zoned = was.tzinfo is not None
                return (f"{table.fullname}.{column.name} of key {_shown(found_key)} holds a "
                        f"timestamp {'with' if zoned else 'without'} a time zone in PRIMARY, "
                        f"which ARCHIVE's column keeps {'without' if zoned else 'with'} one: "
                        + ("store that column's values zone-less, or " if zoned else "")
                        + "keep ARCHIVE on PRIMARY's engine")
    return ""


def _delete(connection: sa.Connection, policy: ArchivePolicy, batch: list[_TableRows],
            cutoff: datetime) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for part in reversed(batch):  # children first: the roots' foreign keys point at them
        is_root = part.table is policy.root
        count = 0
        for condition in key_filters(key_columns(part.table), part.keys, connection.dialect):
            statement = part.table.delete().where(condition)
            if is_root:
                statement = statement.where(policy.aged(cutoff))
            count += connection.execute(statement).rowcount
        check_deleted(part.table, count, len(part.keys))
        deleted[part.table.fullname] = count
    return {part.table.fullname: deleted[part.table.fullname] for part in batch}


def check_deleted(table: sa.Table, count: int, expected: int) -> None:
    """Refuse a delete that removed other than the rows copied (the caller rolls back)."""
    if count != expected:
        raise ArchiveError(
            f"deleting {table.fullname!r} removed {count} rows, expected {expected}: rows "
            "changed under the lock; PRIMARY rolled back, the ARCHIVE copies will be "
            "overwritten on the next run")


#: Defers the foreign keys that may be deferred to the transaction's commit (PostgreSQL):
#: tables that reference each other have no order of deletes or inserts that satisfies
#: them statement by statement (see :func:`set_up_batch`).
DEFER_KEYS = "SET CONSTRAINTS ALL DEFERRED"


def set_up_batch(connection: sa.Connection, timeouts: Timeouts) -> None:
    """Bound the transaction's statements and lock waits, and defer the foreign keys that
    may be deferred (PostgreSQL), in one round trip.

    A batch's transaction waits, by design, while the other database takes its copy and
    commits: ``idle_in_transaction_session_timeout`` is turned off for it, its statements'
    own timeouts bound that wait. An application's database setting it (say to 300ms) had
    PostgreSQL end every batch's connection before its delete, and the run retried the
    same batch without end.

    A batch deletes children first and a restore inserts parents first; tables that
    reference each other (a team and its captain among its players) have no such order,
    and a ``DEFERRABLE INITIALLY IMMEDIATE`` key between them failed every batch. Deferred,
    it is checked at commit, when the rows are gone or back together (a ``NOT DEFERRABLE``
    one is refused when the policy is resolved: :func:`archive.policy.refuse_cycles`).
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            f"SET LOCAL statement_timeout = {int(timeouts.statement_ms)}; "
            f"SET LOCAL lock_timeout = {int(timeouts.lock_ms)}; "
            f"SET LOCAL idle_in_transaction_session_timeout = 0; {DEFER_KEYS}")
