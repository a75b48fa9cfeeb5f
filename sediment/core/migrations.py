"""Alembic, configured in code: one migration history per database.

``run_service.py migrate`` hands Alembic the engines the service itself uses, so a
migration can never upgrade a different SQLite file than the one the service reads. The
plain ``alembic`` command works too (``alembic -n primary upgrade head``, with
``alembic.ini`` at the repository root): ``env.py`` then builds the engine from the same
settings (``settings.toml`` and ``SEDIMENT_*``) the service loads.

Alembic itself (11 MB resident, with every dialect it imports) loads only when a database
is behind its head: reading a database's revision and the head of its history, which
``serve`` does at every start and ``/healthz`` on every probe, is plain SQL and a read of
the revision files.
"""

from __future__ import annotations

import ast
import functools
import logging
import logging.config
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sediment.core.databases import (
    DATABASES,
    PRIMARY,
    Database,
    Engines,
    engine_options,
    prepare_engine,
)
from sediment.core.error_text import first_line, is_permission_denied
from sediment.core.schema import PrimarySchema, metadata_of
from sediment.core.settings import PROJECT_ROOT, load_settings

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS_ROOT = PROJECT_ROOT / "migrations"
#: Alembic's table of the applied revision, in each database.
VERSION_TABLE = "alembic_version"
#: Serialises ``migrate`` across replicas that start at the same time (PostgreSQL only).
_MIGRATION_LOCK_KEY = 0x5EDD_0001


def alembic_config(database: Database, engine: sa.Engine,
                   primary_schema: PrimarySchema = "demo") -> Config:
    """Build the Alembic config that migrates ``database`` through ``engine``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_ROOT / database))
    config.attributes["engine"] = engine
    config.attributes["metadata"] = metadata_of(database, primary_schema)
    config.attributes["primary_schema"] = primary_schema
    return config


def demo_twins() -> bool:
    """Inside an ARCHIVE migration: whether this ARCHIVE holds the demo schema's twins.

    Beside an existing application's PRIMARY it does not: its twins are made from that
    application's tables, which may well be called ``orders`` or ``events`` too.
    """
    from alembic import op

    config = op.get_context().config
    return config is None or config.attributes.get("primary_schema", "demo") == "demo"


def migrated_databases(engines: Engines, primary_schema: PrimarySchema
                       ) -> list[tuple[Database, sa.Engine]]:
    """The databases whose schema Sediment migrates: never an existing PRIMARY."""
    return [(database, engine) for database, engine in engines.items()
            if primary_schema == "demo" or database != PRIMARY]


def upgrade_all(engines: Engines, revision: str = "head",
                primary_schema: PrimarySchema = "demo") -> None:
    """Upgrade both databases (ARCHIVE alone beside an existing PRIMARY) to ``revision``;
    a database already at the head is left alone without loading Alembic."""
    behind = []
    for database, engine in migrated_databases(engines, primary_schema):
        if revision == "head" and current_revision(engine) == head_revision(database):
            logger.debug("%s database is at its head, %s", database, head_revision(database))
        else:
            behind.append((database, engine))
    for database, engine in behind:  # both checked before either is migrated
        _refuse_another_applications(database, engine, primary_schema)
    for database, engine in behind:
        from alembic import command

        logger.info("migrating %s database to %s", database, revision)
        try:
            command.upgrade(alembic_config(database, engine, primary_schema), revision)
        except sa.exc.ProgrammingError as exc:
            if not is_permission_denied(exc):
                raise
            raise MigrationRefused(f"the {database} database refused the migration "
                                   f"({first_line(exc)}): {_create_grant(engine)}") from exc


class MigrationRefused(RuntimeError):
    """A database's role may not create Sediment's tables, or the database is another
    application's; nothing was migrated."""


