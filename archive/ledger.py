"""The run ledger in ARCHIVE: what each run set out to do, what it moved, how it ended.

Per-table ``copied`` and ``verified`` counters are written in the same ARCHIVE transaction
as the rows themselves, so they are exact whatever happens next. ``deleted`` is written
after the PRIMARY commit; a run killed in between ends ``interrupted`` with ``deleted``
short, and the next run re-copies and deletes those rows. When a run re-copies rows left
by an interrupted one it takes them over: the rows carry the new run id and the old run's
counters are reduced by the same amount, so a run's ``copied`` always equals the rows
stamped with its id.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sediment.core.schema.archive import (
    RUN_STATUSES,
    ArchiveRun,
    ArchiveRunTable,
    RunKind,
    RunStatus,
)

if TYPE_CHECKING:
    from archive.reused_keys import TakenOver

runs: sa.Table = ArchiveRun.__table__  # type: ignore[assignment]
run_tables: sa.Table = ArchiveRunTable.__table__  # type: ignore[assignment]


def start_run(archive: sa.Engine, policy: str, cutoff: datetime, tables: list[str],
              status: RunStatus = "running", *, kind: RunKind = "archive") -> int:
    """Record a new run and its per-table counters; return its id."""
    with archive.begin() as connection:
        run_id = int(connection.execute(
            runs.insert().values(
                policy=policy, kind=kind, status=status, cutoff=cutoff,
                started_at=datetime.now(UTC), batches=0, rows_moved=0,
                host=socket.gethostname(), pid=os.getpid(),
            ).returning(runs.c.id)
        ).scalar_one())
        connection.execute(run_tables.insert(), [
            {"run_id": run_id, "table_name": name, "selected": 0, "copied": 0, "verified": 0,
             "deleted": 0, "skipped_locked": 0} for name in tables
        ])
    return run_id


@dataclass(frozen=True)
class Pending:
    """What marks a batch's rows as possibly in both databases until its deletes commit.

    ``since`` is the batch's ``archived_at``: every row it copied (children too) carries the
    run id and an ``archived_at`` no earlier than that, whatever its key type. ``keys`` is
    the lowest and highest root key, for a single integer key only (the merged reports look
    rows up by that range).
    """

    since: datetime
    keys: tuple[int, int] | None = None


def ensure_tables(archive: sa.Engine, run_id: int, tables: list[str]) -> None:
    """Add per-table counters for tables a run's policy gained after it started (a child
    found by ``children = "auto"`` in PRIMARY's schema as it is now)."""
    with archive.begin() as connection:
        known = set(connection.execute(sa.select(run_tables.c.table_name).where(
            run_tables.c.run_id == run_id)).scalars())
        missing = [name for name in tables if name not in known]
        if missing:
            connection.execute(run_tables.insert(), [
                {"run_id": run_id, "table_name": name, "selected": 0, "copied": 0,
                 "verified": 0, "deleted": 0, "skipped_locked": 0} for name in missing])


def record_copy(connection: sa.Connection, run_id: int, table: str, *, selected: int,
                copied: int, verified: int, taken_over: TakenOver,
                pending: Pending | None = None) -> None:
    """Add a batch's copy counters, inside the ARCHIVE transaction that copied it.

    :param taken_over: rows this batch overwrote, by the run id they carried before: that
        run's copies pass to this one, and for rows it had deleted from PRIMARY once (which
        PRIMARY held again), its deletes too, so each run's ``deleted`` stays its ``copied``.
    :param pending: for the root table, the batch's mark: the run's pending window (and key
        range) grows to cover it until its deletes catch up.
    """
    for previous_run, count in taken_over.leftovers.items():  # this run's, on a retry
        _add(connection, previous_run, table, copied=-count, verified=-count)
    for previous_run, count in taken_over.returned.items():
        _add(connection, previous_run, table, copied=-count, verified=-count, deleted=-count)
    _add(connection, run_id, table, selected=selected, copied=copied, verified=verified)
    if pending is None:
        return
    since = run_tables.c.pending_since
    values: dict[str, Any] = {
        "pending_since": sa.case((since.is_(None) | (since > pending.since), pending.since),
                                 else_=since)}
    if pending.keys is not None:
        low, high = pending.keys
        low_column, high_column = run_tables.c.pending_low, run_tables.c.pending_high
        values["pending_low"] = sa.case((low_column.is_(None) | (low_column > low), low),
                                        else_=low_column)
        values["pending_high"] = sa.case((high_column.is_(None) | (high_column < high), high),
                                         else_=high_column)
    connection.execute(_of(run_id, table).values(values))


