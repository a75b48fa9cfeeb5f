"""A policy's tables in one database, and the rows that go with a set of roots.

Purging runs on PRIMARY's tables, expiry on ARCHIVE's twins (same names, columns and
keys); both follow the policy's foreign keys down from the roots to every child, and a
hold on a child row is followed up to its root. :class:`Level` is one table of the policy
as one database holds it, so the same SQL serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from archive.keys import columns_in
from archive.policy import ArchivePolicy

Side = Literal["primary", "archive"]


@dataclass(frozen=True)
class Level:
    """One table of a policy in one database: the root (no parent), or a child with the
    foreign-key ``columns`` pointing at its parent's ``referenced`` columns."""

    table: sa.Table
    parent: sa.Table | None = None
    columns: tuple[sa.Column[Any], ...] = ()
    referenced: tuple[sa.Column[Any], ...] = ()


def levels_of(policy: ArchivePolicy, side: Side) -> tuple[Level, ...]:
    """The policy's tables in PRIMARY or in ARCHIVE, root first, then parents before
    children."""
    if side == "primary":
        return (Level(policy.root), *(
            Level(link.table, link.parent, link.columns, link.referenced)
            for link in policy.children))
    return (Level(policy.archive_root), *(
        Level(link.archive_table, link.archive_parent,
              tuple(link.archive_table.c[column.name] for column in link.columns),
              tuple(link.archive_parent.c[column.name] for column in link.referenced))
        for link in policy.children))


def descend(levels: Sequence[Level], roots: sa.ColumnElement[bool]
            ) -> dict[str, sa.ColumnElement[bool]]:
    """Per table (by full name), the condition selecting the rows that belong to the roots
    ``roots`` selects: each level by the rows of the level above, to any depth."""
    conditions = {levels[0].table.fullname: roots}
    for level in levels[1:]:
        assert level.parent is not None
        parents = sa.select(*level.referenced).where(conditions[level.parent.fullname])
        conditions[level.table.fullname] = columns_in(level.columns, parents)
    return conditions


def ascend(levels: Sequence[Level], table: str,
           condition: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """The condition on the root table selecting the roots of the rows of ``table`` that
    ``condition`` selects (walking the foreign keys up)."""
    by_name = {level.table.fullname: level for level in levels}
    level = by_name[table]
    while level.parent is not None:
        condition = columns_in(level.referenced,
                               sa.select(*level.columns).where(condition))
        level = by_name[level.parent.fullname]
    return condition
