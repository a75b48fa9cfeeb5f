"""Archival policies resolved against the schema: which rows move, with which children.

Pure: no connections, no I/O. A policy from settings names tables and columns as strings;
:func:`resolve_policy` turns it into table and column objects once, at startup, so a typo
stops the service before the first run rather than failing at 3 a.m.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from archive.ages import AgeColumn, resolve_age_column
from archive.keys import Key, key_columns, keys_in
from sediment.core.settings import PolicySettings, Retention, SettingsError


@dataclass(frozen=True)
class ChildLink:
    """A table whose rows travel with their parent row: the root's, or another child's.

    ``parent`` is the table the foreign key ``columns`` -> ``referenced`` points at (the
    root, or a child listed before this one: a policy's children are kept parents first,
    to any depth). ``referenced`` is usually the parent's primary key, but may be any of
    its unique columns; either may have several columns.
    """

    table: sa.Table
    archive_table: sa.Table
    columns: tuple[sa.Column[Any], ...]
    parent: sa.Table
    referenced: tuple[sa.Column[Any], ...]
    archive_parent: sa.Table

    @property
    def key(self) -> tuple[sa.Column[Any], ...]:
        return key_columns(self.table)

    @property
    def references_key(self) -> bool:
        """Whether the foreign key points at the parent's primary key."""
        return [c.name for c in self.referenced] == [c.name for c in key_columns(self.parent)]


@dataclass(frozen=True)
class ArchivePolicy:
    """A resolved policy: root rows of ``root`` older than ``older_than`` move to ARCHIVE."""

    name: str
    root: sa.Table
    archive_root: sa.Table
    age: AgeColumn
    older_than: timedelta
    match: Mapping[str, tuple[str, ...]]
    #: The operator's extra condition on the root table (SQL), or ``""``.
    where: str
    children: tuple[ChildLink, ...]
    batch_size: int
    schedule: str
    enabled: bool
    #: ``archive`` moves aged rows to ARCHIVE; ``purge`` deletes them from PRIMARY.
    mode: Literal["archive", "purge"] = "archive"
    #: How long ARCHIVE keeps the rows (on the age column), or ``None``: for ever.
    retention: Retention | None = None
    #: Root keys a run leaves alone although aged: rows restored from ARCHIVE, until they
    #: age again (:mod:`archive.restore`).
    excluded: tuple[Key, ...] = ()

    @property
    def archives(self) -> bool:
        """Whether the policy copies rows to ARCHIVE (and so has twins, a pending window,
        and rows ``archive verify`` checks)."""
        return self.mode == "archive"

    @property
    def key(self) -> tuple[sa.Column[Any], ...]:
        return key_columns(self.root)

    @property
    def tables(self) -> tuple[sa.Table, ...]:
        """Root first, then children: the order rows are copied in."""
        return (self.root, *(child.table for child in self.children))

    @property
    def twins(self) -> dict[str, sa.Table]:
        """The ARCHIVE twin of each table, by the PRIMARY table's full name, root first."""
        return {self.root.fullname: self.archive_root,
                **{child.table.fullname: child.archive_table for child in self.children}}

    def cutoff(self, now: datetime) -> datetime:
        """Return the instant before which a root row counts as aged."""
        return cutoff_for(now, self.older_than)

    def aged(self, cutoff: datetime) -> sa.ColumnElement[bool]:
        """Return the predicate selecting aged root rows (age, match and where conditions)."""
        conditions = [self.age.before(cutoff)]
        conditions += [self.root.c[column].in_(values) for column, values in self.match.items()]
        if self.where:
            conditions.append(self.condition)
        if self.excluded:
            conditions.append(sa.not_(keys_in(self.key, self.excluded)))
        conditions += unreferenced_by_others(self.root)
        return sa.and_(*conditions)

    @property
    def condition(self) -> sa.ColumnElement[bool]:
        """The ``where`` setting as SQL, parenthesised so that it cannot leak into the rest."""
        return sa.literal_column(f"({self.where})", sa.Boolean())


def unreferenced_by_others(table: sa.Table) -> list[sa.ColumnElement[bool]]:
    """For each foreign key of ``table`` to itself (a reply to a comment, an employee's
    manager): the row is referenced by no other row of the table.

    Deleting a row another one still references fails, or with ``ON DELETE CASCADE``
    deletes that one uncopied (the batch's delete count refuses it): the batch failed, and
    every run after it. Such a row waits until the rows referencing it have been archived
    (a thread moves from its leaves, a level per pass over the table: the runner passes
    again while a pass moved rows); a row referencing itself counts as unreferenced.
    """
    key = key_columns(table)
    conditions: list[sa.ColumnElement[bool]] = []
    for constraint in table.foreign_key_constraints:
        if constraint.referred_table is not table:
            continue
        other = table.alias("referencing")
        conditions.append(~sa.exists().where(
            *(other.c[element.parent.name] == element.column for element in constraint.elements),
            sa.not_(sa.and_(*(other.c[column.name] == column for column in key)))))
    return conditions


