"""``archive verify``: check, from the databases themselves, that archival kept its promises.

* no key is in both databases (outside a run that is still going);
* every archived child has its archived parent;
* each run's ``copied`` counter equals the rows stamped with its id, and a run that ended
  cleanly deleted what it copied;
* the newest finished run of each policy left no aged row behind in PRIMARY.

The two databases are never joined in SQL: keys are streamed from each side in order and
merged in Python, in constant memory.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from archive import ledger
from archive.keys import Key, columns_match, key_columns, key_filters
from archive.ledger import run_tables, runs
from archive.policy import ArchivePolicy, ChildLink
from archive.preflight import hidden_rows
from archive.restore_marks import without_restored
from sediment.core.collation import in_code_point_order
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT

CLEAN_ENDINGS = ("done", "max_rows", "max_runtime", "stop_requested")
STREAM_PARTITION = 10_000


@dataclass
class Verification:
    """What ``archive verify`` found: the checks that passed and the problems."""

    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_archive(primary: sa.Engine, archive: sa.Engine,
                   policies: Sequence[ArchivePolicy]) -> Verification:
    """Run every check for every policy; return what passed and what did not."""
    found = Verification()
    running = _has_running_runs(archive)
    for policy in (policy for policy in policies if policy.archives):
        for table, twin in ((policy.root, policy.archive_root),
                            *((link.table, link.archive_table) for link in policy.children)):
            _check_keys_in_both(table, twin, _keys_in_both(primary, table, archive, twin),
                                archive, running, found)
        for link in policy.children:
            orphans = _orphans(archive, link)
            if orphans:
                found.problems.append(f"{link.table.fullname}: {orphans} archived rows without "
                                      f"their archived {link.parent.fullname} row")
            else:
                found.checks.append(f"{link.table.fullname}: every archived row has its parent")
        _check_ledger(archive, policy, found)
        hidden = hidden_rows(primary, policy.tables)
        if hidden is not None:  # the checks above and below see only the visible rows
            found.problems.append(f"policy {policy.name}: {hidden}, so no check can see "
                                  f"them: {hidden.fix}")
        else:
            _check_nothing_left(primary, archive, policy, found)
    return found


def _has_running_runs(archive: sa.Engine) -> bool:
    with archive.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).where(runs.c.status == "running")).scalar_one() > 0


def _sorted_keys(engine: sa.Engine, table: sa.Table) -> Iterator[Key]:
    """Every key of ``table``, in the order Python compares them (text by code point,
    whatever the column's collation)."""
    columns = key_columns(table)
    order = [in_code_point_order(column, engine.dialect.name) for column in columns]
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=STREAM_PARTITION) \
            .execute(sa.select(*columns).order_by(*order))
        for partition in result.partitions(STREAM_PARTITION):
            yield from (tuple(row) for row in partition)


def _keys_in_both(primary: sa.Engine, table: sa.Table, archive: sa.Engine,
                  twin: sa.Table) -> list[Key]:
    both: list[Key] = []
    previous: Key | None = None
    merged = heapq.merge(_sorted_keys(primary, table), _sorted_keys(archive, twin))
    for key in merged:
        if key == previous:
            both.append(key)
        previous = key
    return both


def _check_keys_in_both(table: sa.Table, twin: sa.Table, both: list[Key], archive: sa.Engine,
                        running: bool, found: Verification) -> None:
    """Tell apart the two kinds of keys in both databases: copies an unfinished batch left
    (the next run finishes moving them), and archived rows PRIMARY holds again, which no
    run moves (verify told to 'archive run' for both, and a row PRIMARY reused its key for,
    never aged, was never named by any run). While a run is going, neither is a problem,
    and no claim is made that there are none."""
    if not both:
        found.checks.append(f"{table.fullname}: no key in both databases")
        return
    if running:  # a batch may close its window between the key streams and the ledger read
        found.checks.append(f"{table.fullname}: {_keys(both)} in both databases, e.g. "
                            f"{_shown(both)}, while a run is going")
        return
    with archive.connect() as connection:
        windows = ledger.open_windows(connection)
        stamps = [stamp for condition in key_filters(key_columns(twin), both, connection.dialect)
                  for stamp in connection.execute(sa.select(
                      *key_columns(twin), twin.c[ARCHIVE_RUN_ID], twin.c[ARCHIVED_AT])
                      .where(condition))]
    width = len(key_columns(twin))
    leftovers = {tuple(stamp[:width]) for stamp in stamps
                 if ledger.left_over(windows, stamp[-2], stamp[-1])}
    left = [key for key in both if key in leftovers]
    again = [key for key in both if key not in leftovers]
    if left:
        found.problems.append(
            f"{table.fullname}: {_keys(left)} in both databases, left by a batch that did "
            f"not finish, e.g. {_shown(left)}; run 'archive run' to finish moving them")
    if again:
        found.problems.append(
            f"{table.fullname}: {_keys(again)} of archived rows in PRIMARY again, e.g. "
            f"{_shown(again)}: PRIMARY reused them for new rows (give those rows other keys; "
            "'archive run' and 'archive erase' refuse them until then), or holds the "
            "archived rows again, as after a restore from a backup ('archive run' archives "
            "those again once they are aged)")


