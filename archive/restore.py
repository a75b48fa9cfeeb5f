"""Restore: archived roots, with their children, back from ARCHIVE to PRIMARY.

Archiving in the mirror order, batch by batch, holding the policy's runner lock:

1. ARCHIVE: the batch's roots are marked in ``archive_restores`` (until when the archiver
   must leave them alone) and the marks committed.
2. PRIMARY: the rows are inserted, parents first; a row whose key PRIMARY already holds
   stops the batch and is reported, never overwritten (unless it equals the archived row:
   then it is this restore's own, from a run killed after step 2). Everything is read back
   and compared with the archived rows as exact multisets. PRIMARY commits.
3. ARCHIVE: the rows are deleted, children first, and counted in the ledger (the restore
   run's ``deleted``, and ``removed`` on the archive runs that had copied them). Commits.

Killed before 2 commits: the rows are only in ARCHIVE (their marks keep nothing from
happening). Killed between 2 and 3: the rows are in both databases; the marks keep the
archiver from moving them back, and the next restore of the policy, whatever it selects,
first finishes the roots its interrupted runs marked. Nothing is lost or duplicated.

A restored root ages again from the moment of its restore: its mark lasts the policy's
``older_than``, and the policy's runs leave it alone until then.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import sqlalchemy as sa

from archive import ledger
from archive.changed_on_insert import changed_on_insert
from archive.identity_insert import insert_keeping_identities
from archive.keys import (
    Key,
    key_after,
    key_columns,
    key_filters,
    key_of_texts,
    keys_in,
    parse_key,
    stored_key,
)
from archive.locks import RunnerLock
from archive.mover import ArchiveError, BatchResult, Timeouts, set_up_batch
from archive.policy import ArchivePolicy
from archive.restore_marks import marks
from archive.runner import (
    ProgressCallback,
    RunLimits,
    RunOutcome,
    batch_loop,
    run_locked,
)
from archive.scope import Level, ascend, descend, levels_of
from sediment.core.databases import Engines
from sediment.core.error_text import detail, first_line, sqlstate
from sediment.core.schema.archive import ARCHIVE_RUN_ID
from sediment.core.settings import ArchiveSettings, DatabaseSettings

logger = logging.getLogger(__name__)


class RestoreRefused(ValueError):
    """A restore request that names nothing restorable (an unknown run or table, a bad key)."""


class RestoreConflict(ArchiveError):
    """PRIMARY already holds a different row with the key of a row being restored."""


@dataclass(frozen=True)
class RestoreRequest:
    """Which archived roots to bring back: those an archive run stamped (``run``; a restore
    run's id resumes that run), or the roots of rows of ``table`` chosen by key or by a
    SQL condition on the table."""

    run: int | None = None
    table: str | None = None
    keys: tuple[str, ...] = ()
    where: str = ""

    def describe(self) -> str:
        if self.run is not None:
            return f"run {self.run}"
        chosen = f"keys {', '.join(self.keys)}" if self.keys else f"where {self.where}"
        return f"{self.table} {chosen}"


def policy_of(policies: Sequence[ArchivePolicy], archive: sa.Engine,
              request: RestoreRequest) -> ArchivePolicy:
    """The archiving policy the request's rows belong to.

    :raises RestoreRefused: naming the unknown run or table.
    """
    archiving = [policy for policy in policies if policy.archives]
    if request.run is not None:
        with archive.connect() as connection:
            found_run = connection.execute(sa.select(ledger.runs.c.policy, ledger.runs.c.kind)
                                           .where(ledger.runs.c.id == request.run)).first()
        if found_run is None:
            raise RestoreRefused(f"--run {request.run}: the ledger has no such run "
                                 "(see 'archive status')")
        name, kind = found_run
        if kind not in ("archive", "restore"):  # "belongs to policy 'customers'" it said
            article = "an" if kind[0] in "aeiou" else "a"
            raise RestoreRefused(f"--run {request.run} is {article} {kind} run, which brought no "
                                 "rows into ARCHIVE; give an archive run, or a restore run "
                                 "to finish (see 'archive status')")
        found = next((policy for policy in archiving if policy.name == name), None)
        if found is None:
            raise RestoreRefused(f"--run {request.run} belongs to policy {name!r}, which "
                                 "no longer archives")
        return found
    for policy in archiving:
        if any(request.table in (table.fullname, table.name) for table in policy.tables):
            return policy
    names = sorted(table.fullname for policy in archiving for table in policy.tables)
    raise RestoreRefused(f"--table {request.table!r} is not archived by any policy "
                         f"({', '.join(names)})")


@dataclass(frozen=True)
class _Batch:
    """A batch read from ARCHIVE: per table (root first), its rows by key, in PRIMARY's
    column order, and the archive runs that had copied them."""

    roots: list[Key]
    rows: dict[str, dict[Key, tuple[Any, ...]]]
    owners: dict[tuple[int, str], int]


def plan_restore(engines: Engines, policy: ArchivePolicy, request: RestoreRequest,
                 ) -> dict[str, int]:
    """The rows per table the request would bring back now (``--dry-run``)."""
    levels = levels_of(policy, "archive")
    with engines.archive.connect() as connection:
        roots = _selection(connection, policy, levels, request)
        return {name: int(connection.execute(
            sa.select(sa.func.count()).select_from(level.table).where(condition)).scalar_one())
            for (name, condition), level in zip(descend(levels, roots).items(), levels,
                                                strict=True)}


def run_restore(engines: Engines, policy: ArchivePolicy, request: RestoreRequest, *,
                now: datetime, database: DatabaseSettings, settings: ArchiveSettings,
                stop: threading.Event | None = None,
                progress: ProgressCallback | None = None) -> RunOutcome:
    """Restore the request's roots in batches, ledgered as a run of kind ``restore``.

    Errors (a conflicting row in PRIMARY among them) are reported in the outcome, not
    raised; the batch that met them changed nothing.
    """
    stop = stop or threading.Event()
    timeouts = Timeouts(database.statement_timeout_ms, database.lock_timeout_ms)
    levels = levels_of(policy, "archive")

    def restore_rows(outcome: RunOutcome, lock: RunnerLock) -> None:
        assert outcome.run_id is not None
        try:
            with engines.archive.begin() as connection:  # marks past their time go
                connection.execute(marks.delete().where(marks.c.until <= now))
                selection = _selection(connection, policy, levels, request)
        except sa.exc.SQLAlchemyError as exc:
            outcome.status, outcome.error = "error", first_line(exc)
            return
        batch_loop(outcome, lock, engines.archive, batch_size=policy.batch_size,
                   settings=settings, limits=RunLimits(), stop=stop, progress=progress,
                   step=partial(_restore_batch, engines, lock, policy, levels, selection,
                                outcome.run_id, now=now, timeouts=timeouts))

    return run_locked(engines.primary, engines.archive, policy, kind="restore", cutoff=now,
                      settings=settings, stop=stop, work=restore_rows)


def _selection(connection: sa.Connection, policy: ArchivePolicy, levels: Sequence[Level],
               request: RestoreRequest) -> sa.ColumnElement[bool]:
    """The condition on ARCHIVE's root twin selecting the roots to restore: the request's,
    and those that interrupted restore runs of the policy marked and did not finish."""
    root = levels[0].table
    chosen: sa.ColumnElement[bool]
    if request.run is not None:
        kind = connection.execute(sa.select(ledger.runs.c.kind).where(
            ledger.runs.c.id == request.run)).scalar_one()
        chosen = (_marked(connection, policy, root, [request.run]) if kind == "restore"
                  else root.c[ARCHIVE_RUN_ID] == request.run)
    else:
        table = next(level.table for level in levels
                     if request.table in (level.table.fullname, level.table.name))
        if request.keys:
            keys = [parse_key(table, text) for text in request.keys]
            rows = keys_in(key_columns(table), keys)
        else:
            rows = sa.literal_column(f"({request.where})", sa.Boolean())
        chosen = ascend(levels, table.fullname, rows)
    unfinished = unfinished_restores(connection, policy)
    if unfinished:
        chosen = sa.or_(chosen, _marked(connection, policy, root, unfinished))
    return chosen


def unfinished_restores(connection: sa.Connection, policy: ArchivePolicy) -> list[int]:
    """The policy's restore runs that ended without finishing (an error, a kill) and still
    mark roots, which every restore of the policy takes up first."""
    runs = ledger.runs
    return list(connection.execute(
        sa.select(runs.c.id).where(
            runs.c.policy == policy.name, runs.c.kind == "restore",
            runs.c.status.not_in(("done", "running")),
            sa.exists().where(marks.c.run_id == runs.c.id,
                              marks.c.table_name == policy.root.fullname))
        .order_by(runs.c.id)).scalars())


def _marked(connection: sa.Connection, policy: ArchivePolicy, root: sa.Table,
            runs: Sequence[int]) -> sa.ColumnElement[bool]:
    texts = connection.execute(sa.select(marks.c.row_key).where(
        marks.c.run_id.in_(runs), marks.c.table_name == policy.root.fullname)).scalars()
    keys = [key_of_texts(policy.root, json.loads(text)) for text in texts]
    return keys_in(key_columns(root), keys) if keys else sa.false()


def _restore_batch(engines: Engines, lock: RunnerLock, policy: ArchivePolicy,
                   levels: Sequence[Level], selection: sa.ColumnElement[bool], run_id: int,
                   after: Key | None, limit: int, *, now: datetime,
                   timeouts: Timeouts) -> BatchResult | None:
    travel = _Travel.between(engines)
    batch = _read_batch(engines.archive, policy, levels, selection, after, limit, travel)
    if batch is None:
        return None
    with engines.archive.begin() as connection:  # 1. the marks, before PRIMARY sees a row
        connection.execute(marks.delete().where(
            marks.c.table_name == policy.root.fullname,
            keys_in([marks.c.row_key], [(stored_key(key),) for key in batch.roots])))
        connection.execute(marks.insert(), [
            {"run_id": run_id, "table_name": policy.root.fullname, "row_key": stored_key(key),
             "restored_at": now, "until": now + policy.older_than} for key in batch.roots])
    try:
        with lock.batch_connection() as primary, primary.begin():  # 2. insert, compare,
            set_up_batch(primary, timeouts)                      # commit
            for table in policy.tables:
                _insert(primary, table, batch.rows[table.fullname], travel)
    except Exception:
        _unmark_roots_primary_lacks(engines, policy, batch.roots, run_id)
        raise
    with engines.archive.begin() as connection:  # 3. delete from ARCHIVE, count
        deleted: dict[str, int] = {}
        for level in reversed(levels):
            name = level.table.fullname
            keys = list(batch.rows[name])
            count = sum(connection.execute(level.table.delete().where(condition)).rowcount
                        for condition in key_filters(key_columns(level.table), keys,
                                                     connection.dialect))
            if count != len(keys):
                raise ArchiveError(f"restore: deleting {name} from ARCHIVE removed {count} "
                                   f"rows, expected {len(keys)}; ARCHIVE rolled back, the "
                                   "rows are in PRIMARY and the next restore finishes them")
            deleted[name] = count
        counted = {name: deleted[name] for name in batch.rows}
        ledger.record_sweep(connection, run_id, counted, batch.owners)
    return BatchResult(last_key=batch.roots[-1], roots=len(batch.roots), deleted=counted)


def _unmark_roots_primary_lacks(engines: Engines, policy: ArchivePolicy,
                                roots: Sequence[Key], run_id: int) -> None:
    """After PRIMARY refused a batch, drop the marks of its roots PRIMARY does not hold.

    Such a root's rows are only in ARCHIVE, so its mark guards nothing; kept, it made
    every later restore of the policy take the root up first and fail the same way, for
    good when the cause was a parent row PRIMARY had deleted. A root PRIMARY holds keeps
    its mark: an interrupted restore put it there, or it is the conflicting row the error
    names, and the next restore finishes or reports it. Best effort: if either database
    cannot answer now, the marks stay, as they did before.
    """
    root = policy.root
    try:
        with engines.primary.connect() as connection:
            held = {stored_key(tuple(row)) for condition in key_filters(
                key_columns(root), roots, connection.dialect) for row in connection.execute(
                sa.select(*key_columns(root)).where(condition))}
        lacking = [text for text in map(stored_key, roots) if text not in held]
        if lacking:
            with engines.archive.begin() as connection:
                connection.execute(marks.delete().where(
                    marks.c.run_id == run_id, marks.c.table_name == root.fullname,
                    keys_in([marks.c.row_key], [(text,) for text in lacking])))
    except sa.exc.SQLAlchemyError as exc:
        logger.warning("restore run %s: could not drop the marks of roots PRIMARY refused "
                       "(%s); the next restore of policy %s takes them up first",
                       run_id, first_line(exc), policy.name)


def _read_batch(archive: sa.Engine, policy: ArchivePolicy, levels: Sequence[Level],
                selection: sa.ColumnElement[bool], after: Key | None,
                limit: int, travel: _Travel) -> _Batch | None:
    root = levels[0].table
    key = key_columns(root)
    with archive.connect() as connection, connection.begin():
        query = sa.select(*key).where(selection)
        if after is not None:
            query = query.where(key_after(key, after, connection.dialect))
        roots = [tuple(row) for row in connection.execute(
            query.order_by(*key).limit(limit))]
        if not roots:
            return None
        conditions = descend(levels, keys_in(key, roots))
        rows: dict[str, dict[Key, tuple[Any, ...]]] = {}
        owners: dict[tuple[int, str], int] = {}
        for table, level in zip(policy.tables, levels, strict=True):
            twin = level.table
            values = [travel.read(twin.c[column.name]) for column in table.columns]
            keys = [twin.c[column.name] for column in key_columns(table)]
            found = connection.execute(sa.select(*values, *keys, twin.c[ARCHIVE_RUN_ID]).where(
                conditions[twin.fullname])).all()
            width = len(values)
            rows[table.fullname] = {tuple(row[width:-1]): tuple(row[:width]) for row in found}
            for archived_by, count in Counter(row[-1] for row in found).items():
                owners[(int(archived_by), table.fullname)] = count
    return _Batch(roots, rows, owners)


def _insert(primary: sa.Connection, table: sa.Table,
            rows: dict[Key, tuple[Any, ...]], travel: _Travel) -> None:
    """Insert the archived rows into PRIMARY's ``table``, then read them back and compare.

    :param travel: how the rows' values were read from ARCHIVE; they are written and read
        back the same way.

    :raises RestoreConflict: when PRIMARY holds a different row under one of the keys.
    :raises ArchiveError: when what PRIMARY holds afterwards differs from the archive
        (naming the columns that changed, and the table's triggers).
    """
    if not rows:
        return
    names = [column.name for column in table.columns]
    keys = list(rows)
    present = _read(primary, table, keys, travel)
    for found_key, row in present.items():
        if _comparable(row) != _comparable(rows[found_key]):
            raise RestoreConflict(
                f"restore: PRIMARY already holds a different {table.fullname} row with key "
                f"{','.join(map(str, found_key))}; nothing was overwritten and this batch "
                "was rolled back (resolve it, then restore again)")
    writable = [name for name in names if table.c[name].computed is None]
    new = [dict(zip(names, rows[each], strict=True)) for each in keys if each not in present]
    _check_values_for_required_columns(table, writable, new)
    if new:
        insert = insert_keeping_identities(table)
        if travel is not _Travel.TYPED:  # unconverted (a bindparam may not take its
            # column's own name)
            insert = insert.values({name: sa.bindparam(f"stored_{at}", type_=_AsStored())
                                    for at, name in enumerate(writable)})
            writable_as = [f"stored_{at}" for at in range(len(writable))]
        else:
            writable_as = writable
        try:
            primary.execute(insert, [{bound: row[name] for bound, name in zip(
                writable_as, writable, strict=True)} for row in new])
        except sa.exc.IntegrityError as exc:
            refused = _refused(table, exc)
            if refused is None:
                raise
            raise refused from exc
    back = _read(primary, table, keys, travel)
    if Counter(map(_comparable, back.values())) != Counter(map(_comparable, rows.values())):
        differing = sorted((k for k in keys if k not in back or
                            _comparable(back[k]) != _comparable(rows[k])), key=str)
        raise ArchiveError(changed_on_insert(primary, table, names, rows, back, differing))


#: SQLSTATEs of PostgreSQL's foreign key and unique violations.
_FOREIGN_KEY_VIOLATION, _UNIQUE_VIOLATION = "23503", "23505"


def _refused(table: sa.Table, error: sa.exc.IntegrityError) -> ArchiveError | None:
    """What to tell the operator when PRIMARY refused a table's archived rows.

    PRIMARY's bare "violates foreign key constraint" said neither which row was missing
    nor what to do; a parent PRIMARY deleted after the rows were archived (a customer
    whose orders all sat in ARCHIVE) is the usual cause.
    """
    code, said = sqlstate(error), detail(error)
    shown = f"{first_line(error)}{f': {said}' if said else ''}"
    if code == _FOREIGN_KEY_VIOLATION or "FOREIGN KEY constraint failed" in first_line(error):
        return ArchiveError(
            f"restore: PRIMARY refused archived {table.fullname} rows that reference a row it "
            f"no longer holds ({shown}): put that row back in PRIMARY first, or leave these "
            "rows in ARCHIVE; nothing was restored from this batch")
    if code == _UNIQUE_VIOLATION or "UNIQUE constraint failed" in first_line(error):
        return ArchiveError(
            f"restore: PRIMARY holds another {table.fullname} row with an archived row's "
            f"unique values ({shown}): change or remove PRIMARY's row first, or leave the "
            "archived one in ARCHIVE; nothing was restored from this batch")
    return None


def _check_values_for_required_columns(table: sa.Table, columns: Sequence[str],
                                       rows: Sequence[Mapping[str, Any]]) -> None:
    """Refuse rows with no value for a column PRIMARY requires, naming it and the fix.

    Such a column came after the rows were archived (their twin keeps NULL in it), or
    was made NOT NULL since. PRIMARY's "null value in column violates not-null
    constraint" said neither, nor what to do.
    """
    for name in columns:
        if table.c[name].nullable:
            continue
        lacking = sum(1 for row in rows if row[name] is None)
        if lacking:
            raise ArchiveError(
                f"restore: {table.fullname}.{name} is NOT NULL in PRIMARY, and {lacking:,} "
                f"archived {'row has' if lacking == 1 else 'rows have'} no value in it "
                "(PRIMARY added or tightened the column after they were archived): set it "
                f"in ARCHIVE first (UPDATE {table.fullname} SET {name} = ... WHERE {name} "
                "IS NULL), then restore again; nothing was restored from this batch")


def _read(connection: sa.Connection, table: sa.Table, keys: Sequence[Key],
          travel: _Travel) -> dict[Key, tuple[Any, ...]]:
    key = key_columns(table)
    values = [travel.read(column) for column in table.columns]
    width = len(values)
    found: dict[Key, tuple[Any, ...]] = {}
    for condition in key_filters(key, keys, connection.dialect):
        for row in connection.execute(sa.select(*values, *key).where(condition)):
            found[tuple(row[width:])] = tuple(row[:width])
    return found


class _Travel(enum.Enum):
    """How a restore's values travel from ARCHIVE back into PRIMARY, and are compared.

    Keys are always read as their type, for the key filters to bind.
    """

    #: Two SQLite files: as SQLite stores them, as archiving copied them (an application's
    #: own timestamp text, JSON spacing, Unix times in a DATETIME column), not parsed and
    #: written back in SQLAlchemy's forms.
    STORED = "stored"
    #: Two PostgreSQL databases: as the types' text forms, as archiving's COPY moved them,
    #: inserted as untyped literals that PostgreSQL reads with the column's own input
    #: function. Python's values would not give everything back: ``interval '1 mon'``
    #: reads as 30 days and ``'150 hours'`` as 6 days 6 hours (equal to PostgreSQL, but
    #: not in date arithmetic), ``json`` loses its spacing and key order, an array its
    #: lower bound.
    TEXT = "text"
    #: SQLite PRIMARY, PostgreSQL ARCHIVE: as the column types read and write them.
    TYPED = "typed"

    @classmethod
    def between(cls, engines: Engines) -> _Travel:
        names = engines.primary.dialect.name, engines.archive.dialect.name
        if names == ("sqlite", "sqlite"):
            return cls.STORED
        if names == ("postgresql", "postgresql"):
            return cls.TEXT
        return cls.TYPED

    def read(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        """``column`` as a restore reads it."""
        if self is _Travel.STORED:
            return sa.type_coerce(column, _AsStored())
        if self is _Travel.TEXT:
            return sa.type_coerce(sa.cast(column, sa.Text), _AsStored())
        return column


class _AsStored(sa.types.TypeDecorator[Any]):
    """A value as the database stores it: no bind or result processing. (A bare
    ``NullType`` would do for reading, but an INSERT's values take their column's type in
    its place.)"""

    impl = sa.types.NullType
    cache_ok = True


def _comparable(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row as a hashable value that compares the same whichever database it came from."""
    return tuple(json.dumps(value, sort_keys=True, default=str)
                 if isinstance(value, dict | list) else value for value in row)

