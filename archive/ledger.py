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
from datetime import UTC, datetime

import sqlalchemy as sa

from archive.models import ArchiveRun, ArchiveRunTable

runs: sa.Table = ArchiveRun.__table__  # type: ignore[assignment]
run_tables: sa.Table = ArchiveRunTable.__table__  # type: ignore[assignment]


def start_run(archive: sa.Engine, policy: str, cutoff: datetime, tables: list[str],
              status: str = "running") -> int:
    """Record a new run and its per-table counters; return its id."""
    with archive.begin() as connection:
        run_id = int(connection.execute(
            runs.insert().values(
                policy=policy, status=status, cutoff=cutoff, started_at=datetime.now(UTC),
                batches=0, rows_moved=0, host=socket.gethostname(), pid=os.getpid(),
            ).returning(runs.c.id)
        ).scalar_one())
        connection.execute(run_tables.insert(), [
            {"run_id": run_id, "table_name": name, "selected": 0, "copied": 0, "verified": 0,
             "deleted": 0} for name in tables
        ])
    return run_id


def record_copy(connection: sa.Connection, run_id: int, table: str, *, selected: int,
                copied: int, verified: int, taken_over: Mapping[int, int]) -> None:
    """Add a batch's copy counters, inside the ARCHIVE transaction that copied it.

    :param taken_over: rows this batch overwrote, by the run id they carried before.
    """
    for previous_run, count in taken_over.items():  # this run too, when a batch is retried
        _add(connection, previous_run, table, copied=-count, verified=-count)
    _add(connection, run_id, table, selected=selected, copied=copied, verified=verified)


def record_delete(archive: sa.Engine, run_id: int, deleted: Mapping[str, int]) -> None:
    """Add a batch's deleted counters after its PRIMARY commit."""
    with archive.begin() as connection:
        for table, count in deleted.items():
            _add(connection, run_id, table, deleted=count)
        connection.execute(runs.update().where(runs.c.id == run_id).values(
            batches=runs.c.batches + 1, rows_moved=runs.c.rows_moved + sum(deleted.values()),
        ))


def finish_run(archive: sa.Engine, run_id: int, status: str, *, rows_per_second: float | None,
               error: str | None = None) -> None:
    """Close a run with its exit reason."""
    with archive.begin() as connection:
        connection.execute(runs.update().where(runs.c.id == run_id).values(
            status=status, finished_at=datetime.now(UTC), rows_per_second=rows_per_second,
            error=error,
        ))


def mark_interrupted(archive: sa.Engine, policy: str, current_run: int) -> list[int]:
    """Mark earlier runs of ``policy`` still ``running`` as ``interrupted``.

    Call only while holding the policy's runner lock: no other live run can then exist, so
    a ``running`` row is a run that was killed.
    """
    with archive.begin() as connection:
        stale = list(connection.execute(
            sa.select(runs.c.id).where(runs.c.policy == policy, runs.c.status == "running",
                                       runs.c.id != current_run)
        ).scalars())
        if stale:
            connection.execute(runs.update().where(runs.c.id.in_(stale)).values(
                status="interrupted", finished_at=datetime.now(UTC),
                error="the process ended before the run finished; its rows were re-checked",
            ))
    return stale


def _add(connection: sa.Connection, run_id: int, table: str, **deltas: int) -> None:
    connection.execute(
        run_tables.update()
        .where(run_tables.c.run_id == run_id, run_tables.c.table_name == table)
        .values({run_tables.c[name]: run_tables.c[name] + delta for name, delta in deltas.items()})
    )
