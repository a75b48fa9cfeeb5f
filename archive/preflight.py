"""Checks of the resolved policies against the live PRIMARY, before anything runs.

Resolving a policy (:mod:`archive.policy`) needs no connection; a ``where`` condition, and
an age compared as the policy's ``age_format`` says, can only be judged by the database that
will run them. Each is planned once (``LIMIT 0``: nothing is read) inside a transaction that
is rolled back, so a typo stops the command with the policy, the expression and the
database's own message instead of failing every scheduled run. On SQLite, a column declared
a timestamp is also checked for numbers, which it may hold and the archiver cannot read as
one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from archive.policy import ArchivePolicy
from sediment.core.error_text import first_line, read_only_text
from sediment.core.names import quoted_table, uninterpolated
from sediment.core.schema.archive import RunKind
from sediment.core.settings import SettingsError


def check_conditions(primary: sa.Engine, policies: Sequence[ArchivePolicy]) -> None:
    """Make PRIMARY plan each policy's age comparison and ``where`` condition on its root
    table, and check that a SQLite age column declared a timestamp holds no numbers.

    :raises SettingsError: naming ``policy.<name>.age_format`` or ``.where`` with the
        database's message, or ``policy.<name>.age_column`` with a number it holds.
    """
    with primary.connect() as connection:
        if primary.dialect.name == "sqlite":
            _check_stored_ages(connection, policies)
        for policy in policies:
            _plan(connection, policy, policy.age.before(datetime.now(UTC)), "age_format",
                  f"age_format = {policy.age.format!r} cannot be compared with "
                  f"{policy.root.fullname}.{policy.age.column.name} ({policy.age.column.type})")
            if policy.where:
                _plan(connection, policy, policy.condition, "where",
                      f"{policy.where!r} is not a condition PRIMARY accepts on table "
                      f"{policy.root.fullname!r}")


def _plan(connection: sa.Connection, policy: ArchivePolicy,
          condition: sa.ColumnElement[bool], key: str, refusal: str) -> None:
    """Have PRIMARY plan ``condition`` on the policy's root table (``LIMIT 0``: nothing is
    read), in a transaction rolled back.

    :raises SettingsError: naming ``policy.<name>.<key>``, ``refusal`` and the message.
    """
    probe = sa.select(sa.literal(1)).select_from(policy.root).where(condition)
    try:
        connection.execute(probe.limit(0)).all()
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise  # the database went away: not the condition's fault
        raise SettingsError(f"policy.{policy.name}.{key}",
                            f"{refusal}: {first_line(exc)}") from exc
    finally:
        connection.rollback()


def _check_stored_ages(connection: sa.Connection, policies: Sequence[ArchivePolicy]) -> None:
    """A number in a SQLite column declared a timestamp or a date is an age the archiver
    cannot read (seconds? milliseconds? a Julian day?): such rows never count as aged
    (:class:`archive.ages.HeldAsText`), and the policy stops here instead of leaving them
    in PRIMARY unsaid. One index range on the age column, where it has an index."""
    for policy in policies:
        column = policy.age.column
        if policy.age.format != "timestamp":
            continue
        # Every number sorts before the empty text in SQLite; no text does.
        # Read as it is stored (the column's own type would parse it as a timestamp).
        probe = sa.select(sa.type_coerce(column, sa.String)).where(
            column < sa.literal_column("''")).limit(1)
        number = connection.execute(probe).scalar()
        connection.rollback()
        if number is not None:
            raise SettingsError(
                f"policy.{policy.name}.age_column",
                f"{policy.root.fullname}.{column.name} is declared {column.type} but holds "
                f"numbers (such as {number}): declare age_format = 'epoch_seconds' or "
                "'epoch_milliseconds' if they are Unix times; until then no row counts as aged")


#: What each kind of run does to PRIMARY's tables of its policy, as PostgreSQL privileges:
#: an archive run or a purge reads the tables, locks the batch's rows (``FOR UPDATE``,
#: which needs ``UPDATE``) and deletes them; a restore reads and inserts. An expiry and an
#: erasure's ARCHIVE side leave PRIMARY alone.
PRIMARY_PRIVILEGES: Mapping[RunKind, tuple[str, ...]] = {
    "archive": ("SELECT", "UPDATE", "DELETE"),
    "purge": ("SELECT", "UPDATE", "DELETE"),
    "restore": ("SELECT", "INSERT"),
}


def missing_privileges(primary: sa.Engine, tables: Sequence[sa.Table],
                       kind: RunKind) -> str | None:
    """The privileges on ``tables`` that a ``kind`` run needs and PRIMARY's role lacks, or
    the rows of them its row-level security hides (see :func:`hidden_rows`), as one line
    naming the role, what stops the run and the statement that lets it go; ``None`` when
    nothing does (and always on SQLite, which has neither).

    Checked before a run's first batch: without it, an archive run whose role could read
    and lock but not delete committed the first batch's copy to ARCHIVE and then failed on
    the delete, every run again, with only PostgreSQL's "permission denied" to go by.
    """
    if kind in PRIMARY_PRIVILEGES and refuses_writes(primary):
        return f"{read_only_text('PRIMARY')}; nothing was done"
    needed = PRIMARY_PRIVILEGES.get(kind, ())
    lacking = lacking_privileges(primary, {table: needed for table in tables})
    if lacking is not None:
        return f"{lacking}, which {kind} runs need; nothing was done: {lacking.grant}"
    # An expiry works in ARCHIVE alone, where no application's row security applies.
    hidden = hidden_rows(primary, tables) if kind in PRIMARY_PRIVILEGES else None
    if hidden is not None:
        return f"{hidden}, which {kind} runs would leave behind; nothing was done: {hidden.fix}"
    return None


@dataclass(frozen=True)
class HiddenRows:
    """Tables whose rows PRIMARY's role sees only in part, through the application's
    row-level security. As text: ``row-level security hides rows of notes in PRIMARY from
    the role app``."""

    role: str
    tables: tuple[str, ...]
    #: What lets the role see every row.
    fix: str

    def __str__(self) -> str:
        return (f"row-level security hides rows of {', '.join(self.tables)} in PRIMARY from "
                f"the role {self.role}")


def hidden_rows(primary: sa.Engine, tables: Sequence[sa.Table]) -> HiddenRows | None:
    """The tables of ``tables`` whose rows PRIMARY's role sees only in part; ``None`` when
    it sees every row (and always on SQLite, which has no row security).

    A run, an erasure or a verification sees only the rows the application's policies let
    its role see: an archive run moved one tenant's aged rows, said ``done``, and ``archive
    verify`` agreed that nothing aged was left, while every other tenant's stayed behind.
    """
    if primary.dialect.name != "postgresql" or not tables:
        return None
    names = [quoted_table(primary.dialect, table) for table in tables]
    with primary.connect() as connection:
        role, *active = connection.execute(sa.select(sa.func.current_user(), *(
            sa.func.row_security_active(name) for name in names))).one()
    hidden = tuple(table.fullname for table, secured in zip(tables, active, strict=True)
                   if secured)
    if not hidden:
        return None
    return HiddenRows(role, hidden, f"ALTER ROLE {grantee(primary.dialect, role)} "
                                    "BYPASSRLS, or connect as the tables' owner")


@dataclass(frozen=True)
class Lacking:
    """What PRIMARY's role lacks: privileges per table, and the ``GRANT`` that gives them.
    As text: ``the role app lacks DELETE on likes in PRIMARY``."""

    role: str
    #: The privileges lacking, by table (``sa.Table``) and in the order they were asked for.
    privileges: Mapping[sa.Table, tuple[str, ...]]
    #: ``GRANT`` statements giving each table lacking any all it needs.
    grant: str

    def __str__(self) -> str:
        missing = "; ".join(f"{', '.join(privileges)} on {table.fullname}"
                            for table, privileges in self.privileges.items())
        return f"the role {self.role} lacks {missing} in PRIMARY"


def refuses_writes(engine: sa.Engine) -> bool:
    """Whether ``engine``'s PostgreSQL sessions are read-only (a hot standby, or
    ``default_transaction_read_only``): every run there would fail at its first
    ``SELECT ... FOR UPDATE`` with no word of why. Never on SQLite."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as connection:
        return connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"


