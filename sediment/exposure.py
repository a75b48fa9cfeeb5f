"""Which tables of PRIMARY the API serves at ``/api/v1/tables``, from the settings and the
resolved archival policies.

By default: every table a policy archives (served over PRIMARY and its ARCHIVE twin) and
every table those reference (served from PRIMARY). ``reports.tables`` names the tables
instead; ``reports.hide_tables`` and ``reports.hide_columns`` take tables and columns out
(personal data). A name the database does not have stops startup, naming the key, and so
does a named table PRIMARY's role may not read (a default one is left out, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa

from archive.policy import ArchivePolicy
from archive.preflight import grantee
from archive.reflection import UnknownTable, reflect_primary
from reporting.tables import ExposedTable, hidden_in
from sediment.core.names import quoted_table
from sediment.core.settings import ReportSettings, SettingsError

logger = logging.getLogger(__name__)


def exposed_tables(settings: ReportSettings, policies: Sequence[ArchivePolicy],
                   primary: sa.Engine, known: Mapping[str, sa.Table] | None = None
                   ) -> list[ExposedTable]:
    """The tables to serve, in a stable order (archived ones first, as the policies list them).

    :param known: PRIMARY's tables when they are declared (the demo schema); otherwise
        the tables ``reports.tables`` names are reflected.
    :raises SettingsError: naming ``reports.tables``, ``reports.hide_tables`` or
        ``reports.hide_columns`` for a table or column PRIMARY does not have, and
        ``reports.hide_columns`` for a key column.
    """
    archived: dict[str, ExposedTable] = {}
    for policy in (policy for policy in policies if policy.archives):
        archived[policy.root.fullname] = ExposedTable(
            policy.root.fullname, policy.root, policy.archive_root, policy.root.fullname)
        for child in policy.children:
            archived[child.table.fullname] = ExposedTable(
                child.table.fullname, child.table, child.archive_table, policy.root.fullname)
    if settings.tables:
        chosen = _named_tables(settings.tables, primary, known)
        exposed = [archived.get(table.fullname, ExposedTable(table.fullname, table))
                   for table in chosen]
    else:
        referenced = {fk.column.table.fullname: fk.column.table
                      for table in archived.values() for fk in table.primary.foreign_keys}
        exposed = [*archived.values(),
                   *(ExposedTable(name, table) for name, table in referenced.items()
                     if name not in archived)]
    hidden = _hidden_tables(settings.hide_tables, exposed, primary, known)
    exposed = [table for table in exposed if table.name not in hidden]
    check_hidden_columns(settings.hide_columns, exposed)
    if known is not None:  # Sediment's own tables (the demo schema), maybe not made yet
        return exposed
    return _readable(exposed, primary, settings.hide_columns, named=bool(settings.tables))


def _readable(exposed: Sequence[ExposedTable], primary: sa.Engine, hide_columns: Sequence[str],
              *, named: bool) -> list[ExposedTable]:
    """Those of ``exposed`` whose served columns PRIMARY's role may read (a grant on the
    table, or on each of those columns): every page of a table it could not read was a 500.
    A table ``reports.tables`` names stops startup, naming the key and the ``GRANT``; one
    served by default (a table a policy's tables reference, such as the application's
    users) is left out, with a warning in the log saying how to serve it."""
    if primary.dialect.name != "postgresql" or not exposed:
        return list(exposed)
    names = {table.name: quoted_table(primary.dialect, table.primary) for table in exposed}
    wanted = [(table, column.name) for table in exposed for column in table.primary.columns
              if column.name not in hidden_in(table, hide_columns)]
    with primary.connect() as connection:
        role, *allowed = connection.execute(sa.select(sa.func.current_user(), *(
            sa.func.has_column_privilege(names[table.name], column, "SELECT")
            for table, column in wanted))).one()
    unreadable: dict[str, list[str]] = {}
    for (table, column), readable in zip(wanted, allowed, strict=True):
        if not readable:
            unreadable.setdefault(table.name, []).append(column)
    if not unreadable:
        return list(exposed)
    what = "; ".join(f"{name} (columns {', '.join(columns)})"
                     for name, columns in unreadable.items())
    grant = (f"GRANT SELECT ON {', '.join(names[name] for name in unreadable)} "
             f"TO {grantee(primary.dialect, role)}")
    if named:
        raise SettingsError("reports.tables", f"PRIMARY's role {role} may not read {what}: "
                            f"{grant}, hide those columns, or leave the tables out")
    logger.warning("not serving %s: PRIMARY's role %s may not read %s; to serve them: %s "
                   "(or hide those columns: reports.hide_columns)", ", ".join(unreadable),
                   role, what, grant)
    return [table for table in exposed if table.name not in unreadable]


def _named_tables(names: Iterable[str], primary: sa.Engine,
                  known: Mapping[str, sa.Table] | None, key: str = "reports.tables"
                  ) -> list[sa.Table]:
    names = list(names)
    if known is None:
        try:
            known = reflect_primary(primary, names)
        except UnknownTable as exc:
            raise SettingsError(key, exc.reason) from exc
    missing = [name for name in names if name not in known]
    if missing:
        raise SettingsError(key, f"PRIMARY has no table {missing[0]!r}")
    return list({known[name].fullname: known[name] for name in names}.values())


def _hidden_tables(names: Sequence[str], exposed: Sequence[ExposedTable], primary: sa.Engine,
                   known: Mapping[str, sa.Table] | None) -> set[str]:
    """The full names of the tables ``reports.hide_tables`` names, each checked to exist."""
    served = {table.name: table.primary for table in exposed}
    unknown = [name for name in names if name not in served]
    tables = _named_tables(unknown, primary, known, "reports.hide_tables") if unknown else []
    return {name for name in names if name in served} | {table.fullname for table in tables}


def check_hidden_columns(names: Sequence[str], exposed: Sequence[ExposedTable]) -> None:
    """Check every ``table.column`` of ``reports.hide_columns`` against the served tables.

    :raises SettingsError: for a malformed name, an unknown column, or a key column.
    """
    by_name: dict[str, sa.Table] = {}
    for table in exposed:
        by_name[table.name] = by_name[table.primary.name] = table.primary
    for name in names:
        table_name, _, column = name.rpartition(".")
        if not table_name:
            raise SettingsError("reports.hide_columns", f"{name!r} is not table.column")
        found = by_name.get(table_name)
        if found is None:
            continue  # a table that is not served: nothing of it can show
        if column not in found.c:
            raise SettingsError("reports.hide_columns",
                                f"{name!r}: table {table_name!r} has no column {column!r}")
        if found.c[column].primary_key:
            raise SettingsError("reports.hide_columns",
                                f"{name!r} is part of the table's key, which every page "
                                "cursor carries: hide the table instead (reports.hide_tables)")
