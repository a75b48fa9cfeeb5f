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
them. Nothing is lost, and reports that merge both sides deduplicate by key meanwhile.
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
from archive.policy import ArchivePolicy, single_key
from archive.transfer import (
    Transfer,
    child_parents,
    key_filters,
    some_children_held,
    transfer_for,
)

logger = logging.getLogger(__name__)


class ArchiveError(RuntimeError):
    """A batch refused to complete; nothing was deleted from PRIMARY."""


class VerificationError(ArchiveError):
    """Rows read back from ARCHIVE differ from the rows selected in PRIMARY."""

    def __init__(self, table: str, expected: int, found: int, keys: Sequence[int]) -> None:
        shown = ", ".join(map(str, keys[:10])) + (" ..." if len(keys) > 10 else "")
        super().__init__(
            f"verification failed for table {table!r}: selected {expected} rows, read back "
            f"{found} matching; differing keys: {shown or 'none'}. Nothing was deleted from "
            "PRIMARY; find what else writes to ARCHIVE, then re-run"
        )
        self.table = table
        self.keys = list(keys)


@dataclass(frozen=True)
class Timeouts:
    """Per-transaction limits; PostgreSQL only (SQLite waits on its busy timeout)."""

    statement_ms: int
    lock_ms: int


@dataclass
class BatchResult:
    """What one batch moved, per table (root first)."""

    last_key: int
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
    keys: list[int]
    #: For a child table, once a writer held some row: each row's root key (through its
    #: parent's), read without locks.
    parents: dict[int, int] | None = None

    def without(self, roots: set[int]) -> _TableRows:
        """These rows minus those of the given roots (the roots themselves, or children)."""
        keep = [index for index, key in enumerate(self.keys)
                if (self.parents[key] if self.parents is not None else key) not in roots]
        return _TableRows(self.table, self.twin, [self.rows[i] for i in keep],
                          [self.keys[i] for i in keep], self.parents)


def move_batch(
    source: sa.Connection,
    archive: sa.Engine,
    policy: ArchivePolicy,
    *,
    cutoff: datetime,
    after_key: int | None,
    limit: int,
    run_id: int,
    timeouts: Timeouts,
) -> BatchResult | None:
    """Move the next batch of at most ``limit`` aged roots after ``after_key``.

    :param source: the PRIMARY connection to run the batch's transaction on (on PostgreSQL
        the one holding the policy's runner lock, so no batch outlives the lock).
    :returns: what moved, or ``None`` when no aged root is left after ``after_key``.
    :raises ArchiveError: when verification or a delete count fails; both transactions
        that had not committed are rolled back, so both databases stay consistent.
    :raises sqlalchemy.exc.OperationalError: when a connection drops; the batch is safe to
        retry as a whole.
    """
    transfer = transfer_for(source.engine, archive)
    with source.begin():
        _apply_timeouts(source, timeouts)
        roots = transfer.select_roots(source, policy, cutoff, after_key, limit)
        if not roots:
            return None
        root_keys = [transfer.key_of(row) for row in roots]
        batch = [_TableRows(policy.root, policy.archive_root, roots, root_keys)]
        parts = {policy.root.name: batch[0]}
        held = False
        for link in policy.children:  # parents first, so each level selects by the one above
            parent_keys = parts[link.parent.name].keys
            rows = transfer.select_children(source, link, parent_keys) if parent_keys else []
            part = _TableRows(link.table, link.archive_table, rows,
                              [transfer.key_of(row) for row in rows])
            batch.append(part)
            parts[link.table.name] = part
            held = held or (bool(parent_keys)
                            and some_children_held(source, link, parent_keys, len(rows)))
        blocked = _roots_of_held_children(source, policy, parts) if held else set()
        if blocked:
            # A writer holds a child of these roots: moving the root without that child
            # would fail the delete (or orphan it), and waiting would stall the batch.
            logger.info("policy %s run %d: %d roots skipped, a writer holds their children",
                        policy.name, run_id, len(blocked))
            batch = [part.without(blocked) for part in batch]
        archived_at = datetime.now(UTC)  # per attempt: a retry must see its own earlier copy
        if batch[0].rows:
            with archive.begin() as target:
                _apply_timeouts(target, timeouts)
                for part in batch:
                    pending = (min(part.keys), max(part.keys)) if part is batch[0] else None
                    _copy_and_verify(transfer, target, part, run_id, archived_at, pending)
        deleted = _delete(source, policy, batch, cutoff)
    result = BatchResult(
        last_key=root_keys[-1], roots=len(batch[0].keys),
        selected={part.table.name: len(part.rows) for part in batch}, deleted=deleted,
        skipped_locked=len(blocked),
    )
    logger.debug("policy %s run %d moved %s", policy.name, run_id, deleted)
    return result


