"""Settle runs that left their ledger short: count, from both databases, what they moved.

A run killed (or failed) mid-batch leaves its pending window set and ``deleted`` short of
``copied``. Holding the policy's runner lock, the next run looks only at the rows that run
archived since its window opened (at most a batch or two, never a whole run): those whose
keys are still in PRIMARY. Its ``deleted`` counters become ``copied`` minus those, and when
none is left its window is cleared, so merged reports stop checking it and ``archive
verify`` sees ``copied = deleted`` again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa

from archive import ledger
from archive.keys import Key, key_columns, key_filters
from archive.policy import ArchivePolicy
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT

logger = logging.getLogger(__name__)

#: Keys looked up in PRIMARY per statement while settling.
SETTLE_CHUNK = 20_000


def settle_pending_runs(primary: sa.Engine, archive: sa.Engine, policy: ArchivePolicy,
                        ) -> dict[int, dict[str, int]]:
    """Settle every run of ``policy`` with a pending window. Call holding the runner lock,
    between batches (no batch of this policy may be in flight).

    :returns: per settled run, the rows per table still in both databases (all zeros once
        nothing is left there).
    """
    with archive.connect() as connection:
        pending = ledger.pending_runs(connection, policy.root.fullname, policy.name)
    settled: dict[int, dict[str, int]] = {}
    tables = [(policy.root, policy.archive_root),
              *((link.table, link.archive_table) for link in policy.children)]
    for run in pending:
        present = {table.fullname: _still_in_primary(primary, archive, table, twin, run)
                   for table, twin in tables}
        ledger.settle(archive, run.run_id, present)
        settled[run.run_id] = present
        if any(present.values()):
            logger.info("policy %s: run %d still has %s rows in both databases; this run "
                        "re-copies and deletes them", policy.name, run.run_id, present)
        else:
            logger.info("policy %s: run %d settled: its ledger counters now match the "
                        "databases", policy.name, run.run_id)
    return settled


def _still_in_primary(primary: sa.Engine, archive: sa.Engine, table: sa.Table,
                      twin: sa.Table, run: ledger.PendingRun) -> int:
    """Rows ``run`` archived into ``twin`` since its window opened whose keys are still in
    ``table`` in PRIMARY."""
    stamped = sa.select(*key_columns(twin)).where(
        twin.c[ARCHIVE_RUN_ID] == run.run_id, twin.c[ARCHIVED_AT] >= run.since)
    with archive.connect() as connection:
        keys: list[Key] = [tuple(row) for row in connection.execute(stamped)]
    return count_present(primary, table, keys)


def count_present(primary: sa.Engine, table: sa.Table, keys: Sequence[Key]) -> int:
    """How many of ``keys`` are still in ``table`` in PRIMARY."""
    count = 0
    with primary.connect() as connection:
        for start in range(0, len(keys), SETTLE_CHUNK):
            for condition in key_filters(key_columns(table), keys[start:start + SETTLE_CHUNK],
                                         connection.dialect):
                count += int(connection.execute(
                    sa.select(sa.func.count()).select_from(table).where(condition)
                ).scalar_one())
    return count
