"""Alembic, configured in code: one migration history per database.

The engines come from the Flask app, never from a URL in ``alembic.ini``: Flask-SQLAlchemy
decides where a SQLite file lives, and a migration that opened its own URL could upgrade a
different file than the one the service reads.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from reporting.db import ARCHIVE, PRIMARY, db

logger = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent / "migrations"
#: Bind key -> folder under ``migrations/``.
HISTORIES: dict[str | None, str] = {PRIMARY: "primary", ARCHIVE: "archive"}
#: Alembic's table of the applied revision, in each database.
VERSION_TABLE = "alembic_version"
#: Serialises ``migrate`` across replicas that start at the same time (PostgreSQL only).
_MIGRATION_LOCK_KEY = 0x5EDD_0001


def bind_label(bind_key: str | None) -> str:
    """Return the human name of a bind: ``primary`` or ``archive``."""
    return HISTORIES[bind_key]


def alembic_config(bind_key: str | None) -> Config:
    """Build the Alembic config for one bind. Call inside an app context."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_ROOT / HISTORIES[bind_key]))
    config.attributes["engine"] = db.engines[bind_key]
    config.attributes["metadata"] = db.metadatas[bind_key]
    return config


def upgrade_all(revision: str = "head") -> None:
    """Upgrade both databases to ``revision``. Call inside an app context."""
    for bind_key in HISTORIES:
        logger.info("migrating %s database to %s", bind_label(bind_key), revision)
        command.upgrade(alembic_config(bind_key), revision)


class SchemaIncomplete(RuntimeError):
    """A database is at the newest revision on paper but lacks tables."""


def ensure_complete(*, repair: bool = False) -> dict[str, list[str]]:
    """Check that each database has every table its history says it has.

    Alembic trusts its version table: a table dropped by hand stays dropped through any
    number of upgrades, and every query on it fails later. Call inside an app context,
    after :func:`upgrade_all`.

    :param repair: create the missing tables, empty, from the schema at head.
    :returns: the tables re-created, per database (empty without ``repair``).
    :raises SchemaIncomplete: naming the database and its missing tables, unless ``repair``.
    """
    repaired: dict[str, list[str]] = {}
    for bind_key in HISTORIES:
        engine, metadata = db.engines[bind_key], db.metadatas[bind_key]
        revision, missing = schema_state(engine, metadata)
        if not missing:
            continue
        label = bind_label(bind_key)
        if not repair:
            raise SchemaIncomplete(
                f"the {label} database is at revision {revision} but lacks "
                f"tables {', '.join(missing)}: restore them from a backup, or run "
                "'run_service.py migrate --repair' to re-create them empty")
        logger.warning("%s database: re-creating missing tables %s, empty", label,
                       ", ".join(missing))
        metadata.create_all(engine, tables=[metadata.tables[name] for name in missing])
        repaired[label] = missing
    return repaired


def downgrade_all(revision: str = "base") -> None:
    """Downgrade both databases to ``revision``. Call inside an app context."""
    for bind_key in HISTORIES:
        command.downgrade(alembic_config(bind_key), revision)


@functools.cache
def head_revision(bind_key: str | None) -> str | None:
    """Return the newest revision of a bind's history (read from the scripts once: they do
    not change while the process runs, and ``/healthz`` asks for it on every probe)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_ROOT / HISTORIES[bind_key]))
    return ScriptDirectory.from_config(config).get_current_head()


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
    if engine is None:
        raise RuntimeError(
            "these migrations take their engine from the app: run 'python run_service.py migrate'"
        )
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=config.attributes["metadata"],
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