def cutoff_for(now: datetime, older_than: timedelta) -> datetime:
    """Return ``now - older_than``, refusing a naive ``now``.

    :raises ValueError: when ``now`` has no timezone: a naive instant would be compared
        with UTC timestamps and silently shift the cutoff by the machine's offset.
    """
    if now.tzinfo is None:
        raise ValueError(f"now={now.isoformat()} has no timezone; pass an aware datetime")
    return now - older_than


def resolve_policy(
    settings: PolicySettings,
    primary_tables: Mapping[str, sa.Table],
    archive_tables: Mapping[str, sa.Table],
    unarchivable: Mapping[str, str] | None = None,
) -> ArchivePolicy:
    """Resolve a policy's names against the two schemas.

    :param primary_tables: PRIMARY tables by name.
    :param archive_tables: the ARCHIVE twins of the archivable tables, by name.
    :param unarchivable: why a PRIMARY table can have no twin, by name.
    :raises SettingsError: naming the policy key that refers to something that does not exist.
    """
    prefix = f"policy.{settings.name}"
    refused = unarchivable or {}
    root = _archivable(settings.table, f"{prefix}.table", primary_tables, archive_tables,
                       refused)
    try:
        key_columns(root)
    except ValueError as exc:
        raise SettingsError(f"{prefix}.table", str(exc)) from exc
    if settings.age_column not in root.c:
        raise SettingsError(
            f"{prefix}.age_column", f"table {root.fullname!r} has no column {settings.age_column!r}"
        )
    age = resolve_age_column(root.c[settings.age_column], settings.age_format,
                             settings.age_zone, f"{prefix}.age_column")
    for column, values in settings.match.items():
        if column not in root.c:
            raise SettingsError(
                f"{prefix}.match.{column}", f"table {root.fullname!r} has no such column"
            )
        choices = declared_choices(root.c[column])
        impossible = [value for value in values if choices is not None and value not in choices]
        if impossible:
            raise SettingsError(
                f"{prefix}.match.{column}",
                f"{root.fullname}.{column} can never hold {', '.join(map(repr, impossible))}; "
                f"its values are {', '.join(choices or ())}")
    names = (_descendants(root, primary_tables) if settings.children == "auto"
             else settings.children)
    children = _child_links(names, root, f"{prefix}.children", primary_tables, archive_tables,
                            refused)
    _refuse_uncovered_references((root, *(child.table for child in children)),
                                 f"{prefix}.children", primary_tables)
    return ArchivePolicy(
        name=settings.name,
        root=root,
        archive_root=archive_tables[root.fullname],
        age=age,
        older_than=settings.older_than,
        match=settings.match,
        where=settings.where.strip(),
        children=children,
        batch_size=settings.batch_size,
        schedule=settings.schedule,
        enabled=settings.enabled,
        mode=settings.mode,
        retention=settings.retention_period,
    )


def resolve_policies(
    settings: Sequence[PolicySettings],
    primary_tables: Mapping[str, sa.Table],
    archive_tables: Mapping[str, sa.Table],
    unarchivable: Mapping[str, str] | None = None,
) -> tuple[ArchivePolicy, ...]:
    """Resolve every policy; see :func:`resolve_policy`.

    :raises SettingsError: also for a purge policy on a table another policy archives (the
        purge would delete rows before they could be archived).
    """
    policies = tuple(resolve_policy(s, primary_tables, archive_tables, unarchivable)
                     for s in settings)
    for purge in (policy for policy in policies if not policy.archives):
        purged = {table.fullname for table in purge.tables}
        for other in (policy for policy in policies if policy.archives):
            shared = sorted(purged & {table.fullname for table in other.tables})
            if shared:
                raise SettingsError(f"policy.{purge.name}.mode", (
                    f"purges {', '.join(shared)}, which policy {other.name!r} archives: the "
                    "purge would delete rows before they are archived; purge other tables, "
                    "or archive these"))
    return policies


def refuse_cycles(policy: ArchivePolicy) -> None:
    """Refuse a policy whose tables reference each other in a cycle no order of statements
    can break (PostgreSQL, which reports which keys may be deferred).

    Batches delete children first, and restores insert parents first. A policy table
    that references a table the policy deletes before it (a team's captain among the
    team's players) is deleted too late for that key: with a ``NOT DEFERRABLE`` key every
    batch failed with PRIMARY's foreign key violation, and every run copied the batch
    again. A ``DEFERRABLE`` key is checked at commit (:func:`archive.mover.set_up_batch`).

    :raises SettingsError: naming the constraint and the ``ALTER TABLE`` that defers it.
    """
    order = [table.fullname for table in policy.tables]
    for position, table in enumerate(policy.tables):
        for constraint in table.foreign_key_constraints:
            referred = constraint.referred_table.fullname
            if referred in order[position + 1:] and not constraint.deferrable:
                name = constraint.name or f"({', '.join(constraint.column_keys)})"
                raise SettingsError(f"policy.{policy.name}.children", (
                    f"{table.fullname}'s foreign key {name} references {referred}, which "
                    f"batches delete before {table.fullname} (children first), and it is NOT "
                    "DEFERRABLE, so no batch can delete or restore both: make it deferrable "
                    f"in PRIMARY (ALTER TABLE {table.fullname} ALTER CONSTRAINT {name} "
                    "DEFERRABLE); Sediment defers it inside its own transactions only"))