def record_delete(archive: sa.Engine, run_id: int, deleted: Mapping[str, int],
                  skipped_locked: Mapping[str, int] | None = None) -> bool:
    """Add a batch's deleted counters after its PRIMARY commit; once every table of the run
    has deleted what it copied, nothing of the run is in both databases: clear its range.

    :returns: ``False``, recording nothing, when the run is no longer ``running``: another
        runner marked it interrupted and settled its counters from both databases, which
        already counted these deletes (they committed while this run held the lock).
    """
    with archive.begin() as connection:
        # FOR NO KEY UPDATE: it waits for a runner marking the run interrupted, as FOR UPDATE
        # would, but not for the KEY SHARE lock that updating this run's counters twice in
        # the next batch's copy takes (the foreign key check on the row it updated already):
        # FOR UPDATE deadlocked with that copy, each waiting for the other's rows.
        status = connection.execute(sa.select(runs.c.status).where(runs.c.id == run_id)
                                    .with_for_update(key_share=True)).scalar_one()
        if status != "running":
            return False
        for table, count in deleted.items():
            _add(connection, run_id, table, deleted=count)
        for table, count in (skipped_locked or {}).items():
            if count:
                _add(connection, run_id, table, skipped_locked=count)
        connection.execute(runs.update().where(runs.c.id == run_id).values(
            batches=runs.c.batches + 1, rows_moved=runs.c.rows_moved + sum(deleted.values()),
        ))
        other = run_tables.alias("other")
        unsettled = sa.exists().where(other.c.run_id == run_id, other.c.copied != other.c.deleted)
        connection.execute(run_tables.update().where(
            run_tables.c.run_id == run_id, run_tables.c.pending_since.is_not(None), ~unsettled,
        ).values(CLEARED))
    return True


def record_sweep(connection: sa.Connection, run_id: int, deleted: Mapping[str, int],
                 removed: Mapping[tuple[int, str], int] | None = None) -> None:
    """Count a batch that deleted rows without archiving them (a purge, an expiry, a
    restore, an erasure): its deleted rows per table, and the rows it removed from ARCHIVE
    by the archive run that had copied them, so each archive run's stamped rows stay
    ``copied - removed``.

    Expiry, restore and erasure call this inside the ARCHIVE transaction that deletes the
    rows, so their counts are exact; a purge calls it once its PRIMARY transaction has
    committed.
    """
    for table, count in deleted.items():
        _add(connection, run_id, table, deleted=count)
    for (archived_by, table), count in (removed or {}).items():
        _add(connection, archived_by, table, removed=count)
    connection.execute(runs.update().where(runs.c.id == run_id).values(
        batches=runs.c.batches + 1, rows_moved=runs.c.rows_moved + sum(deleted.values())))


#: The ledger values of a run with nothing left in both databases.
CLEARED = {"pending_since": None, "pending_low": None, "pending_high": None}


@dataclass(frozen=True)
class PendingRun:
    """A run that copied rows to ARCHIVE without (as far as the ledger knows) deleting them
    from PRIMARY: they carry its id and were archived at ``since`` or later, the only
    place rows in both databases can be."""

    run_id: int
    since: datetime


def pending_runs(connection: sa.Connection, table: str,
                 policy: str | None = None) -> list[PendingRun]:
    """The pending runs of ``table``'s roots (of one policy's runs, if given).

    One indexed query; empty whenever no batch is in flight and no run died mid-batch.
    """
    query = sa.select(run_tables.c.run_id, run_tables.c.pending_since).where(
        run_tables.c.table_name == table, run_tables.c.pending_since.is_not(None))
    if policy is not None:
        query = query.join(runs, runs.c.id == run_tables.c.run_id).where(runs.c.policy == policy)
    return [PendingRun(int(run), since)
            for run, since in connection.execute(query.order_by(run_tables.c.run_id))]


def open_windows(connection: sa.Connection) -> dict[int, datetime]:
    """Every run with an open pending window, of any table, with the window's earliest
    start: the rows it stamped since then may be in both databases."""
    windows: dict[int, datetime] = {}
    for run, since in connection.execute(
            sa.select(run_tables.c.run_id, run_tables.c.pending_since)
            .where(run_tables.c.pending_since.is_not(None))):
        windows[int(run)] = min(since, windows.get(int(run), since))
    return windows