def _refuse_another_applications(database: Database, engine: sa.Engine,
                                  primary_schema: PrimarySchema) -> None:
    """Refuse to migrate a database another application owns: one its own Alembic
    migrates (a revision that is not Sediment's in ``alembic_version``), for the demo's
    PRIMARY one holding tables Sediment did not make, and for either database one that
    never saw Sediment's revision yet holds a table under a name Sediment's first
    migration would create. With ``primary_schema = "demo"`` left as shipped, an
    application's database got the demo's tables and Sediment's revision, and ``serve``
    then seeded the demo shop into it; an ARCHIVE holding an application's ``orders``
    failed halfway with the driver's "already exists", PRIMARY migrated already.

    :raises MigrationRefused: naming the revision or the tables, and the setting to use.
    """
    with engine.connect() as connection:
        tables = set(sa.inspect(connection).get_table_names())
        revision = _revision(connection, tables)
    existing = ('set database.primary_schema = "existing" to archive an application\'s '
                "database (Sediment then never changes its schema), or point "
                f"database.{database}_url at a database of Sediment's own")
    if revision is not None and revision not in revisions(database):
        raise MigrationRefused(
            f"the {database} database's {VERSION_TABLE} is at revision {revision!r}, which "
            f"is not one of Sediment's: another application migrates it; {existing}; "
            "nothing was migrated")
    if revision is not None:
        return
    own = set(metadata_of(database, primary_schema).tables)
    foreign = sorted(tables - own - {VERSION_TABLE})
    if database == PRIMARY and foreign:
        raise MigrationRefused(
            f"the {database} database holds tables Sediment did not make ({_some(foreign)}): "
            f"it is another application's; {existing}; nothing was migrated")
    taken = sorted(tables & own)
    if taken:
        raise MigrationRefused(
            f"the {database} database already holds tables named as Sediment's own "
            f"({_some(taken)}) but no Sediment revision: they are another application's; "
            f"point database.{database}_url at an empty database or one Sediment migrated; "
            "nothing was migrated")


def _some(names: Sequence[str]) -> str:
    """Up to five names, and how many more there are."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _create_grant(engine: sa.Engine) -> str:
    """How to let ``engine``'s role create tables: PostgreSQL 15 and later no longer let
    every role create in the ``public`` schema of a database it does not own."""
    with engine.connect() as connection:
        role, schema, database = connection.execute(sa.select(
            sa.func.current_user(), sa.func.current_schema(), sa.func.current_database())).one()
    quote = engine.dialect.identifier_preparer.quote
    return (f"the role {role} needs to own the database, or to create in its schema: "
            f"ALTER DATABASE {quote(database)} OWNER TO {quote(role)}; or GRANT CREATE ON "
            f"SCHEMA {quote(schema or 'public')} TO {quote(role)}")


class SchemaIncomplete(RuntimeError):
    """A database is not at the newest revision, or is on paper but lacks tables."""


def ensure_complete(engines: Engines, *, repair: bool = False,
                    primary_schema: PrimarySchema = "demo",
                    databases: Sequence[Database] = DATABASES) -> dict[Database, list[str]]:
    """Check that each database is at its head and has every table its history says it has.

    Every command but ``migrate`` reads Sediment's tables, and would otherwise fail on the
    first one missing ("no such table: archive_runs") in a database never migrated, or on
    the first column missing in one an older Sediment migrated. Alembic trusts its version
    table: a table dropped by hand stays dropped through any number of upgrades, and every
    query on it fails later. Call after :func:`upgrade_all`, or instead of it.

    :param repair: create the missing tables, empty, from the schema at head.
    :param databases: the databases to check (of those Sediment migrates).
    :returns: the tables re-created, per database (empty without ``repair``).
    :raises SchemaIncomplete: naming the database and what to run: ``migrate`` for one
        behind its head, or its missing tables, unless ``repair``.
    """
    repaired: dict[Database, list[str]] = {}
    for database, engine in migrated_databases(engines, primary_schema):
        if database not in databases:
            continue
        metadata = metadata_of(database, primary_schema)
        revision, missing = schema_state(engine, metadata)
        _require_head(database, revision)
        if not missing:
            continue
        if not repair:
            raise SchemaIncomplete(
                f"the {database} database is at revision {revision} but lacks "
                f"tables {', '.join(missing)}: restore them from a backup, or run "
                "'run_service.py migrate --repair' to re-create them empty")
        logger.warning("%s database: re-creating missing tables %s, empty", database,
                       ", ".join(missing))
        metadata.create_all(engine, tables=[metadata.tables[name] for name in missing])
        repaired[database] = missing
    return repaired


def _require_head(database: Database, revision: str | None) -> None:
    """Raise :class:`SchemaIncomplete` unless ``revision`` is the head of the history of
    ``database`` (a history of several heads, which only a developer makes, is not judged)."""
    head = head_revision(database)
    if head is None or revision == head:
        return
    state = ("has no Sediment schema yet" if revision is None else
             f"is at revision {revision}, and this Sediment's schema is {head}")
    raise SchemaIncomplete(
        f"the {database} database {state}: run 'run_service.py migrate' ('serve' "
        "migrates at start unless service.migrate_on_start = false; if a newer Sediment "
        "migrated it, run that one)")


def downgrade_all(engines: Engines, revision: str = "base",
                  primary_schema: PrimarySchema = "demo") -> None:
    """Downgrade both databases (ARCHIVE alone beside an existing PRIMARY) to ``revision``."""
    from alembic import command

    for database, engine in migrated_databases(engines, primary_schema):
        command.downgrade(alembic_config(database, engine, primary_schema), revision)


@functools.cache
def head_revision(database: Database) -> str | None:
    """Return the newest revision of a database's history, or None if it has several heads
    (read from the scripts once: they do not change while the process runs).

    Each script's ``revision`` and ``down_revision`` assignments are read with :mod:`ast`,
    as Alembic reads them, without importing Alembic or the scripts: the head is the one
    revision no other script names as its ``down_revision``.
    """
    heads = set(revisions(database)) - {parent for parents in revisions(database).values()
                                          for parent in parents}
    return heads.pop() if len(heads) == 1 else None


@functools.cache
def revisions(database: Database) -> dict[str, tuple[str, ...]]:
    """Every revision of a database's history, with the revisions it follows."""
    found: dict[str, tuple[str, ...]] = {}
    for script in sorted((MIGRATIONS_ROOT / database / "versions").glob("*.py")):
        assigned = _assignments(script, ("revision", "down_revision"))
        if isinstance(assigned.get("revision"), str):
            down = assigned.get("down_revision")
            found[assigned["revision"]] = tuple(down) if isinstance(down, tuple | list) \
                else (down,) if down else ()
    return found


