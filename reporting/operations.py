"""What the archiver has done and will do, read from the ledger: for the UI's home page and
dashboard, and for ``/metrics``.

Everything comes from ARCHIVE's ledger (``archive_runs``, ``archive_run_tables``) through
the read-only report engine, so any process (a web replica, a gunicorn worker) tells the
same story whichever process ran the policies. Two things the ledger cannot know come from
elsewhere: the next scheduled run (each policy's cron schedule, in settings) and the backlog
of aged rows still in PRIMARY, which the composition root counts (see
:class:`BacklogEstimates`; the counts are reused for a minute, they cost a scan).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from apscheduler.triggers.cron import CronTrigger

from sediment.core.databases import ARCHIVE
from sediment.core.error_text import first_line
from sediment.core.schema import metadata_of
from sediment.core.settings import Settings

logger = logging.getLogger(__name__)

#: Run statuses that count as a successful run (the policy did its work, or the part a
#: limit allowed): what an alert on "no successful run" watches.
SUCCESSFUL = ("done", "max_rows", "max_runtime")


@dataclass(frozen=True)
class RunSummary:
    """One run, as the ledger holds it."""

    id: int
    policy: str
    status: str
    started_at: datetime
    #: archive, purge or expire
    kind: str
    finished_at: datetime | None
    batches: int
    rows_moved: int
    rows_per_second: float | None
    error: str | None

    @property
    def seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class PolicyOverview:
    """One policy: its last run, last success, next run, totals and backlog."""

    name: str
    table: str
    enabled: bool
    schedule: str
    next_run: datetime | None
    last_run: RunSummary | None
    last_success: datetime | None
    runs_by_status: Mapping[str, int] = field(default_factory=dict)
    batches: int = 0
    #: Rows archived (deleted from PRIMARY once in ARCHIVE), per table, over every run.
    rows_by_table: Mapping[str, int] = field(default_factory=dict)
    #: Rows deleted without archiving, per ``(kind, table)``: purged from PRIMARY, or
    #: expired from ARCHIVE.
    swept_by_table: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: Aged rows still in PRIMARY per table, or None when they could not be counted.
    backlog: Mapping[str, int] | None = None


@dataclass(frozen=True)
class RunTableCounters:
    """One table's counters in one run."""

    table: str
    selected: int
    copied: int
    verified: int
    deleted: int
    skipped_locked: int


#: Counts, per policy and table, the rows a run would move now (from the composition root).
BacklogCounter = Callable[[], Mapping[str, Mapping[str, int]]]


class BacklogEstimates:
    """The backlog counts, reused for ``ttl`` seconds while the ledger is unchanged: a count
    of aged rows scans an index (or a table) of PRIMARY, too much to repeat on every scrape
    and every page view, but a run that ends (here or in any other process) changes the
    ledger, and the next reader counts afresh."""

    def __init__(self, count: BacklogCounter | None, ttl: float = 60.0) -> None:
        self._count = count
        self._ttl = ttl
        self._lock = threading.Lock()
        self._counted: tuple[float, Hashable, Mapping[str, Mapping[str, int]]] | None = None

    def get(self, ledger_state: Hashable = None) -> Mapping[str, Mapping[str, int]]:
        """Per policy and table; empty when there is nothing to count or counting failed.

        :param ledger_state: what the ledger says now (its last runs); a change recounts.
        """
        if self._count is None:
            return {}
        with self._lock:
            counted = self._counted
            if counted is not None and counted[1] == ledger_state \
                    and time.monotonic() - counted[0] < self._ttl:
                return counted[2]
            try:
                counts = self._count()
            except sa.exc.SQLAlchemyError as exc:
                logger.warning("backlog of aged rows not counted: %s", first_line(exc))
                counts = {}
            self._counted = (time.monotonic(), ledger_state, counts)
            return counts


def _ledger() -> tuple[sa.Table, sa.Table]:
    tables = metadata_of(ARCHIVE).tables
    return tables["archive_runs"], tables["archive_run_tables"]


def _summary(row: Any) -> RunSummary:
    return RunSummary(id=row.id, policy=row.policy, status=row.status, kind=row.kind,
                      started_at=row.started_at, finished_at=row.finished_at,
                      batches=row.batches or 0, rows_moved=row.rows_moved or 0,
                      rows_per_second=row.rows_per_second, error=row.error)


def _run_columns(runs: sa.Table) -> list[sa.ColumnElement[Any]]:
    return [runs.c.id, runs.c.policy, runs.c.kind, runs.c.status, runs.c.started_at,
            runs.c.finished_at, runs.c.batches, runs.c.rows_moved, runs.c.rows_per_second,
            runs.c.error]