def lacking_privileges(primary: sa.Engine, needs: Mapping[sa.Table, Sequence[str]]
                       ) -> Lacking | None:
    """What PRIMARY's role lacks of ``needs`` (privileges per table); ``None`` when it
    lacks none (and always on SQLite, which has no privileges)."""
    wanted = [(table, privilege) for table, privileges in needs.items()
              for privilege in privileges]
    if primary.dialect.name != "postgresql" or not wanted:
        return None
    names = {table: quoted_table(primary.dialect, table) for table in needs}
    checks = [sa.func.has_any_column_privilege(names[table], privilege)
              if privilege == "UPDATE"  # UPDATE of one column will do
              else sa.func.has_table_privilege(names[table], privilege)
              for table, privilege in wanted]
    with primary.connect() as connection:
        role, *granted = connection.execute(sa.select(sa.func.current_user(), *checks)).one()
    lacking: dict[sa.Table, tuple[str, ...]] = {}
    for (table, privilege), allowed in zip(wanted, granted, strict=True):
        if not allowed:
            lacking[table] = (*lacking.get(table, ()), privilege)
    if not lacking:
        return None
    grants: dict[tuple[str, ...], list[str]] = {}
    for table in lacking:
        grants.setdefault(tuple(needs[table]), []).append(names[table])
    to = grantee(primary.dialect, role)
    return Lacking(role, lacking, "; ".join(
        f"GRANT {', '.join(privileges)} ON {', '.join(tables)} TO {to}"
        for privileges, tables in grants.items()))


def grantee(dialect: sa.Dialect, role: str) -> str:
    """``role`` as a ``GRANT`` or ``ALTER ROLE`` statement names it, ready to paste."""
    return uninterpolated(dialect, dialect.identifier_preparer.quote(role))
