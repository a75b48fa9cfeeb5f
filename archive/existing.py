"""Policies over an existing application's PRIMARY: reflected tables, made-to-measure twins.

With ``database.primary_schema = "existing"`` nothing about PRIMARY is known in advance.
:func:`resolve_existing` reflects the tables the policies need, declares their ARCHIVE
twins (:mod:`archive.twins`) and resolves the policies against both, at startup. Before
each run :func:`prepare_run` does it again for the one policy: a column PRIMARY gained
since is added to the twin first (or the run stops with ``schema_drift`` when evolution is
off), and a type change the twin cannot hold stops the run before anything is copied.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from archive.compat import check_engines_hold
from archive.mover import SchemaDrift
from archive.policy import ArchivePolicy, refuse_cycles, resolve_policies
from archive.reflection import UnknownTable, reflect_primary
from archive.twins import TwinPlan, apply_plan, plan_twins, twin_table
from sediment.core.databases import Engines
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT
from sediment.core.settings import PolicySettings, SettingsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExistingSchema:
    """The resolved policies of an existing PRIMARY and the twins they copy into."""

    policies: tuple[ArchivePolicy, ...]
    twins: tuple[sa.Table, ...]


def policy_tables(settings: Sequence[PolicySettings]) -> list[str]:
    """Every table the policies name (roots and declared children)."""
    names: list[str] = []
    for policy in settings:
        names.append(policy.table)
        if policy.children != "auto":
            names.extend(policy.children)
    return list(dict.fromkeys(names))


def resolve_existing(settings: Sequence[PolicySettings], engines: Engines) -> ExistingSchema:
    """Reflect what the policies need from PRIMARY and resolve them against it.

    :raises SettingsError: naming the policy key of an unknown table or column, a missing
        key, an uncovered foreign key, and so on.
    """
    try:
        tables = reflect_primary(engines.primary, policy_tables(settings))
    except UnknownTable as exc:
        policy = next(p for p in settings if p.table == exc.args[0]
                      or (p.children != "auto" and exc.args[0] in p.children))
        key = "table" if policy.table == exc.args[0] else "children"
        raise SettingsError(f"policy.{policy.name}.{key}", exc.reason) from exc
    twins, refused = declare_twins(tables, settings, engines)
    policies = resolve_policies(settings, tables, twins, refused)
    if engines.primary.dialect.name == "postgresql":  # SQLite's reflection does not say
        for resolved in policies:                     # which keys are deferrable
            refuse_cycles(resolved)
    used = {table.fullname for policy in policies if policy.archives
            for table in policy.tables}
    return ExistingSchema(policies, tuple(twins[name] for name in sorted(used)))


def declare_twins(tables: Mapping[str, sa.Table], settings: Sequence[PolicySettings],
                  engines: Engines) -> tuple[dict[str, sa.Table], dict[str, str]]:
    """The ARCHIVE twin of every reflected table that can have one, keyed like ``tables``,
    and why each other table cannot."""
    metadata = sa.MetaData()
    ages: dict[str, list[str]] = {}  # the age columns to index, by the table's full name
    for policy in settings:
        if policy.table in tables:
            ages.setdefault(tables[policy.table].fullname, []).append(policy.age_column)
    twins: dict[str, sa.Table] = {}
    refused: dict[str, str] = {}
    for name, table in tables.items():
        taken = sorted({ARCHIVED_AT, ARCHIVE_RUN_ID} & set(table.c.keys()))
        if taken:
            refused[name] = (
                f"table {table.fullname!r} has its own column {' and '.join(taken)}, which "
                "every ARCHIVE twin adds to stamp the rows it holds: it cannot be archived")
        elif table.fullname not in twins:
            twins[table.fullname] = twin_table(
                table, metadata, primary_dialect=engines.primary.dialect.name,
                archive_dialect=engines.archive.dialect.name,
                indexed=ages.get(table.fullname, []))
        if not taken:
            twins[name] = twins[table.fullname]
    return twins, refused


def plan_for(engines: Engines, schema: ExistingSchema) -> TwinPlan:
    """What ARCHIVE needs for these policies' twins (see :func:`archive.twins.plan_twins`)."""
    return plan_twins(engines.archive, schema.twins)


def prepare_run(settings: PolicySettings, engines: Engines, *, evolve: bool) -> ArchivePolicy:
    """The policy as PRIMARY is now, its twins brought up to date first.

    :raises SchemaDrift: when a type change cannot be followed, or when the twins need a
        change and ``evolve`` is off; nothing has been copied or changed then.
    :raises SettingsError: when the policy no longer resolves (a table or column gone, a
        new uncovered foreign key, a column the other engine cannot hold).
    """
    schema = resolve_existing([settings], engines)
    check_engines_hold(engines.primary, engines.archive, schema.policies)  # new columns too
    plan = plan_for(engines, schema)
    if plan.conflicts:
        raise SchemaDrift("; ".join(map(str, plan.conflicts)))
    if plan.changes and not evolve:
        raise SchemaDrift(
            "PRIMARY's tables changed and the ARCHIVE twins do not follow: "
            + "; ".join(map(str, plan.changes))
            + ". Run 'run_service.py archive schema --apply' (archive.evolve_schema is off)")
    if plan.changes:
        apply_plan(engines.archive, plan, schema.twins)
        logger.info("policy %s: ARCHIVE twins evolved: %s", settings.name,
                    "; ".join(map(str, plan.changes)))
    (policy,) = schema.policies
    return policy
