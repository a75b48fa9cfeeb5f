"""``archive-runs``: the archiver's ledger (ARCHIVE only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from reporting.reports.base import Column, DatabaseTables, Filter, RowReport


def query(tables: DatabaseTables, params: Mapping[str, Any]) -> sa.Select[Any]:
    runs = tables["archive_runs"]
    return sa.select(runs.c.id, runs.c.policy, runs.c.kind, runs.c.status, runs.c.cutoff,
                     runs.c.started_at, runs.c.finished_at, runs.c.batches, runs.c.rows_moved,
                     runs.c.rows_per_second, runs.c.error)


REPORT = RowReport(
    name="archive-runs",
    title="Archive runs",
    description="Every run of the archiver, of every kind (archive, purge, expire, restore, "
                "erase): policy, cutoff, timing, rows and how it ended.",
    columns=(
        Column("id", "integer", "run id"),
        Column("policy", "string", "policy name"),
        Column("kind", "string", "archive (moved to ARCHIVE), purge (deleted from PRIMARY), "
               "expire (deleted from ARCHIVE after the retention period), restore (moved "
               "back to PRIMARY) or erase (a data subject deleted from both)"),
        Column("status", "string", "done, max_rows, max_runtime, stop_requested, lock_busy, "
               "lock_lost, schema_drift, error, interrupted or running"),
        Column("cutoff", "datetime", "rows older than this were taken"),
        Column("started_at", "datetime", "start (UTC)"),
        Column("finished_at", "datetime", "end (UTC), if ended"),
        Column("batches", "integer", "batches completed"),
        Column("rows_moved", "integer", "rows deleted: from PRIMARY after archiving, or by the "
               "purge or the expiry"),
        Column("rows_per_second", "number", "throughput"),
        Column("error", "string", "why it failed, if it did"),
    ),
    key=("id",),
    sort_keys=("id", "started_at"),
    default_sort="-id",
    sources=("archive",),
    filters=(
        Filter("policy", "string", ("eq", "in"), "policy name"),
        Filter("kind", "string", ("eq", "in"), "archive, purge, expire, restore or erase"),
        Filter("status", "string", ("eq", "ne", "in"), "how the run ended"),
        Filter("started_at", "datetime", ("gte", "lt"), "start time range"),
    ),
    query=query,
    root="archive_runs",
    scope="archive",
)