def left_over(windows: dict[int, datetime], run_id: int, archived_at: datetime) -> bool:
    """Whether an ARCHIVE row stamped ``(run_id, archived_at)`` is a copy an unfinished
    batch left (inside its run's open window, :func:`open_windows`), not a row archived
    for good."""
    since = windows.get(int(run_id))
    return since is not None and archived_at >= since


def settle(archive: sa.Engine, run_id: int, still_in_primary: Mapping[str, int]) -> None:
    """Set a run's ``deleted`` counters from what the databases show, and clear its pending
    range once none of its rows is left in PRIMARY.

    A run killed after its PRIMARY commit but before :func:`record_delete` never recorded
    that batch's deletes; one killed between its two commits left rows in both databases,
    which a later run re-copies and takes over. Either way, for each table ``deleted`` is
    then ``copied`` minus the run's rows still in PRIMARY (every other batch of the run
    recorded its deletes).

    :param still_in_primary: per table, rows stamped with this run (inside its pending
        window) whose keys are still in PRIMARY.
    """
    with archive.begin() as connection:
        for table, present in still_in_primary.items():
            connection.execute(_of(run_id, table).values(
                deleted=run_tables.c.copied - present))
        if not any(still_in_primary.values()):
            connection.execute(run_tables.update().where(run_tables.c.run_id == run_id)
                               .values(CLEARED))


def finish_run(archive: sa.Engine, run_id: int, status: RunStatus, *, rows_per_second: float | None,
               error: str | None = None, detail: str | None = None) -> None:
    """Close a run with its exit reason (and, for an erasure, what it erased)."""
    with archive.begin() as connection:
        connection.execute(runs.update().where(runs.c.id == run_id).values(
            status=status, finished_at=datetime.now(UTC), rows_per_second=rows_per_second,
            error=error, detail=detail,
        ))


def status_of(archive: sa.Engine, run_id: int) -> RunStatus | None:
    """The ledger status of a run."""
    with archive.connect() as connection:
        status = connection.execute(sa.select(runs.c.status).where(runs.c.id == run_id)
                                    ).scalar_one_or_none()
    return next((known for known in RUN_STATUSES if known == status), None)


def has_running(archive: sa.Engine, kind: RunKind, policy: str | None = None) -> bool:
    """Whether the ledger has a ``kind`` run (of ``policy``, when given) still ``running``:
    a live run, or one that was killed and that the next run of its lock marks
    ``interrupted``."""
    condition = [runs.c.kind == kind, runs.c.status == "running"]
    if policy is not None:
        condition.append(runs.c.policy == policy)
    with archive.connect() as connection:
        return connection.execute(sa.select(sa.exists().where(*condition))).scalar_one()


#: What an interrupted run of each kind left, as its ledger row says.
INTERRUPTED: dict[str, str] = {
    "archive": "the process ended before the run finished; its rows were re-checked",
    "purge": "the process ended before the run finished; its last batch may have been "
             "deleted from PRIMARY without being counted here",
    "expire": "the process ended before the run finished; every batch it deleted is counted",
    "restore": "the process ended before the run finished; the next restore of the policy "
               "finishes its rows",
    "erase": "the process ended before the erasure finished; erase the same subject again "
             "to finish it",
}


def mark_interrupted(archive: sa.Engine, policy: str | None, current_run: int, *,
                     kind: RunKind | None = None) -> list[int]:
    """Mark earlier runs of ``policy`` (of any kind), or of ``kind``, still ``running`` as
    ``interrupted``.

    Call only while holding the lock those runs take (the policy's runner lock, or the
    erasure lock): no other live run can then exist, so a ``running`` row is a run that
    was killed.
    """
    condition = runs.c.policy == policy if policy is not None else runs.c.kind == kind
    with archive.begin() as connection:
        stale = list(connection.execute(
            sa.select(runs.c.id).where(condition, runs.c.status == "running",
                                       runs.c.id != current_run)
        ).scalars())
        if stale:
            connection.execute(runs.update().where(runs.c.id.in_(stale)).values(
                status="interrupted", finished_at=datetime.now(UTC),
                error=sa.case(*((runs.c.kind == kind, text) for kind, text in INTERRUPTED.items()),
                              else_=INTERRUPTED["archive"]),
            ))
    return stale


def _of(run_id: int, table: str) -> sa.Update:
    return run_tables.update().where(run_tables.c.run_id == run_id,
                                     run_tables.c.table_name == table)


def _add(connection: sa.Connection, run_id: int, table: str, **deltas: int) -> None:
    connection.execute(_of(run_id, table).values(
        {run_tables.c[name]: run_tables.c[name] + delta for name, delta in deltas.items()}))