def policy_overviews(settings: Settings, archive: sa.Engine,
                     backlog: BacklogEstimates | None = None,
                     now: datetime | None = None) -> list[PolicyOverview]:
    """Every configured policy with what the ledger says of it (policies no longer
    configured but present in the ledger are left out)."""
    now = now or datetime.now(UTC)
    runs, run_tables = _ledger()
    with archive.connect() as connection:
        latest = sa.select(sa.func.max(runs.c.id)).group_by(runs.c.policy).scalar_subquery()
        last_runs = {row.policy: _summary(row) for row in connection.execute(
            sa.select(*_run_columns(runs)).where(runs.c.id.in_(latest)))}
        successes = {policy: finished for policy, finished in connection.execute(
            sa.select(runs.c.policy, sa.func.max(runs.c.finished_at))
            .where(runs.c.status.in_(SUCCESSFUL)).group_by(runs.c.policy))}
        by_status: dict[str, dict[str, int]] = defaultdict(dict)
        batches: dict[str, int] = defaultdict(int)
        for policy, status, count, batch_count in connection.execute(
                sa.select(runs.c.policy, runs.c.status, sa.func.count(),
                          sa.func.coalesce(sa.func.sum(runs.c.batches), 0))
                .group_by(runs.c.policy, runs.c.status)):
            by_status[policy][status] = int(count)
            batches[policy] += int(batch_count)
        rows: dict[str, dict[str, int]] = defaultdict(dict)
        swept: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        for policy, kind, table, deleted in connection.execute(
                sa.select(runs.c.policy, runs.c.kind, run_tables.c.table_name,
                          sa.func.coalesce(sa.func.sum(run_tables.c.deleted), 0))
                .join(runs, runs.c.id == run_tables.c.run_id)
                .group_by(runs.c.policy, runs.c.kind, run_tables.c.table_name)):
            if kind == "archive":
                rows[policy][table] = int(deleted)
            else:
                swept[policy][(kind, table)] = int(deleted)
    ledger_state = tuple(sorted((run.policy, run.id, run.status) for run in last_runs.values()))
    waiting = backlog.get(ledger_state) if backlog is not None else {}
    return [
        PolicyOverview(
            name=policy.name, table=policy.table, enabled=policy.enabled,
            schedule=policy.schedule,
            next_run=next_run(policy.schedule, settings.scheduler.timezone, now)
            if policy.enabled and settings.scheduler.enabled else None,
            last_run=last_runs.get(policy.name), last_success=successes.get(policy.name),
            runs_by_status=by_status.get(policy.name, {}), batches=batches.get(policy.name, 0),
            rows_by_table=rows.get(policy.name, {}), swept_by_table=swept.get(policy.name, {}),
            backlog=waiting.get(policy.name),
        )
        for policy in settings.policies
    ]


def next_run(schedule: str, timezone: str, now: datetime) -> datetime | None:
    """When a cron ``schedule`` fires next after ``now``."""
    trigger = CronTrigger.from_crontab(schedule, timezone=timezone)
    fire: datetime | None = trigger.get_next_fire_time(None, now)
    return fire.astimezone(UTC) if fire is not None else None


def recent_runs(archive: sa.Engine, limit: int = 50,
                policy: str | None = None) -> list[RunSummary]:
    """The latest runs, newest first."""
    runs, _ = _ledger()
    query = sa.select(*_run_columns(runs)).order_by(runs.c.id.desc()).limit(limit)
    if policy is not None:
        query = query.where(runs.c.policy == policy)
    with archive.connect() as connection:
        return [_summary(row) for row in connection.execute(query)]


def run_detail(archive: sa.Engine, run_id: int
               ) -> tuple[RunSummary, list[RunTableCounters]] | None:
    """One run and its per-table counters, or None if the ledger has no such run."""
    runs, run_tables = _ledger()
    with archive.connect() as connection:
        row = connection.execute(sa.select(*_run_columns(runs))
                                 .where(runs.c.id == run_id)).first()
        if row is None:
            return None
        counters = [RunTableCounters(table=r.table_name, selected=r.selected, copied=r.copied,
                                     verified=r.verified, deleted=r.deleted,
                                     skipped_locked=r.skipped_locked or 0)
                    for r in connection.execute(sa.select(run_tables)
                                                .where(run_tables.c.run_id == run_id)
                                                .order_by(run_tables.c.table_name))]
    return _summary(row), counters


def rows_per_day(archive: sa.Engine, days: int = 90, now: datetime | None = None
                 ) -> dict[str, dict[date, int]]:
    """Rows archived (runs of kind ``archive``) per table per UTC day (by run start) over
    the last ``days`` days:
    ``{table: {day: rows}}``, days without rows left out."""
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    runs, run_tables = _ledger()
    per_table: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    with archive.connect() as connection:
        for started_at, table, deleted in connection.execute(
                sa.select(runs.c.started_at, run_tables.c.table_name, run_tables.c.deleted)
                .join(runs, runs.c.id == run_tables.c.run_id)
                .where(runs.c.started_at >= since, runs.c.kind == "archive",
                       run_tables.c.deleted > 0)):
            per_table[table][started_at.astimezone(UTC).date()] += int(deleted)
    return {table: dict(days_rows) for table, days_rows in sorted(per_table.items())}
