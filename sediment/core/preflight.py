"""Checks before a command touches the databases: both reachable, and really two.

A leaf module. Each failure is one line an operator can act on, naming the database (by its
setting and its URL without password) and the cause; the traceback goes to the DEBUG log.
"""

from __future__ import annotations

import logging
import os

import sqlalchemy as sa

from sediment.core.error_text import first_line
from sediment.core.settings import SettingsError

logger = logging.getLogger(__name__)


class DatabaseUnreachable(RuntimeError):
    """A database did not answer; the message names it and the cause."""


def describe(engine: sa.Engine) -> str:
    """The engine's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


def database_identity(connection: sa.Connection) -> tuple[object, ...]:
    """What makes a database itself, as the server reports it (not as its URL spells it).

    PostgreSQL: the cluster's system identifier where the role may read it, else the
    postmaster's start time (no two servers share it to the microsecond), plus the
    database's oid. SQLite: the main database file's device and inode.
    """
    if connection.dialect.name == "postgresql":
        try:
            with connection.begin_nested():
                cluster: object = connection.execute(sa.text(
                    "SELECT system_identifier FROM pg_control_system()")).scalar_one()
        except sa.exc.DBAPIError:
            cluster = connection.execute(sa.text("SELECT pg_postmaster_start_time()")
                                         ).scalar_one()
        database = connection.execute(sa.text(
            "SELECT oid FROM pg_database WHERE datname = current_database()")).scalar_one()
        return ("postgresql", cluster, database)
    path = connection.execute(sa.text("SELECT file FROM pragma_database_list WHERE name = 'main'")
                              ).scalar_one()
    if not path:
        return ("sqlite", "memory", id(connection.engine))
    found = os.stat(path)
    return ("sqlite", found.st_dev, found.st_ino)


#: How PgBouncer (and poolers like it) refuse a client's ``options`` startup parameter.
_POOLER_REFUSAL = "unsupported startup parameter"


def _pooler_hint(error: BaseException) -> str:
    """What to do when a connection pooler, not PostgreSQL, answered the URL."""
    if _POOLER_REFUSAL not in str(getattr(error, "orig", error)):
        return ""
    return ("; a connection pooler (such as PgBouncer) answers there: point the URL at "
            "PostgreSQL itself (Sediment sets each session's zone and date style with that "
            "parameter, and its archiver's lock lives in a session, which a transaction "
            "pool would share with other clients)")


def check_databases(primary: sa.Engine, archive: sa.Engine) -> None:
    """Connect to both databases and make sure they are two.

    :raises DatabaseUnreachable: naming the database that did not answer, and why.
    :raises SettingsError: on ``database.archive_url`` when both URLs reach one database
        (``localhost`` against ``127.0.0.1``, a port spelled out, a symlinked file...).
    """
    identities = {}
    for label, engine in (("primary", primary), ("archive", archive)):
        try:
            with engine.connect() as connection:
                identities[label] = database_identity(connection)
        except sa.exc.DBAPIError as exc:
            logger.debug("connecting to the %s database failed", label, exc_info=True)
            raise DatabaseUnreachable(
                f"cannot reach the {label} database (database.{label}_url = "
                f"{describe(engine)}): {first_line(exc)}{_pooler_hint(exc)}") from exc
    if identities["primary"] == identities["archive"]:
        raise SettingsError(
            "database.archive_url",
            f"{describe(archive)} reaches the same database as database.primary_url "
            f"({describe(primary)}); the archive must be another database")
