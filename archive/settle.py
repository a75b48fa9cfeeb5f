"""Settle runs that left their ledger short: count, from both databases, what they moved.

A run killed (or failed) mid-batch leaves its pending range set and ``deleted`` short of
``copied``. Holding the policy's runner lock, the next run looks only inside each such range
(at most a batch or two of root keys, never a whole run): the rows stamped with that run
whose keys are still in PRIMARY. Its ``deleted`` counters become ``copied`` minus those, and
when none is left its range is cleared, so merged reports stop checking it and ``archive
verify`` sees ``copied = deleted`` again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from archive import ledger
from archive.policy import ArchivePolicy, single_key
from archive.transfer import key_filters
from sediment.core.schema.archive import ARCHIVE_RUN_ID

logger = logging.getLogger(__name__)


def settle_pending_runs(primary: sa.Engine, archive: sa.Engine, policy: ArchivePolicy,
                        ) -> dict[int, dict[str, int]]:
    """Settle every run of ``policy`` with a pending range. Call holding the runner lock,
    between batches (no batch of this policy may be in flight).

    :returns: per settled run, the rows per table still in both databases (all zeros once
        nothing is left there).
    """
    with archive.connect() as connection:
        pending = ledger.pending_ranges(connection, policy.root.name, policy.name)
    settled: dict[int, dict[str, int]] = {}
    for batch in pending:
        present = {table.name: _still_in_primary(primary, archive, table, twin, stamped)
                   for table, twin, stamped in _stamped_in_range(policy, batch)}
        ledger.settle(archive, batch.run_id, present)
        settled[batch.run_id] = present
        if any(present.values()):
            logger.info("policy %s: run %d still has %s rows in both databases; this run "
                        "re-copies and deletes them", policy.name, batch.run_id, present)
        else:
            logger.info("policy %s: run %d settled: its ledger counters now match the "
                        "databases", policy.name, batch.run_id)
    return settled


def _stamped_in_range(policy: ArchivePolicy, batch: ledger.PendingRange
                      ) -> list[tuple[sa.Table, sa.Table, sa.Select[Any]]]:
    """Each table of the policy, its twin, and the keys of its twin rows that ``batch``'s run
    stamped under roots in the pending range (a child through its archived parent)."""
    root_twin = policy.archive_root
    root_key = single_key(root_twin)
    stamped = {policy.root.name: sa.select(root_key).where(
        root_twin.c[ARCHIVE_RUN_ID] == batch.run_id, root_key.between(batch.low, batch.high))}
    tables = [(policy.root, root_twin, stamped[policy.root.name])]
    for link in policy.children:  # parents first
        twin = link.archive_table
        under = (twin.c[link.parent_column.name].between(batch.low, batch.high)
                 if link.parent is policy.root
                 else twin.c[link.parent_column.name].in_(stamped[link.parent.name]))
        stamped[link.table.name] = sa.select(single_key(twin)).where(
            twin.c[ARCHIVE_RUN_ID] == batch.run_id, under)
        tables.append((link.table, twin, stamped[link.table.name]))
    return tables


def _still_in_primary(primary: sa.Engine, archive: sa.Engine, table: sa.Table,
                      twin: sa.Table, stamped: sa.Select[Any]) -> int:
    with archive.connect() as connection:
        keys: Sequence[int] = list(connection.execute(stamped).scalars())
    return count_present(primary, table, keys)


def count_present(primary: sa.Engine, table: sa.Table, keys: Sequence[int]) -> int:
    """How many of ``keys`` are still in ``table`` in PRIMARY."""
    if not keys:
        return 0
    count = 0
    with primary.connect() as connection:
        for condition in key_filters(single_key(table), keys, connection.dialect):
            count += int(connection.execute(
                sa.select(sa.func.count()).select_from(table).where(condition)).scalar_one())
    return count
