"""Erasure: every row of a data subject, in PRIMARY and in ARCHIVE, gone.

``archive erase --table customers --key 42`` finds the subject's own row and every row
that references it through foreign keys, to any depth, as PRIMARY's schema says: in
PRIMARY, and in the ARCHIVE twins of the archived tables. Keys are followed across the two
databases (an order in ARCHIVE is found by the customer's key; its items by the order keys
found in either database), so a row is found wherever it lives. A table named in
``erasure.null_out`` keeps the subject's rows with those columns set to NULL instead, and
the search does not go below it (its rows stay, and so do theirs).

The procedure, holding the erasure lock and the runner lock of every policy whose tables
it touches (so no archive, purge, expiry or restore moves a row meanwhile): the ledger
records the run; ARCHIVE erases its rows, children first, and counts them in the same
transaction; then PRIMARY erases its rows and commits; the ledger counts them. Killed at
any point, the subject is partly erased and the run is left ``running``: erasing the same
subject again finds what is left and finishes (the next erasure marks the old run
``interrupted``). Held rows (:mod:`archive.holds`) block the whole erasure, and so do a
key PRIMARY reused for a new row after archiving the old one (:mod:`archive.erase_reused`)
and a PRIMARY role lacking a privilege the erasure needs there (checked before ARCHIVE's
rows go, so a refused erasure changes nothing).

The ledger keeps no personal data: table names, counts, and keyed digests (HMAC-SHA-256
with ``service.secret_key``) of the subject's key and of the erased keys, so whoever holds
the secret can confirm that a given subject was erased, and nobody can read who it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from archive import ledger
from archive.erase_reused import reused_in_plan
from archive.holds import list_holds
from archive.keys import Key, key_columns, key_filters, key_of_texts, key_text
from archive.locks import RunnerLock
from archive.mover import DEFER_KEYS
from archive.policy import ArchivePolicy
from archive.preflight import hidden_rows, lacking_privileges
from archive.sweep import holds_guard
from sediment.core.error_text import detail, first_line
from sediment.core.schema.archive import ARCHIVE_RUN_ID

Side = Literal["primary", "archive"]
SIDES: tuple[Side, ...] = ("archive", "primary")  # the order rows are erased in


class ErasureRefused(ValueError):
    """The erasure cannot go ahead (held rows, a column that cannot be nulled); nothing
    was changed."""


class ErasureFailed(RuntimeError):
    """A database refused the erasure's statements; the run is ledgered ``error``, and
    erasing the subject again finishes what is left."""


@dataclass(frozen=True)
class Edge:
    """A foreign key of ``child`` (``columns``) to ``parent`` (``referenced``), by name."""

    child: sa.Table
    columns: tuple[str, ...]
    parent: sa.Table
    referenced: tuple[str, ...]


@dataclass
class Found:
    """The subject's rows of one table in one database: their keys, and the values of the
    columns other tables reference."""

    keys: set[Key] = field(default_factory=set)
    refs: dict[tuple[str, ...], set[Key]] = field(default_factory=dict)


@dataclass(frozen=True)
class ErasurePlan:
    """What an erasure would do: per database and table, the rows it erases (or nulls)."""

    subject: sa.Table
    key: Key
    tables: tuple[sa.Table, ...]
    found: dict[tuple[Side, str], Found]
    null_out: Mapping[str, tuple[str, ...]]

    def counts(self) -> dict[tuple[Side, str], int]:
        return {(side, table.fullname): len(self.found[(side, table.fullname)].keys)
                for side in SIDES for table in self.tables
                if (side, table.fullname) in self.found}


def erasure_graph(tables: Mapping[str, sa.Table], subject: sa.Table,
                  null_out: Mapping[str, tuple[str, ...]]) -> tuple[list[sa.Table], list[Edge]]:
    """The subject's table and every table referencing it to any depth (breadth first,
    parents before children), with the foreign keys between them. A null-out table's own
    referencing tables are not followed: its rows stay."""
    ordered = [subject]
    edges: list[Edge] = []
    level = [subject]
    every = {table.fullname: table for table in tables.values()}
    while level:
        found: list[sa.Table] = []
        for parent in level:
            if parent.fullname in null_out and parent is not subject:
                continue
            for table in every.values():
                for constraint in table.foreign_key_constraints:
                    if constraint.referred_table.fullname != parent.fullname:
                        continue
                    edges.append(Edge(table, tuple(constraint.column_keys), parent, tuple(
                        element.column.name for element in constraint.elements)))
                    if table.fullname not in {t.fullname for t in (*ordered, *found)}:
                        found.append(table)
        ordered.extend(found)
        level = found
    return _parents_first(ordered, edges), edges


def _parents_first(tables: Sequence[sa.Table], edges: Sequence[Edge]) -> list[sa.Table]:
    """``tables`` so that each comes after every table it references among them: a table
    with two paths to the subject is searched once both of its parents' rows are known.
    (A cycle other than a self-reference keeps breadth-first order.)"""
    parents = {table.fullname: {edge.parent.fullname for edge in edges
                                if edge.child.fullname == table.fullname
                                and edge.parent.fullname != table.fullname}
               for table in tables}
    ordered: list[sa.Table] = []
    waiting = list(tables)
    while waiting:
        done = {table.fullname for table in ordered}
        ready = next((table for table in waiting if parents[table.fullname] <= done),
                     waiting[0])
        ordered.append(ready)
        waiting.remove(ready)
    return ordered


def plan_erasure(engines: Any, tables: Mapping[str, sa.Table], twins: Mapping[str, sa.Table],
                 subject: sa.Table, key: Key,
                 null_out: Mapping[str, tuple[str, ...]]) -> ErasurePlan:
    """Find the subject's rows in both databases (see the module docstring).

    :raises ErasureRefused: for a null-out column that does not exist, is part of the key,
        or cannot be NULL in PRIMARY; or when row-level security hides rows of these tables
        from PRIMARY's role.
    """
    ordered, edges = erasure_graph(tables, subject, null_out)
    _check_null_out(ordered, edges, null_out)
    hidden = hidden_rows(engines.primary, ordered)
    if hidden is not None:  # rows the search cannot see would outlive the erasure
        raise ErasureRefused(f"{hidden}, which an erasure would leave behind; nothing was "
                             f"changed: {hidden.fix}")
    wanted: dict[str, set[tuple[str, ...]]] = {}
    for edge in edges:
        wanted.setdefault(edge.parent.fullname, set()).add(edge.referenced)
    found: dict[tuple[Side, str], Found] = {}
    engines_by_side = {"primary": engines.primary, "archive": engines.archive}
    connections = {side: engine.connect() for side, engine in engines_by_side.items()}
    try:
        for table in ordered:
            for side in SIDES:
                target = table if side == "primary" else twins.get(table.fullname)
                if target is None:
                    continue
                if table is subject:
                    conditions = list(key_filters(key_columns(target), [key],
                                                  connections[side].dialect))
                else:
                    conditions = []
                    for edge in (e for e in edges if e.child.fullname == table.fullname):
                        values = set().union(*(
                            found[(s, edge.parent.fullname)].refs.get(edge.referenced, set())
                            for s in SIDES if (s, edge.parent.fullname) in found))
                        if values:
                            conditions.extend(key_filters(
                                [target.c[name] for name in edge.columns], sorted(values, key=str),
                                connections[side].dialect))
                found[(side, table.fullname)] = _rows(
                    connections[side], target, conditions, wanted.get(table.fullname, set()))
    finally:
        for connection in connections.values():
            connection.close()
    return ErasurePlan(subject, key, tuple(ordered), found, null_out)


def _rows(connection: sa.Connection, table: sa.Table,
          conditions: Sequence[sa.ColumnElement[bool]],
          referenced: set[tuple[str, ...]]) -> Found:
    found = Found(refs={names: set() for names in referenced})
    if not conditions:
        return found
    key = key_columns(table)
    extra = sorted({name for names in referenced for name in names})
    columns = [*key, *(table.c[name] for name in extra)]
    for condition in conditions:
        for row in connection.execute(sa.select(*columns).where(condition)):
            values = dict(zip([c.name for c in columns], row, strict=True))
            found.keys.add(tuple(row[:len(key)]))
            for names in referenced:
                value = tuple(values[name] for name in names)
                if None not in value:
                    found.refs[names].add(value)
    return found


def _check_null_out(ordered: Sequence[sa.Table], edges: Sequence[Edge],
                    null_out: Mapping[str, tuple[str, ...]]) -> None:
    by_name = {table.fullname: table for table in ordered}
    for name, columns in null_out.items():
        table = by_name.get(name)
        if table is None:
            continue  # not reached by this subject
        for column in columns:
            if column not in table.c:
                raise ErasureRefused(f"erasure.null_out.{name}: {name} has no column {column!r}")
            if table.c[column].primary_key or not table.c[column].nullable:
                raise ErasureRefused(
                    f"erasure.null_out.{name}: {name}.{column} cannot be NULL in PRIMARY "
                    "(a key or NOT NULL column); delete these rows instead, or make the "
                    "column nullable")
        for edge in (e for e in edges if e.child.fullname == name):
            missing = [c for c in edge.columns if c not in columns]
            if missing:
                raise ErasureRefused(
                    f"erasure.null_out.{name}: its rows reference {edge.parent.fullname} "
                    f"through {', '.join(edge.columns)}, which the erasure deletes; null "
                    f"those columns too ({', '.join(missing)})")


def blocking_holds(engines: Any, tables: Mapping[str, sa.Table], twins: Mapping[str, sa.Table],
                   plan: ErasurePlan) -> list[str]:
    """The holds in force on a row the erasure would touch (or on an ancestor of one)."""
    blocked: list[str] = []
    names = {table.fullname for table in plan.tables}
    for hold in list_holds(engines.archive):
        if hold.table not in names:
            continue
        table = tables[hold.table]
        held = plan_erasure(engines, tables, twins, table, key_of_texts(table, hold.key), {})
        touched = [name for (side, name), rows in held.found.items()
                   if rows.keys & plan.found.get((side, name), Found()).keys]
        if touched:
            blocked.append(f"hold {hold.id} on {hold.table} {hold.shown_key} ({hold.held_by}: "
                           f"{hold.reason}) covers rows the erasure would touch in "
                           f"{', '.join(sorted(set(touched)))}")
    return blocked


def lock_names(policies: Sequence[ArchivePolicy], plan: ErasurePlan) -> list[str]:
    """The erasure lock and the policies whose tables the erasure touches."""
    names = {table.fullname for table in plan.tables}
    return ["erase", *(policy.name for policy in policies
                       if names & {table.fullname for table in policy.tables})]


@dataclass
class ErasureOutcome:
    run_id: int | None
    status: str
    erased: dict[tuple[Side, str], int] = field(default_factory=dict)
    error: str | None = None


def erase(engines: Any, tables: Mapping[str, sa.Table], twins: Mapping[str, sa.Table],
          subject: sa.Table, key: Key, *, null_out: Mapping[str, tuple[str, ...]], secret: str,
          policies: Sequence[ArchivePolicy], now: datetime) -> ErasureOutcome:
    """Erase the subject (see the module docstring); ledgered as a run of kind ``erase``.

    :raises ErasureRefused: when a hold covers one of its rows, PRIMARY reused a key it
        would follow, or a null-out column cannot be nulled; nothing was changed (the run
        is ledgered ``error``, saying why).
    """
    started = time.monotonic()
    plan = plan_erasure(engines, tables, twins, subject, key, null_out)
    locks = [RunnerLock(engines.primary, name) for name in lock_names(policies, plan)]
    taken: list[RunnerLock] = []
    run_id: int | None = None
    erased = "nothing was erased"
    try:
        for lock in locks:
            if not lock.acquire():
                return ErasureOutcome(None, "lock_busy", error=(
                    f"a run of policy {lock.policy!r} is in progress; erase again when it "
                    "ends" if lock.policy != "erase" else "another erasure is running"))
            taken.append(lock)
        run_id = ledger.start_run(engines.archive, subject.fullname[:64], now,
                                  [f"{side}:{table.fullname}" for side in SIDES
                                   for table in plan.tables
                                   if side == "primary" or table.fullname in twins],
                                  kind="erase")
        ledger.mark_interrupted(engines.archive, None, run_id, kind="erase")
        plan = plan_erasure(engines, tables, twins, subject, key, null_out)  # under the locks
        outcome = ErasureOutcome(run_id, "running")
        reused = reused_in_plan(engines, twins, plan)
        if reused:
            raise ErasureRefused("; ".join(reused))
        with holds_guard(engines.archive) as archive:
            held = blocking_holds(engines, tables, twins, plan)
            if held:
                raise ErasureRefused("; ".join(held))
            lacking = lacking_privileges(engines.primary, primary_privileges(plan))
            if lacking is not None:
                # Refused before ARCHIVE's rows go: PostgreSQL's "permission denied" came
                # only after them, leaving the subject half erased.
                raise ErasureRefused(f"{lacking}, which erasing {subject.fullname} "
                                     f"{_text(key)} needs: {lacking.grant}")
            archive_counts, owners = _erase_side(archive, "archive", plan, twins)
            ledger.record_sweep(archive, run_id, {f"archive:{name}": n for (_, name), n
                                                  in archive_counts.items()}, owners)
        erased = "ARCHIVE's rows of the subject are erased, PRIMARY's are not"
        with engines.primary.begin() as primary:
            primary_counts, _ = _erase_side(primary, "primary", plan, twins)
        erased = "both databases' rows of the subject are erased, the ledger's count is not"
        with engines.archive.begin() as archive:
            ledger.record_sweep(archive, run_id, {f"primary:{name}": n for (_, name), n
                                                  in primary_counts.items()})
        outcome.erased = {**archive_counts, **primary_counts}
        rate = sum(outcome.erased.values()) / max(time.monotonic() - started, 1e-6)
        ledger.finish_run(engines.archive, run_id, "done", rows_per_second=rate,
                          detail=_detail(plan, secret))
        outcome.status = "done"
        return outcome
    except ErasureRefused as exc:
        if run_id is not None:
            ledger.finish_run(engines.archive, run_id, "error", rows_per_second=None,
                              error=str(exc), detail=_detail(plan, secret, counts=False))
        raise
    except sa.exc.SQLAlchemyError as exc:
        # A database refused a statement (a foreign key PRIMARY checks at once, say). The
        # run stayed 'running' in the ledger, and the command said only "database error".
        # The ledger keeps no key of the subject: PostgreSQL's DETAIL names one.
        cause, said = first_line(exc), detail(exc)
        after = (f"{erased}: resolve the cause, then erase the same subject again, which "
                 "finishes what is left")
        if run_id is not None:  # unless ARCHIVE failed: the next run marks it interrupted
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                ledger.finish_run(engines.archive, run_id, "error", rows_per_second=None,
                                  error=f"{cause}; {after}",
                                  detail=_detail(plan, secret, counts=False))
        message = f"{cause}{f' ({said})' if said else ''}; {after}"
        raise ErasureFailed(message) from exc
    finally:
        for lock in taken:
            lock.release()


def primary_privileges(plan: ErasurePlan) -> dict[sa.Table, tuple[str, ...]]:
    """What erasing ``plan`` does to each PRIMARY table it finds rows in, as privileges:
    ``DELETE``, or ``UPDATE`` where ``erasure.null_out`` keeps the rows."""
    return {table: ("UPDATE",) if table is not plan.subject and plan.null_out.get(
                table.fullname) else ("DELETE",)
            for table in plan.tables if plan.found.get(("primary", table.fullname), Found()).keys}


def _erase_side(connection: sa.Connection, side: Side, plan: ErasurePlan,
                twins: Mapping[str, sa.Table],
                ) -> tuple[dict[tuple[Side, str], int], dict[tuple[int, str], int]]:
    """Delete (or null out) the subject's rows in one database, children first.

    :returns: the rows per table, and (in ARCHIVE) the deleted rows by the archive run that
        had copied them, for its ``removed`` counter.
    """
    erased: dict[tuple[Side, str], int] = {}
    owners: Counter[tuple[int, str]] = Counter()
    if connection.dialect.name == "postgresql":  # a team and its captain among its players
        connection.exec_driver_sql(DEFER_KEYS)
    for table in reversed(plan.tables):
        target = table if side == "primary" else twins.get(table.fullname)
        rows = plan.found.get((side, table.fullname))
        if target is None or rows is None or not rows.keys:
            continue
        count = 0
        for condition in key_filters(key_columns(target), sorted(rows.keys, key=str),
                                     connection.dialect):
            nulled = plan.null_out.get(table.fullname) if table is not plan.subject else None
            if nulled:
                statement: sa.Executable = target.update().where(condition).values(
                    {column: None for column in nulled})
            else:
                statement = target.delete().where(condition)
                if side == "archive":
                    run_column = target.c[ARCHIVE_RUN_ID]
                    for archived_by, rows_of_run in connection.execute(
                            sa.select(run_column, sa.func.count()).where(condition)
                            .group_by(run_column)):
                        owners[(int(archived_by), table.fullname)] += int(rows_of_run)
            count += connection.execute(statement).rowcount
        erased[(side, table.fullname)] = count
    return erased, dict(owners)


def _detail(plan: ErasurePlan, secret: str, *, counts: bool = True) -> str:
    """The ledger's record of an erasure: no key, no value, only keyed digests (and, for
    an erasure that went ahead, what it erased)."""
    return json.dumps({
        "subject": plan.subject.fullname,
        "subject_digest": subject_digest(plan.subject, plan.key, secret),
        "erased": {f"{side}:{name}": {"rows": len(rows.keys), "keys_digest": _digest(
            secret, "\n".join(sorted(_text(key) for key in rows.keys)))}
            for (side, name), rows in plan.found.items() if rows.keys and counts},
        "nulled_out": {name: list(columns) for name, columns in plan.null_out.items()
                       if any(plan.found.get((side, name), Found()).keys for side in SIDES)},
    }, sort_keys=True)


def subject_digest(subject: sa.Table, key: Key, secret: str) -> str:
    """The keyed digest by which the ledger names an erasure's subject."""
    return _digest(secret, f"{subject.fullname}:{_text(key)}")


def erased_by(archive: sa.Engine, subject: sa.Table, key: Key, secret: str) -> int | None:
    """The finished erasure run that erased this subject, found by its digest, or None."""
    wanted = subject_digest(subject, key, secret)
    with archive.connect() as connection:
        runs = ledger.runs
        finished = connection.execute(
            sa.select(runs.c.id, runs.c.detail).where(runs.c.kind == "erase",
                                                      runs.c.status == "done")
            .order_by(runs.c.id.desc()))
        for run_id, detail in finished:
            if detail and json.loads(detail).get("subject_digest") == wanted:
                return int(run_id)
    return None


def _digest(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()[:32]


def _text(key: Key) -> str:
    return ",".join(key_text(value) for value in key)

