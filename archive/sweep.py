"""Deleting a policy's rows in one database without copying them: purge and expiry.

A *purge* (a policy with ``mode = "purge"``) deletes aged roots and their children from
PRIMARY; an *expiry* deletes the ARCHIVE rows of a policy with a ``retention`` once they
have outlived it. Both go in keyset batches of ``batch_size`` roots, each batch one
transaction in the one database it deletes from: children first (to any depth), then the
roots, re-checked against the condition that selected them, the roots' count asserted.
Killed before that commit, a batch changed nothing; after it, the batch is gone for good.

Neither touches a held row (:mod:`archive.holds`): each batch reads the holds inside a
transaction that keeps new holds waiting until it commits (``LOCK TABLE ... IN SHARE
MODE`` on PostgreSQL, ARCHIVE's write lock on SQLite), so a hold placed at any moment
either comes before the batch, which then leaves the row alone, or after it, when the row
is gone and ``hold add`` says so.

The ledger: an expiry counts each batch in the same ARCHIVE transaction that deletes it,
and also the rows it removed per archive run that had copied them (``removed``), so those
runs' counters still match the rows stamped with their ids. A purge deletes from PRIMARY
and counts in ARCHIVE after its PRIMARY commit: a purge killed between the two leaves that
one batch uncounted (the next run of the policy marks the purge ``interrupted``). An expiry
never takes rows of an archive run with a pending window: they may still be in PRIMARY,
and the run that settles them counts them from both databases.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal

import sqlalchemy as sa

from archive import ledger
from archive.holds import held_keys, held_roots, holds
from archive.keys import Key, key_after, key_columns, key_filters
from archive.locks import RunnerLock
from archive.mover import ArchiveError, BatchResult, Timeouts, set_up_batch
from archive.policy import ArchivePolicy
from archive.runner import (
    ProgressCallback,
    RunLimits,
    RunOutcome,
    batch_loop,
    run_locked,
)
from archive.scope import Level, Side, descend, levels_of
from sediment.core.databases import SQLITE_WRITE_LOCK, Engines
from sediment.core.schema.archive import ARCHIVE_RUN_ID
from sediment.core.settings import ArchiveSettings, DatabaseSettings

SweepKind = Literal["purge", "expire"]


@dataclass(frozen=True)
class Sweep:
    """What a purge or an expiry of one policy deletes, and from which database."""

    kind: SweepKind
    policy: ArchivePolicy
    cutoff: datetime
    #: The policy's tables in the database the sweep deletes from, root first.
    levels: tuple[Level, ...]
    #: The roots that may go, held ones aside.
    condition: sa.ColumnElement[bool]

    @property
    def side(self) -> Side:
        return "primary" if self.kind == "purge" else "archive"

    @property
    def root(self) -> sa.Table:
        return self.levels[0].table

    @property
    def tables(self) -> dict[str, sa.Table]:
        return {level.table.fullname: level.table for level in self.levels}


def purge_of(policy: ArchivePolicy, now: datetime) -> Sweep:
    """The purge of a ``mode = "purge"`` policy: its aged roots (age, ``match`` and
    ``where``) and their children, in PRIMARY."""
    cutoff = policy.cutoff(now)
    return Sweep("purge", policy, cutoff, levels_of(policy, "primary"), policy.aged(cutoff))


def expiry_of(policy: ArchivePolicy, now: datetime) -> Sweep | None:
    """The expiry of a policy with a ``retention``: its ARCHIVE rows whose age column (the
    same column that made them age out of PRIMARY) is older than the retention period;
    ``None`` when the policy keeps its rows for ever."""
    if policy.retention is None:
        return None
    cutoff = policy.retention.cutoff(now)
    age = dataclasses.replace(policy.age, column=policy.archive_root.c[policy.age.column.name])
    return Sweep("expire", policy, cutoff, levels_of(policy, "archive"), age.before(cutoff))


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep would delete now, per table, and the roots holds keep."""

    sweep: Sweep
    counts: dict[str, int]
    held: int


