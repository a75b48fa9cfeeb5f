"""A run of one policy: batches until done, a limit, a stop request or an error.

The CLI, the scheduler and the tests all call :func:`run_policy`. A run holds the policy's
runner lock, records itself in the ledger, retries a batch whole when a connection drops
(a batch is idempotent), sleeps only between batches with no transaction open, and stops
cleanly after the current batch when asked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa

from archive import ledger
from archive.locks import runner_lock
from archive.mover import ArchiveError, BatchResult, Timeouts, move_batch
from archive.policy import ArchivePolicy
from reporting.settings import ArchiveSettings, DatabaseSettings

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[BatchResult], None]


@dataclass(frozen=True)
class RunLimits:
    """Optional bounds of a run. ``max_rows`` counts root rows (children travel with them)."""

    max_rows: int | None = None
    max_runtime: timedelta | None = None


@dataclass
class RunReport:
    """How a run ended and what it moved."""

    policy: str
    status: str
    cutoff: datetime
    run_id: int | None = None
    batches: int = 0
    roots: int = 0
    moved: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

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
    aged = sa.select(policy.key).where(policy.aged(cutoff))
    with primary.connect() as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        else:
            connection.exec_driver_sql("PRAGMA query_only = ON")
        try:
            counts = {policy.root.name: _count(connection, aged)}
            for link in policy.children:
                children = sa.select(link.key).where(link.parent_column.in_(aged))
                counts[link.table.name] = _count(connection, children)
        finally:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA query_only = OFF")
    return DryRunPlan(policy=policy.name, cutoff=cutoff, counts=counts)


def _count(connection: sa.Connection, query: sa.Select[Any]) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(query.subquery()))
               .scalar_one())


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
) -> RunReport:
    """Run ``policy`` once and record it in the ledger.

    :param now: the instant the cutoff is computed from (``--now`` makes runs reproducible).
    :param stop: set it to stop cleanly after the current batch (SIGTERM, scheduler shutdown).
    :returns: the report; ``status`` is one of ``done``, ``max_rows``, ``max_runtime``,
        ``stop_requested``, ``lock_busy`` or ``error``. Errors are reported, not raised.
    """
    stop = stop or threading.Event()
    limits = limits or RunLimits()
    cutoff = policy.cutoff(now)
    report = RunReport(policy=policy.name, status="running", cutoff=cutoff,
                       moved={table.name: 0 for table in policy.tables})
    tables = [table.name for table in policy.tables]
    with runner_lock(primary, policy.name) as acquired:
        if not acquired:
            report.status = "lock_busy"
            report.run_id = ledger.start_run(archive, policy.name, cutoff, tables, "lock_busy")
            ledger.finish_run(archive, report.run_id, "lock_busy", rows_per_second=None,
                              error="another runner holds this policy's lock")
            logger.warning("policy %s: another runner holds the lock; nothing done", policy.name)
            return report
        report.run_id = ledger.start_run(archive, policy.name, cutoff, tables)
        stale = ledger.mark_interrupted(archive, policy.name, report.run_id)
        if stale:
            logger.warning("policy %s: runs %s had been interrupted; their rows are re-checked",
                           policy.name, stale)
        logger.info("policy %s run %d started: cutoff %s, batch size %d", policy.name,
                    report.run_id, cutoff.isoformat(), policy.batch_size)
        _batches(primary, archive, policy, report, database, settings, limits, stop, progress)
        ledger.finish_run(archive, report.run_id, report.status,
                          rows_per_second=report.rows_per_second, error=report.error)
    log = logger.error if report.status == "error" else logger.info
    log("policy %s run %d ended %s: %d rows in %d batches, %.1fs%s", policy.name, report.run_id,
        report.status, report.rows, report.batches, report.seconds,
        f": {report.error}" if report.error else "")
    return report


def _batches(primary: sa.Engine, archive: sa.Engine, policy: ArchivePolicy, report: RunReport,
             database: DatabaseSettings, settings: ArchiveSettings, limits: RunLimits,
             stop: threading.Event, progress: ProgressCallback | None) -> None:
    assert report.run_id is not None
    timeouts = Timeouts(database.statement_timeout_ms, database.lock_timeout_ms)
    started = time.monotonic()
    after_key: int | None = None
    try:
        while True:
            report.seconds = time.monotonic() - started
            limit = policy.batch_size
            if stop.is_set():
                report.status = "stop_requested"
                return
            runtime = limits.max_runtime
            if runtime is not None and report.seconds >= runtime.total_seconds():
                report.status = "max_runtime"
                return
            if limits.max_rows is not None:
                if report.roots >= limits.max_rows:
                    report.status = "max_rows"
                    return
                limit = min(limit, limits.max_rows - report.roots)
            result = _with_retries(settings, stop, partial(
                move_batch, primary, archive, policy, cutoff=report.cutoff,
                after_key=after_key, limit=limit, run_id=report.run_id, timeouts=timeouts))
            if result is None:
                report.status = "done"
                return
            ledger.record_delete(archive, report.run_id, result.deleted)
            after_key = result.last_key
            report.batches += 1
            report.roots += result.roots
            for table, count in result.deleted.items():
                report.moved[table] += count
            if progress is not None:
                progress(result)
            if settings.throttle and stop.wait(settings.throttle.total_seconds()):
                continue  # woken by a stop request: the loop head records it
    except (ArchiveError, sa.exc.SQLAlchemyError) as exc:
        report.status = "error"
        report.error = str(exc).splitlines()[0]
    finally:
        report.seconds = time.monotonic() - started


def _with_retries(settings: ArchiveSettings, stop: threading.Event,
                  attempt: Callable[[], BatchResult | None]) -> BatchResult | None:
    """Run a whole batch, again after a dropped connection, with doubling backoff."""
    delay = settings.retry_backoff.total_seconds()
    for number in range(1, settings.retry_attempts + 1):
        try:
            return attempt()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if number == settings.retry_attempts or stop.is_set():
                raise
            logger.warning("batch failed (%s); retry %d of %d in %.1fs",
                           str(exc).splitlines()[0], number, settings.retry_attempts - 1, delay)
            stop.wait(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