def _assignments(script: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The literal values a module assigns to ``names`` at its top level."""
    values: dict[str, Any] = {}
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in names and value is not None:
            values[target.id] = ast.literal_eval(value)
    return values


def current_revision(engine: sa.Engine) -> str | None:
    """Return the revision a database is at, or ``None`` for an unmigrated one."""
    with engine.connect() as connection:
        return _revision(connection, set(sa.inspect(connection).get_table_names()))


def schema_state(engine: sa.Engine, metadata: sa.MetaData) -> tuple[str | None, list[str]]:
    """The revision a database is at, and the tables of ``metadata`` it lacks.

    One catalog query and one plain one: a ``MigrationContext`` costs about ten times a
    report page of CPU, too much for a probe answered many times a second.
    """
    with engine.connect() as connection:
        present = set(sa.inspect(connection).get_table_names())
        revision = _revision(connection, present)
    return revision, sorted(name for name in metadata.tables if name not in present)


def _revision(connection: sa.Connection, tables: set[str]) -> str | None:
    if VERSION_TABLE not in tables:
        return None
    versions = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")
                                  ).scalars().all()
    return str(versions[0]) if len(versions) == 1 else None


def run_migrations(context: Any) -> None:
    """Body of both ``env.py`` files: migrate the engine the config carries, online.

    On PostgreSQL the whole upgrade runs in one transaction holding an advisory lock and a
    lock timeout, so two replicas migrating at once queue instead of colliding, and a
    migration stuck behind a long query fails instead of blocking every writer behind it.
    """
    config = context.config
    engine: sa.Engine | None = config.attributes.get("engine")
    metadata: sa.MetaData | None = config.attributes.get("metadata")
    if engine is None or metadata is None:
        engine, metadata = _engine_from_settings(config)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            context.run_migrations()


def _engine_from_settings(config: Any) -> tuple[sa.Engine, sa.MetaData]:
    """The engine of the plain ``alembic`` command: the database its section names (``-n
    primary`` or ``-n archive``), at the URL the service's settings give it."""
    database = config.config_ini_section
    from alembic.util import CommandError

    if database not in DATABASES:
        # Alembic's CLI prints a CommandError as one line ("FAILED: ..."), no traceback.
        raise CommandError(f"alembic section {database!r} names no database: run "
                           "'alembic -n primary ...' or 'alembic -n archive ...'")
    if config.config_file_name:
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)
    settings = load_settings()
    if database == PRIMARY and settings.database.primary_schema == "existing":
        raise CommandError("database.primary_schema is \"existing\": Sediment never migrates "
                           "that application's database; migrate ARCHIVE only "
                           "('alembic -n archive ...')")
    url = getattr(settings.database, f"{database}_url")
    engine = sa.create_engine(url, **engine_options(
        url, pool_size=1, busy_timeout_ms=settings.database.lock_timeout_ms))
    prepare_engine(engine)
    config.attributes["primary_schema"] = settings.database.primary_schema
    return engine, metadata_of(database, settings.database.primary_schema)