def _roots_of_held_children(source: sa.Connection, policy: ArchivePolicy,
                            parts: dict[str, _TableRows]) -> set[int]:
    """Roots with a descendant the locking selects skipped; every child part learns its
    rows' roots on the way (through its parent's), so that it can drop theirs."""
    root_part = parts[policy.root.name]
    root_of: dict[str, dict[int, int]] = {policy.root.name: {k: k for k in root_part.keys}}
    blocked: set[int] = set()
    for link in policy.children:
        part, parent_roots = parts[link.table.name], root_of[link.parent.name]
        parent_keys = parts[link.parent.name].keys
        immediate = child_parents(source, link, parent_keys) if parent_keys else {}
        part.parents = {key: parent_roots[parent] for key, parent in immediate.items()}
        root_of[link.table.name] = part.parents
        locked = set(part.keys)
        blocked.update(root for key, root in part.parents.items() if key not in locked)
    return blocked


def _copy_and_verify(transfer: Transfer, connection: sa.Connection, part: _TableRows,
                     run_id: int, archived_at: datetime,
                     pending: tuple[int, int] | None) -> None:
    if not part.rows:
        return
    columns = [column.name for column in part.table.columns]
    taken_over = transfer.upsert(connection, part.twin, columns, part.rows, part.keys,
                                 run_id=run_id, archived_at=archived_at)
    found = transfer.read_back(connection, part.twin, columns, part.keys)
    if Counter(found) != Counter(part.rows):
        differing = sorted({transfer.key_of(row) for row in set(part.rows) ^ set(found)})
        raise VerificationError(part.table.name, len(part.rows),
                                len(part.rows) - len(differing), differing)
    if taken_over:
        logger.warning("run %d re-copied %d %s rows left in both databases by runs %s",
                       run_id, sum(taken_over.values()), part.table.name, sorted(taken_over))
    ledger.record_copy(connection, run_id, part.table.name, selected=len(part.rows),
                       copied=len(part.rows), verified=len(found), taken_over=taken_over,
                       pending=pending)


def _delete(connection: sa.Connection, policy: ArchivePolicy, batch: list[_TableRows],
            cutoff: datetime) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for part in reversed(batch):  # children first: the roots' foreign keys point at them
        is_root = part.table is policy.root
        count = 0
        for condition in key_filters(single_key(part.table), part.keys, connection.dialect):
            statement = part.table.delete().where(condition)
            if is_root:
                statement = statement.where(policy.aged(cutoff))
            count += connection.execute(statement).rowcount
        if count != len(part.keys):
            raise ArchiveError(
                f"deleting {part.table.name!r} removed {count} rows, expected {len(part.keys)}: "
                "rows changed under the lock; PRIMARY rolled back, the ARCHIVE copies will be "
                "overwritten on the next run"
            )
        deleted[part.table.name] = count
    return {part.table.name: deleted[part.table.name] for part in batch}


def _apply_timeouts(connection: sa.Connection, timeouts: Timeouts) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeouts.statement_ms)}")
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {int(timeouts.lock_ms)}")