def _held_roots(engines: Engines, sweep: Sweep,
                held: sa.ColumnElement[bool] | None = None) -> int:
    """How many roots the sweep would take but for a hold (``held``: the holds' condition,
    when the caller has read them already)."""
    engine = _engine(engines, sweep)
    if held is None:
        with engines.archive.connect() as archive:
            held = held_roots(sweep.levels, held_keys(archive, sweep.tables))
    if held is None:
        return 0
    with engine.connect() as connection:
        return _count(connection, sweep.root, sa.and_(sweep.condition, held))


def plan_sweep(engines: Engines, sweep: Sweep) -> SweepPlan:
    """Count what ``sweep`` would delete now, writing nothing (``--dry-run``)."""
    engine = _engine(engines, sweep)
    with engines.archive.connect() as archive:
        held = held_roots(sweep.levels, held_keys(archive, sweep.tables))
        excluded = _pending_rows(archive, sweep)
    goes = _allowed(sweep, held, excluded)
    with engine.connect() as connection:
        counts = {name: _count(connection, sweep.tables[name], condition)
                  for name, condition in descend(sweep.levels, goes).items()}
    return SweepPlan(sweep, counts, _held_roots(engines, sweep, held) if held is not None else 0)


def run_sweep(engines: Engines, sweep: Sweep, *, database: DatabaseSettings,
              settings: ArchiveSettings, limits: RunLimits | None = None,
              stop: threading.Event | None = None,
              progress: ProgressCallback | None = None) -> RunOutcome:
    """Run ``sweep`` in batches, holding the policy's runner lock, and record it in the
    ledger as a run of its kind. Errors are reported in the outcome, not raised."""
    stop = stop or threading.Event()
    limits = limits or RunLimits()
    timeouts = Timeouts(database.statement_timeout_ms, database.lock_timeout_ms)

    def sweep_rows(outcome: RunOutcome, lock: RunnerLock) -> None:
        assert outcome.run_id is not None
        outcome.moved = {name: 0 for name in sweep.tables}
        outcome.held = _held_roots(engines, sweep)
        batch = _purge_batch if sweep.kind == "purge" else _expire_batch
        batch_loop(outcome, lock, engines.archive, batch_size=sweep.policy.batch_size,
                   settings=settings, limits=limits, stop=stop, progress=progress,
                   step=partial(batch, engines, lock, sweep, outcome.run_id,
                                timeouts=timeouts))

    return run_locked(engines.primary, engines.archive, sweep.policy, kind=sweep.kind,
                      cutoff=sweep.cutoff, settings=settings, stop=stop, work=sweep_rows)


@contextmanager
def holds_guard(archive: sa.Engine) -> Iterator[sa.Connection]:
    """An ARCHIVE transaction in which no hold can be placed or released until it ends."""
    with archive.connect().execution_options(**{SQLITE_WRITE_LOCK: True}) as connection, \
            connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"LOCK TABLE {holds.name} IN SHARE MODE")
        yield connection


def _purge_batch(engines: Engines, lock: RunnerLock, sweep: Sweep, run_id: int,
                 after: Key | None, limit: int, *, timeouts: Timeouts) -> BatchResult | None:
    """Delete the next batch from PRIMARY, then count it in ARCHIVE (PRIMARY first, like
    every archive batch, so no two transactions wait on each other's database)."""
    with lock.batch_connection() as source:
        transaction = source.begin()
        try:
            set_up_batch(source, timeouts)
            with holds_guard(engines.archive) as guard:
                held = held_roots(sweep.levels, held_keys(guard, sweep.tables))
                keys = _next_roots(source, sweep, _allowed(sweep, held, None), after, limit)
                if not keys:
                    transaction.rollback()
                    return None
                deleted = _delete(source, sweep, keys)
                transaction.commit()
                ledger.record_sweep(guard, run_id, deleted)
        finally:
            if transaction.is_active:
                transaction.rollback()
    return BatchResult(last_key=keys[-1], roots=len(keys), deleted=deleted)


