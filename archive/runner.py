"""A run of one policy: batches until done, a limit, a stop request or an error.

The CLI, the scheduler and the tests all call :func:`run_policy`. A run holds the policy's
runner lock (checked, and taken back if it was lost, before every batch), records itself in
the ledger, settles earlier runs that died mid-batch, retries a batch whole when a
connection drops (a batch is idempotent), sleeps only between batches with no transaction
open, and stops cleanly after the current batch when asked. However it ends, its status and
cause go to the ledger, and the returned outcome says the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa

from archive import ledger
from archive.keys import Key, columns_in
from archive.locks import LockLost, RunnerLock
from archive.mover import ArchiveError, BatchResult, SchemaDrift, Timeouts
from archive.pipeline import BatchPipeline
from archive.policy import ArchivePolicy, unreferenced_by_others
from archive.preflight import missing_privileges
from archive.restore_marks import without_restored
from archive.retries import RetryBudget, with_retries
from archive.settle import settle_pending_runs
from sediment.core.databases import analyze
from sediment.core.error_text import (
    first_line,
    is_read_only_refusal,
    is_statement_timeout,
    read_only_text,
)
from sediment.core.schema.archive import RunKind, RunStatus
from sediment.core.settings import ArchiveSettings, DatabaseSettings, SettingsError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[BatchResult], None]


@dataclass(frozen=True)
class RunLimits:
    """Optional bounds of a run. ``max_rows`` counts root rows (children travel with them)."""

    max_rows: int | None = None
    max_runtime: timedelta | None = None


@dataclass
class RunOutcome:
    """How a run ended and what it moved."""

    policy: str
    status: RunStatus
    cutoff: datetime
    run_id: int | None = None
    batches: int = 0
    roots: int = 0
    moved: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    #: Roots left for a later run because a writer held one of their children.
    skipped_locked: int = 0
    kind: RunKind = "archive"
    #: Roots a purge or an expiry left alone because a legal hold covers them.
    held: int = 0

    @property
    def rows(self) -> int:
        return sum(self.moved.values())

    @property
    def rows_per_second(self) -> float | None:
        return self.rows / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class DryRunPlan:
    """What a run would move now: aged roots and their children, per table."""

    policy: str
    cutoff: datetime
    counts: dict[str, int]


def plan_run(primary: sa.Engine, policy: ArchivePolicy, now: datetime) -> DryRunPlan:
    """Count what a run at ``now`` would move, in a read-only transaction.

    PostgreSQL enforces ``READ ONLY`` on the transaction; on SQLite the connection is put in
    ``query_only`` mode for the count and restored, so any write would fail either way.
    """
    cutoff = policy.cutoff(now)
    moving: dict[str, sa.ColumnElement[bool]] = {policy.root.fullname: policy.aged(cutoff)}
    with primary.connect() as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        else:
            connection.exec_driver_sql("PRAGMA query_only = ON")
        try:
            for link in policy.children:  # parents first: each level selects by the one above
                parents = sa.select(*link.referenced).where(moving[link.parent.fullname])
                moving[link.table.fullname] = columns_in(link.columns, parents)
            counts = {table.fullname: _count(connection, table, moving[table.fullname])
                      for table in policy.tables}
        finally:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA query_only = OFF")
    return DryRunPlan(policy=policy.name, cutoff=cutoff, counts=counts)


def _count(connection: sa.Connection, table: sa.Table,
           condition: sa.ColumnElement[bool]) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(table)
                                  .where(condition)).scalar_one())


def run_policy(
    primary: sa.Engine,
    archive: sa.Engine,
    policy: ArchivePolicy,
    *,
    now: datetime,
    database: DatabaseSettings,
    settings: ArchiveSettings,
    limits: RunLimits | None = None,
    stop: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    prepare: Callable[[], ArchivePolicy] | None = None,
) -> RunOutcome:
    """Run ``policy`` once and record it in the ledger.

    :param prepare: called holding the runner lock, before the first batch: the policy as
        PRIMARY's schema is now, its twins brought up to date (an existing PRIMARY). A
        :class:`SchemaDrift` (or a table gone) ends the run ``schema_drift``.
    :param now: the instant the cutoff is computed from (``--now`` makes runs reproducible).
    :param stop: set it to stop cleanly after the current batch (SIGTERM, scheduler shutdown).
    :returns: the outcome; ``status`` is one of ``done``, ``max_rows``, ``max_runtime``,
        ``stop_requested``, ``lock_busy``, ``lock_lost`` or ``error``, and is what the ledger
        says too (or, when the ledger itself cannot be written, ``error`` saying so).
        Errors are reported, not raised.
    """
    stop = stop or threading.Event()
    limits = limits or RunLimits()

    resolved = policy  # as PRIMARY is now, once prepared

    def archive_rows(outcome: RunOutcome, lock: RunnerLock) -> None:
        nonlocal resolved
        assert outcome.run_id is not None
        if prepare is not None:
            try:
                resolved = prepare()
                ledger.ensure_tables(archive, outcome.run_id,
                                     [table.fullname for table in resolved.tables])
                outcome.moved = {table.fullname: 0 for table in resolved.tables}
            except (SchemaDrift, SettingsError) as exc:
                outcome.status, outcome.error = "schema_drift", str(exc)
            except sa.exc.SQLAlchemyError as exc:
                outcome.status, outcome.error = "error", first_line(exc)
        if outcome.status == "running":
            try:
                resolved = without_restored(archive, resolved, now)
            except sa.exc.SQLAlchemyError as exc:
                outcome.status, outcome.error = "error", first_line(exc)
        if outcome.status == "running":
            _batches(primary, archive, resolved, outcome, lock, database, settings, limits, stop,
                     progress)

    outcome = run_locked(primary, archive, policy, kind="archive", cutoff=policy.cutoff(now),
                         settings=settings, stop=stop, work=archive_rows)
    if outcome.rows:
        _refresh_statistics(archive, resolved)
    return outcome


#: What a run does holding its policy's lock, once the ledger has recorded it: it fills in
#: the outcome (status ``running`` means it ended ``done``, unless it set another).
RunWork = Callable[[RunOutcome, RunnerLock], None]

#: How a run ends when something went wrong.
FAILED = frozenset({"error", "lock_lost", "schema_drift"})

#: What an operator needs to know about any failed run: every batch is a pair of
#: transactions, and one that did not finish is rolled back or settled by the next run.
SAFE_AGAIN = ("nothing is lost: a batch that did not finish was rolled back or is settled "
              "by the next run, so running again once the cause is fixed is safe")


def run_locked(primary: sa.Engine, archive: sa.Engine, policy: ArchivePolicy, *, kind: RunKind,
               cutoff: datetime, settings: ArchiveSettings, stop: threading.Event,
               work: RunWork) -> RunOutcome:
    """Take the policy's runner lock, record a run of ``kind`` in the ledger, do ``work``,
    record how it ended, and release the lock. Every kind of run of a policy (archive,
    purge, expire, restore) takes the same lock, so they never overlap; an erasure takes
    the lock of every policy it touches (:mod:`archive.erase`).

    Errors are reported in the outcome (and the ledger), not raised.
    """
    outcome = RunOutcome(policy=policy.name, status="running", cutoff=cutoff, kind=kind,
                         moved={table.fullname: 0 for table in policy.tables})
    tables = [table.fullname for table in policy.tables]
    lock = RunnerLock(primary, policy.name)
    try:
        try:
            acquired = lock.acquire()
        except sa.exc.SQLAlchemyError as exc:
            outcome.status, outcome.error = "error", f"PRIMARY unreachable: {first_line(exc)}"
            logger.error("policy %s: cannot take the runner lock: %s", policy.name, outcome.error)
            return outcome
        if not acquired:
            outcome.status = "lock_busy"
            logger.warning("policy %s: another runner holds the lock; no %s run", policy.name,
                           kind)
            try:
                outcome.run_id = ledger.start_run(archive, policy.name, cutoff, tables,
                                                 "lock_busy", kind=kind)
                ledger.finish_run(archive, outcome.run_id, "lock_busy", rows_per_second=None,
                                  error="another runner holds this policy's lock")
            except sa.exc.SQLAlchemyError as exc:
                logger.warning("policy %s: ARCHIVE unreachable, lock_busy not recorded: %s",
                               policy.name, first_line(exc))
            return outcome
        try:
            outcome.run_id = with_retries(settings, stop, lambda: ledger.start_run(
                archive, policy.name, cutoff, tables, kind=kind))
        except sa.exc.SQLAlchemyError as exc:
            outcome.status = "error"
            outcome.error = (read_only_text("ARCHIVE", exc) if is_read_only_refusal(exc)
                             else f"ARCHIVE unreachable: {first_line(exc)}")
            logger.error("policy %s: cannot start a run: %s", policy.name, outcome.error)
            return outcome
        logger.info("policy %s %s run %d started: cutoff %s, batch size %d", policy.name, kind,
                    outcome.run_id, cutoff.isoformat(), policy.batch_size)
        run_id = outcome.run_id
        try:
            stale = with_retries(settings, stop, lambda: ledger.mark_interrupted(
                archive, policy.name, run_id))
        except sa.exc.SQLAlchemyError as exc:
            outcome.status, outcome.error = "error", first_line(exc)
        else:
            if stale:
                logger.warning("policy %s: runs %s had been interrupted", policy.name, stale)
            try:
                outcome.error = missing_privileges(primary, policy.tables, kind)
            except sa.exc.SQLAlchemyError as exc:
                outcome.error = first_line(exc)
            if outcome.error:
                outcome.status = "error"
            else:
                work(outcome, lock)
        if outcome.status == "running":
            outcome.status = "done"
        _finish(archive, outcome, settings)
    finally:
        lock.release()
    failed = outcome.status in FAILED
    (logger.error if failed else logger.info)(
        "policy %s %s run %d ended %s: %d rows in %d batches, %.1fs%s%s", policy.name, kind,
        outcome.run_id, outcome.status, outcome.rows, outcome.batches, outcome.seconds,
        f": {outcome.error}" if outcome.error else "", f" ({SAFE_AGAIN})" if failed else "")
    return outcome


def _finish(archive: sa.Engine, outcome: RunOutcome, settings: ArchiveSettings) -> None:
    """Write how the run ended; retried like a batch, since an outage may end a run too.

    When the ledger stays unreachable, the outcome says ``error`` with both causes: the
    ledger still says ``running``, and the next run marks it ``interrupted``.
    """
    assert outcome.run_id is not None
    run_id = outcome.run_id
    try:
        with_retries(settings, threading.Event(), lambda: ledger.finish_run(
            archive, run_id, outcome.status, rows_per_second=outcome.rows_per_second,
            error=outcome.error))
    except sa.exc.SQLAlchemyError as exc:
        cause = f"; before that: {outcome.error}" if outcome.error else ""
        outcome.status = "error"
        outcome.error = (f"the ledger could not record the end of the run "
                        f"({first_line(exc)}){cause}")


def _batches(primary: sa.Engine, archive: sa.Engine, policy: ArchivePolicy, outcome: RunOutcome,
             lock: RunnerLock, database: DatabaseSettings, settings: ArchiveSettings,
             limits: RunLimits, stop: threading.Event,
             progress: ProgressCallback | None) -> None:
    assert outcome.run_id is not None
    run_id = outcome.run_id
    timeouts = Timeouts(database.statement_timeout_ms, database.lock_timeout_ms)
    started = time.monotonic()
    budget = RetryBudget(settings)  # renewed by each batch moved, not by each step

    def moved(result: BatchResult) -> None:
        budget.progressed()
        if not with_retries(settings, stop, partial(
                ledger.record_delete, archive, run_id, result.deleted,
                {policy.root.fullname: result.skipped_locked})):
            check_still_running(archive, run_id)  # raises: another runner took the run over
        outcome.batches += 1
        outcome.roots += result.roots
        outcome.skipped_locked += result.skipped_locked
        for table, count in result.deleted.items():
            outcome.moved[table] += count
        if progress is not None:
            progress(result)

    pipeline = BatchPipeline(lock, archive, policy, cutoff=outcome.cutoff, run_id=run_id,
                             timeouts=timeouts, on_moved=moved,
                             on_lock_retaken=lambda: check_still_running(archive, run_id))

    # A root another row of its table references waits for that row: a pass that moved
    # rows may have freed some it went by, and the next pass starts from the first key.
    passes_again = bool(unreferenced_by_others(policy.root))
    moved_before_pass = [0]

    def step(limit: int) -> bool:
        """Select the next batch, start its copy and its deletes; ``False`` once nothing is
        left (and every batch's deletes have committed)."""
        opened = pipeline.start_next(limit)
        if opened is None:
            pipeline.drain()
            if passes_again and outcome.roots > moved_before_pass[0]:
                moved_before_pass[0] = outcome.roots
                pipeline.restart()
                return True
            return False
        pipeline.hand_over(opened)
        return True

    try:
        with_retries(settings, stop, lambda: settle_pending_runs(primary, archive, policy))
        while True:
            outcome.seconds = time.monotonic() - started
            limit = policy.batch_size
            ended = limit_reached(outcome, limits, stop, pipeline.roots_in_flight)
            if ended is not None:
                outcome.status = ended
                break
            if limits.max_rows is not None:
                limit = min(limit, limits.max_rows - outcome.roots - pipeline.roots_in_flight)
            if not with_retries(settings, stop, partial(step, limit), budget):
                outcome.status = "done"
                break
            if settings.throttle and stop.wait(settings.throttle.total_seconds()):
                continue  # woken by a stop request: the loop head records it
        # The batch still deleting when a limit or a stop request ended the loop: its
        # failure ends the run ``error`` (its rows stay in both databases for the next run).
        pipeline.drain()
        with_retries(settings, stop, lambda: settle_pending_runs(primary, archive, policy))
    except LockLost as exc:
        outcome.status, outcome.error = "lock_lost", str(exc)
    except SchemaDrift as exc:
        outcome.status, outcome.error = "schema_drift", str(exc)
    except (ArchiveError, sa.exc.SQLAlchemyError) as exc:
        outcome.status, outcome.error = "error", first_line(exc)
        if is_statement_timeout(exc):
            outcome.error += (
                f": a batch's statement ran longer than database.statement_timeout_ms "
                f"({database.statement_timeout_ms} ms) on every attempt; raise it, or lower "
                f"policy.{policy.name}.batch_size ({policy.batch_size})")
    except UNCONVERTIBLE as exc:
        _unconvertible(outcome, exc)
    finally:
        pipeline.close()
        outcome.seconds = time.monotonic() - started


#: One batch of a sweep or a restore: the next one after a key (``None``: from the start),
#: of at most so many roots; ``None`` once nothing is left.
BatchStep = Callable[[Key | None, int], BatchResult | None]


def batch_loop(outcome: RunOutcome, lock: RunnerLock, archive: sa.Engine, *, batch_size: int,
               settings: ArchiveSettings, limits: RunLimits, stop: threading.Event,
               progress: ProgressCallback | None, step: BatchStep) -> None:
    """Run ``step`` batch after batch, in key order, until nothing is left, a limit or a
    stop request, as the archive runs do: the lock checked (and taken back) before each
    batch, a dropped connection retried, the throttle between batches. How it ended goes
    into ``outcome``; errors are recorded there, not raised."""
    assert outcome.run_id is not None
    run_id = outcome.run_id
    started, after = time.monotonic(), None
    try:
        while True:
            outcome.seconds = time.monotonic() - started
            ended = limit_reached(outcome, limits, stop)
            if ended is not None:
                outcome.status = ended
                break
            if lock.ensure_held():
                check_still_running(archive, run_id)
            limit = batch_size
            if limits.max_rows is not None:
                limit = min(limit, limits.max_rows - outcome.roots)
            result = with_retries(settings, stop, partial(step, after, limit))
            if result is None:
                outcome.status = "done"
                break
            after = result.last_key
            outcome.batches += 1
            outcome.roots += result.roots
            for name, count in result.deleted.items():
                outcome.moved[name] = outcome.moved.get(name, 0) + count
            if progress is not None:
                progress(result)
            if settings.throttle and stop.wait(settings.throttle.total_seconds()):
                continue
    except LockLost as exc:
        outcome.status, outcome.error = "lock_lost", str(exc)
    except (ArchiveError, sa.exc.SQLAlchemyError) as exc:
        outcome.status, outcome.error = "error", first_line(exc)
    except UNCONVERTIBLE as exc:
        _unconvertible(outcome, exc)
    finally:
        outcome.seconds = time.monotonic() - started


#: What a driver or a column type raises for a stored value it cannot convert (SQLite keeps
#: any value in any column: text of no timestamp in a DATETIME one copied into PostgreSQL).
UNCONVERTIBLE = (ValueError, TypeError, ArithmeticError)


def _unconvertible(outcome: RunOutcome, error: Exception) -> None:
    """End the run ``error`` on a value that could not be converted, where it escaped as a
    traceback and left the run ``running`` in the ledger. The batch's transactions rolled
    back on their way out, as for any other error; the run's end is logged as an error,
    the traceback at DEBUG (``--log-level DEBUG``)."""
    outcome.status = "error"
    outcome.error = f"a stored value could not be converted: {first_line(error)}"
    logger.debug("policy %s: %s", outcome.policy, outcome.error, exc_info=True)


def limit_reached(outcome: RunOutcome, limits: RunLimits, stop: threading.Event,
                  in_flight: int = 0) -> RunStatus | None:
    """How a run ends before its next batch (a stop request, its runtime or its rows
    spent), or ``None`` to go on. ``in_flight`` counts roots of a batch still deleting."""
    if stop.is_set():
        return "stop_requested"
    runtime = limits.max_runtime
    if runtime is not None and outcome.seconds >= runtime.total_seconds():
        return "max_runtime"
    if limits.max_rows is not None and limits.max_rows - outcome.roots - in_flight <= 0:
        return "max_rows"
    return None


def _refresh_statistics(archive: sa.Engine, policy: ArchivePolicy) -> None:
    """ANALYZE the twins a run added to, so merged reports are planned for their new size
    (ARCHIVE is Sediment's own; PRIMARY's statistics are left to its autovacuum)."""
    try:
        analyze(archive, list(policy.twins.values()))
    except sa.exc.SQLAlchemyError as exc:
        logger.warning("policy %s: ANALYZE of the archive tables failed: %s", policy.name,
                       first_line(exc))


def check_still_running(archive: sa.Engine, run_id: int) -> None:
    """After the lock was taken back: make sure no other runner ran the policy meanwhile
    (it would have marked this run ``interrupted``)."""
    status = ledger.status_of(archive, run_id)
    if status != "running":
        raise LockLost(f"the runner lock was lost for a while, and another runner marked "
                       f"this run {status!r} meanwhile")