def declared_choices(column: sa.Column[object]) -> tuple[str, ...] | None:
    """The values a column may hold, where the schema says: an ``Enum`` type's labels, or
    ``info["choices"]`` (the demo schema's check-constrained status columns)."""
    if isinstance(column.type, sa.Enum):
        return tuple(column.type.enums)
    choices = column.info.get("choices")
    return tuple(choices) if choices is not None else None


def _archivable(
    name: str, key: str, primary: Mapping[str, sa.Table], archive: Mapping[str, sa.Table],
    refused: Mapping[str, str],
) -> sa.Table:
    if name not in primary:
        raise SettingsError(key, f"unknown table {name!r}")
    if name in refused:
        raise SettingsError(key, refused[name])
    if name not in archive:
        raise SettingsError(
            key, f"table {name!r} has no ARCHIVE twin (archivable: {', '.join(sorted(archive))})"
        )
    return primary[name]


def _descendants(root: sa.Table, primary: Mapping[str, sa.Table]) -> tuple[str, ...]:
    """``children = "auto"``: every table whose foreign key points at the root, then at
    those tables, and so on (breadth first, each table once)."""
    found: list[str] = []
    level = {root.fullname}
    while level:
        level = {table.fullname for table in primary.values()
                 if table.fullname != root.fullname and table.fullname not in found
                 and any(fk.column.table.fullname in level for fk in table.foreign_keys)}
        found.extend(sorted(level))
    return tuple(found)


def _child_links(
    names: Sequence[str],
    root: sa.Table,
    key: str,
    primary: Mapping[str, sa.Table],
    archive: Mapping[str, sa.Table],
    refused: Mapping[str, str],
) -> tuple[ChildLink, ...]:
    """Resolve the children, parents first: each needs exactly one foreign key to the root
    or to another child of the policy (a grandchild may be listed before its parent)."""
    tables = [_archivable(name, key, primary, archive, refused) for name in names]
    covered = {root.fullname: root}
    links: list[ChildLink] = []
    waiting = list(tables)
    while waiting:
        ready = [table for table in waiting
                 if any(fk.column.table.fullname in covered for fk in table.foreign_keys)]
        if not ready:
            raise SettingsError(key, (
                f"table {waiting[0].fullname!r} has no foreign key to {root.fullname!r} or "
                "to another of the policy's children"))
        for table in ready:
            links.append(_child_link(table, covered, key, archive))
            covered[table.fullname] = table
            waiting.remove(table)
    return tuple(links)


def _child_link(table: sa.Table, covered: Mapping[str, sa.Table], key: str,
                archive: Mapping[str, sa.Table]) -> ChildLink:
    links = [constraint for constraint in table.foreign_key_constraints
             if constraint.referred_table.fullname in covered]
    if len(links) != 1:
        referred = ", ".join(sorted({fk.referred_table.fullname for fk in links}))
        raise SettingsError(key, (
            f"table {table.fullname!r} needs exactly one foreign key to the policy's tables, has "
            f"{len(links)} (to {referred})"))
    try:
        key_columns(table)
    except ValueError as exc:
        raise SettingsError(key, str(exc)) from exc
    (constraint,) = links
    parent = constraint.referred_table
    return ChildLink(table=table, archive_table=archive[table.fullname],
                     columns=tuple(element.parent for element in constraint.elements),
                     parent=parent,
                     referenced=tuple(element.column for element in constraint.elements),
                     archive_parent=archive[parent.fullname])


def _refuse_uncovered_references(covered: Sequence[sa.Table], key: str,
                                 primary: Mapping[str, sa.Table]) -> None:
    """Refuse a policy whose deletes another table's foreign key would stop, or cascade into.

    A row of a table outside the policy that references a row the policy deletes makes the
    PRIMARY delete fail on every batch; with ``ON DELETE CASCADE`` (or ``SET NULL``) the
    delete succeeds and changes rows that were never copied, which is worse.
    """
    names = {table.fullname for table in covered}
    for table in primary.values():
        if table.fullname in names:
            continue
        for constraint in table.foreign_key_constraints:
            referred = constraint.referred_table.fullname
            if referred not in names:
                continue
            columns = ", ".join(constraint.column_keys)
            label = f"{table.fullname}.{constraint.name or f'({columns})'}"
            action = (constraint.ondelete or "").upper()
            if action in ("CASCADE", "SET NULL", "SET DEFAULT"):
                raise SettingsError(key, (
                    f"{label} references {referred} ON DELETE {action}: deleting archived "
                    f"{referred} rows would change {table.fullname} rows that were never copied; "
                    f"archive {table.fullname} with them (add it to children)"))
            raise SettingsError(key, (
                f"{label} references {referred}, which this policy deletes from, but "
                f"{table.fullname} is not archived with it: the PRIMARY delete would fail; add "
                f"{table.fullname} to children"))