def _expire_batch(engines: Engines, lock: RunnerLock, sweep: Sweep, run_id: int,
                  after: Key | None, limit: int, *, timeouts: Timeouts) -> BatchResult | None:
    """Delete the next batch from ARCHIVE and count it, in one ARCHIVE transaction."""
    with holds_guard(engines.archive) as connection:
        set_up_batch(connection, timeouts)
        held = held_roots(sweep.levels, held_keys(connection, sweep.tables))
        allowed = _allowed(sweep, held, _pending_rows(connection, sweep))
        keys = _next_roots(connection, sweep, allowed, after, limit)
        if not keys:
            return None
        rows = descend(sweep.levels, _batch_roots(connection, sweep, keys))
        removed: dict[tuple[int, str], int] = {}
        for name, condition in rows.items():
            run_column = sweep.tables[name].c[ARCHIVE_RUN_ID]
            for archived_by, count in connection.execute(
                    sa.select(run_column, sa.func.count()).where(condition)
                    .group_by(run_column)):
                removed[(int(archived_by), name)] = int(count)
        deleted = _delete(connection, sweep, keys)
        ledger.record_sweep(connection, run_id, deleted, removed)
    return BatchResult(last_key=keys[-1], roots=len(keys), deleted=deleted)


def _allowed(sweep: Sweep, held: sa.ColumnElement[bool] | None,
             excluded: sa.ColumnElement[bool] | None) -> sa.ColumnElement[bool]:
    conditions = [sweep.condition]
    conditions += [sa.not_(condition) for condition in (held, excluded) if condition is not None]
    return sa.and_(*conditions)


def _pending_rows(archive: sa.Connection, sweep: Sweep) -> sa.ColumnElement[bool] | None:
    """For an expiry, the roots of archive runs whose pending window is open (their rows
    may still be in PRIMARY); ``None`` when there are none, or for a purge."""
    if sweep.kind != "expire":
        return None
    pending = [run.run_id for run in
               ledger.pending_runs(archive, sweep.policy.root.fullname, sweep.policy.name)]
    return sweep.root.c[ARCHIVE_RUN_ID].in_(pending) if pending else None


def _next_roots(connection: sa.Connection, sweep: Sweep, allowed: sa.ColumnElement[bool],
                after: Key | None, limit: int) -> list[Key]:
    """The next ``limit`` roots after ``after``, in key order; on PostgreSQL PRIMARY, locked
    and skipping rows an application holds (a later run takes them)."""
    key = key_columns(sweep.root)
    query = sa.select(*key).where(allowed)
    if after is not None:
        query = query.where(key_after(key, after, connection.dialect))
    query = query.order_by(*key).limit(limit)
    if sweep.side == "primary" and connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [tuple(row) for row in connection.execute(query)]


def _batch_roots(connection: sa.Connection, sweep: Sweep,
                 keys: Sequence[Key]) -> sa.ColumnElement[bool]:
    """The batch's roots, still meeting the sweep's condition."""
    listed = key_filters(key_columns(sweep.root), keys, connection.dialect)
    return sa.and_(sa.or_(*listed), sweep.condition)


def _delete(connection: sa.Connection, sweep: Sweep, keys: Sequence[Key]) -> dict[str, int]:
    """Delete the batch's rows, children first; the roots' count must be the batch's."""
    rows = descend(sweep.levels, _batch_roots(connection, sweep, keys))
    deleted: dict[str, int] = {}
    for level in reversed(sweep.levels):
        name = level.table.fullname
        deleted[name] = connection.execute(level.table.delete().where(rows[name])).rowcount
    if deleted[sweep.root.fullname] != len(keys):
        raise ArchiveError(
            f"{sweep.kind}: deleting {sweep.root.fullname!r} removed "
            f"{deleted[sweep.root.fullname]} rows, expected {len(keys)}: rows changed under "
            "the lock; the batch was rolled back, a re-run takes it again")
    return {name: deleted[name] for name in sweep.tables}


def _count(connection: sa.Connection, table: sa.Table,
           condition: sa.ColumnElement[bool]) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(table)
                                  .where(condition)).scalar_one())


def _engine(engines: Engines, sweep: Sweep) -> sa.Engine:
    return engines.primary if sweep.side == "primary" else engines.archive