def _keys(keys: Sequence[Key]) -> str:
    return f"{len(keys):,} {'key' if len(keys) == 1 else 'keys'}"


def _shown(keys: Sequence[Key]) -> list[Any]:
    """Up to five keys as a message shows them: a one-column key as its value."""
    return [key[0] if len(key) == 1 else key for key in keys[:5]]


def _orphans(archive: sa.Engine, link: ChildLink) -> int:
    """Archived rows of ``link``'s table whose archived parent is missing."""
    child, parent = link.archive_table, link.archive_parent
    referencing = [child.c[column.name] for column in link.columns]
    referenced = [parent.c[column.name] for column in link.referenced]
    query = (sa.select(sa.func.count()).select_from(child)
             .outerjoin(parent, columns_match(referenced, referencing))
             .where(referenced[0].is_(None), *(column.is_not(None) for column in referencing)))
    with archive.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _check_ledger(archive: sa.Engine, policy: ArchivePolicy, found: Verification) -> None:
    twins = policy.twins
    with archive.connect() as connection:
        counters = connection.execute(
            sa.select(runs.c.id, runs.c.status, run_tables.c.table_name, run_tables.c.copied,
                      run_tables.c.deleted, run_tables.c.removed)
            .join(run_tables, run_tables.c.run_id == runs.c.id)
            .where(runs.c.policy == policy.name, runs.c.kind == "archive")
        ).all()
        stamped = {}
        for name, twin in twins.items():
            run_column = twin.c[ARCHIVE_RUN_ID]
            for run_id, count in connection.execute(
                    sa.select(run_column, sa.func.count()).group_by(run_column)):
                stamped[(int(run_id), name)] = int(count)
    bad = []
    for run_id, status, table, copied, deleted, removed in counters:
        if table not in twins:
            continue
        if stamped.get((run_id, table), 0) != copied - removed:
            expired = f" ({removed} expired since)" if removed else ""
            bad.append(f"run {run_id} {table}: ledger copied {copied}{expired}, archive holds "
                       f"{stamped.get((run_id, table), 0)}")
        if status in CLEAN_ENDINGS and deleted != copied:
            bad.append(f"run {run_id} {table}: ended {status} but deleted {deleted} of {copied}")
        elif status != "running" and deleted != copied:
            bad.append(f"run {run_id} {table}: ended {status} with {copied} copied and {deleted} "
                       "deleted: not settled yet; the next 'archive run' of the policy "
                       "settles it")
    if bad:
        found.problems.extend(f"ledger: {line}" for line in bad)
    else:
        found.checks.append(f"ledger of policy {policy.name}: counters match archived rows")


def _check_nothing_left(primary: sa.Engine, archive: sa.Engine, policy: ArchivePolicy,
                        found: Verification) -> None:
    """Aged roots left in PRIMARY after the last finished run: fine as long as that run
    counted as many skipped because a writer held them (or a child); the rest were left
    behind."""
    with archive.connect() as connection:
        last = connection.execute(
            sa.select(runs.c.id, runs.c.cutoff, run_tables.c.skipped_locked)
            .join(run_tables, sa.and_(run_tables.c.run_id == runs.c.id,
                                      run_tables.c.table_name == policy.root.fullname))
            .where(runs.c.policy == policy.name, runs.c.kind == "archive",
                   runs.c.status == "done")
            .order_by(runs.c.id.desc()).limit(1)).first()
    if last is None:
        found.checks.append(f"policy {policy.name}: no finished run yet")
        return
    run_id, cutoff, skipped = last
    policy = without_restored(archive, policy, cutoff + policy.older_than)  # as the run saw it
    with primary.connect() as connection:
        left = connection.execute(sa.select(sa.func.count()).select_from(policy.root)
                                  .where(policy.aged(cutoff))).scalar_one()
    behind = left - min(left, skipped)
    if behind:
        found.problems.append(f"policy {policy.name}: {behind} {policy.root.fullname} rows older "
                               f"than the last finished run's cutoff {cutoff.isoformat()} "
                               "are still in PRIMARY and were not skipped as locked; run again")
    elif left:
        found.checks.append(f"policy {policy.name}: {left} aged rows skipped because a writer "
                             f"held them during run {run_id}; the next run takes them")
    else:
        found.checks.append(f"policy {policy.name}: nothing aged left behind")
