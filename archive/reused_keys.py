"""An archived row, or a copy a batch left behind, under a key a batch's PRIMARY row carries.

A batch's copy is an upsert: a run killed between its two commits leaves its rows in both
databases, and the next run overwrites those copies with PRIMARY's rows, which hold the
truth until their delete commits. The same upsert also overwrote a row archived for good
when PRIMARY had reused its key for a new row (a SQLite rowid table once its newest rows
were archived, a sequence reset by ``TRUNCATE ... RESTART IDENTITY``, a natural key issued
again): the archived row was lost, and the run said ``done``.

A copy is a leftover only while its run's pending window on the policy's root table is open
(:func:`archive.ledger.pending_runs`: the batch's deletes have not been recorded, and every
row it copied, children too, carries its run id and an ``archived_at`` no earlier than the
window's). Such a copy, or one holding exactly the batch row's values (PRIMARY restored
from a backup taken before the rows left), may be overwritten; any other is kept, and the
batch's read-back then misses the row, which :func:`reused_keys` names.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from archive import ledger
from archive.keys import Key, key_columns
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT

logger = logging.getLogger(__name__)

#: How many reused keys an error names.
SHOWN = 5

#: A row's columns by name: a table's (or alias's) ``.c``, or an upsert's ``excluded``.
Row = sa.ColumnCollection[str, Any]


@dataclass
class TakenOver:
    """The ARCHIVE rows a batch overwrote, by the run that had archived them: copies its
    batch left behind (``leftovers``), and rows archived for good that PRIMARY held again,
    with the same values (``returned``: the run had deleted them once, and this one deletes
    them again, so the ledger moves their deletes over as well as their copies)."""

    leftovers: dict[int, int] = field(default_factory=dict)
    returned: dict[int, int] = field(default_factory=dict)


class PendingWindows:
    """The open pending windows of a policy's root table, for one batch's ARCHIVE
    transaction: read from the ledger at most once, and only when a key of the batch is
    already in ARCHIVE (never on the COPY and ATTACH paths' usual batch)."""

    def __init__(self, connection: sa.Connection, root: str) -> None:
        self.connection = connection
        self.root = root

    @functools.cached_property
    def runs(self) -> list[ledger.PendingRun]:
        return ledger.pending_runs(self.connection, self.root)

    def leftover(self, existing: Row) -> sa.ColumnElement[bool]:
        """Whether the ARCHIVE row ``existing`` is a copy whose batch's deletes were never
        recorded: inside its run's open pending window."""
        return sa.or_(sa.false(), *(
            sa.and_(existing[ARCHIVE_RUN_ID] == window.run_id,
                    existing[ARCHIVED_AT] >= window.since) for window in self.runs))


def may_overwrite(connection: sa.Connection, existing: Row, incoming: Row,
                  columns: Sequence[str], is_leftover: sa.ColumnElement[bool]
                  ) -> sa.ColumnElement[bool]:
    """The condition under which the ARCHIVE row ``existing`` may take the batch's row
    ``incoming`` (an upsert's target row and ``excluded``, or a staging table's row).

    :param columns: the data columns, compared when the row is no leftover.
    :param is_leftover: :meth:`PendingWindows.leftover` of ``existing``.
    """
    return sa.or_(is_leftover, _same_values(connection.dialect, existing, incoming, columns))


def taken_over(connection: sa.Connection, existing: sa.FromClause,
               is_leftover: sa.ColumnElement[bool], selections: Iterable[sa.Select[Any]],
               **execution_options: Any) -> TakenOver:
    """Count the rows of ``existing`` (the twin, or its alias) that ``selections`` select
    (each a ``select()`` of nothing yet, with its ``FROM`` and ``WHERE``), by the run that
    archived them and by whether each is a leftover."""
    run = existing.c[ARCHIVE_RUN_ID]
    flag = sa.case((is_leftover, 1), else_=0)
    found = TakenOver()
    for selection in selections:
        for run_id, was_leftover, count in connection.execute(
                selection.add_columns(run, flag, sa.func.count()).group_by(run, flag),
                execution_options=execution_options):
            into = found.leftovers if was_leftover else found.returned
            into[int(run_id)] = into.get(int(run_id), 0) + int(count)
    return found


def _same_values(dialect: sa.Dialect, existing: Row,
                 incoming: Row,
                 columns: Sequence[str]) -> sa.ColumnElement[bool]:
    """Whether the two rows hold the same values: on PostgreSQL as the rows' text forms
    (``json``, ``point`` and other types have no equality operator), on SQLite with ``IS``
    (equal, or both NULL)."""
    if dialect.name == "postgresql":
        def text(row: Row) -> sa.ColumnElement[Any]:
            return sa.cast(sa.func.row(*(row[name] for name in columns)), sa.Text)
        return text(existing).is_not_distinct_from(text(incoming))
    return sa.and_(*(existing[name].is_(incoming[name]) for name in columns))


def reused_keys(connection: sa.Connection, twin: sa.Table,
                in_batch: Iterable[sa.ColumnElement[bool]], *, run_id: int,
                archived_at: datetime, **execution_options: Any) -> list[tuple[Key, int]]:
    """The keys (up to one more than :data:`SHOWN`) of the batch's rows that ARCHIVE keeps
    under another stamp after the upsert, each with the run that archived it: rows
    :func:`may_overwrite` refused.

    :param in_batch: conditions on ``twin`` selecting the batch's keys.
    """
    key = key_columns(twin)
    stamped = sa.and_(twin.c[ARCHIVE_RUN_ID] == run_id, twin.c[ARCHIVED_AT] == archived_at)
    found: list[tuple[Key, int]] = []
    for condition in in_batch:
        query = (sa.select(*key, twin.c[ARCHIVE_RUN_ID]).where(condition, ~stamped)
                 .order_by(*key).limit(SHOWN + 1 - len(found)))
        found += [(tuple(row[:-1]), int(row[-1])) for row in connection.execute(
            query, execution_options=execution_options)]
        if len(found) > SHOWN:
            break
    return found


def reused_text(table: str, found: Sequence[tuple[Key, int]]) -> str:
    """One line naming the reused keys and what to do."""
    shown = ", ".join(f"{','.join(map(str, key))} (archived by run {run})"
                      for key, run in found[:SHOWN])
    more = " and more" if len(found) > SHOWN else ""
    return (f"{table}: PRIMARY reused the keys of archived rows for new rows: {shown}{more}"
            " (ARCHIVE holds other values under them). Nothing was overwritten and the batch "
            "was rolled back; give PRIMARY's rows other keys, or leave them out with the "
            "policy's where, then run again")


def log_taken_over(run_id: int, table: str, taken: TakenOver) -> None:
    """Tell the operator which earlier runs' rows a batch overwrote, and why it could."""
    if taken.leftovers:
        logger.warning("run %d re-copied %d %s rows left in both databases by runs %s",
                       run_id, sum(taken.leftovers.values()), table, sorted(taken.leftovers))
    if taken.returned:
        logger.warning("run %d archived again %d %s rows that PRIMARY held again, with the "
                       "values runs %s had archived (PRIMARY restored from a backup?)",
                       run_id, sum(taken.returned.values()), table, sorted(taken.returned))
