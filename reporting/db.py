"""The Flask-SQLAlchemy extension, the two binds, and column types shared by both databases.

A leaf module. Code reaches an engine only through :data:`PRIMARY` and :data:`ARCHIVE`
(``db.engines[PRIMARY]``), so a bind is never named by a string literal elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

#: The bind key of the live database (Flask-SQLAlchemy's default bind).
PRIMARY: str | None = None
#: The bind key of the archive database.
ARCHIVE = "archive"

#: Constraint names that are stable across SQLite and PostgreSQL, so that Alembic can
#: drop and alter them in later migrations.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: A 64-bit key on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
BigIntKey = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp that behaves the same on SQLite and PostgreSQL.

    PostgreSQL stores ``timestamptz``; SQLite has no such type and would silently drop the
    offset, so values are converted to UTC on the way in and marked UTC on the way out.
    Naive datetimes are refused: a silent local-time guess is how archives lose a day.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given: pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:  # PostgreSQL sessions here run in UTC
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base for every model of both binds."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base, disable_autonaming=True)

if TYPE_CHECKING:
    Model = Base  # what ``db.Model`` is at run time, spelled so that type checkers can see it
else:
    Model = db.Model


def engine_options(url: str, *, pool_size: int, busy_timeout_ms: int) -> dict[str, Any]:
    """Return the engine options Sediment uses for a bind at ``url``.

    Every connection talks UTC (PostgreSQL renders ``timestamptz`` in the session's zone,
    and the archiver compares rendered rows across two servers). SQLite waits for a writer
    instead of failing at once.
    """
    options: dict[str, Any] = {"pool_pre_ping": True}
    if sa.engine.make_url(url).get_backend_name() == "postgresql":
        options.update(
            pool_size=pool_size,
            connect_args={"options": "-c timezone=UTC", "application_name": "sediment"},
        )
    else:
        options["connect_args"] = {"timeout": busy_timeout_ms / 1000}
    return options


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite database file, so a fresh clone needs no setup step."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def analyze(engine: sa.Engine, tables: list[sa.Table]) -> None:
    """Refresh the planner's statistics of ``tables`` after a bulk change.

    Autovacuum gets there eventually; until it does, PostgreSQL plans report pages as if
    the tables were empty. SQLite's planner gets the same from ``ANALYZE``.
    """
    with engine.begin() as connection:  # ANALYZE, unlike VACUUM, may run in a transaction
        quote = connection.dialect.identifier_preparer.quote
        for table in tables:
            connection.exec_driver_sql(f"ANALYZE {quote(table.name)}")


#: Execution option: on SQLite, open the transaction with ``BEGIN IMMEDIATE`` (take the
#: write lock up front), the closest SQLite has to ``SELECT ... FOR UPDATE``.
SQLITE_WRITE_LOCK = "sediment_sqlite_write_lock"


def prepare_engine(engine: sa.Engine) -> None:
    """Install per-connection setup on ``engine`` (idempotent).

    SQLite enforces foreign keys only when asked on each connection, and needs WAL so that
    reports can read while the archiver writes. The sqlite3 module also starts transactions
    lazily, only before the first write, so a SELECT followed by a DELETE would not see one
    snapshot; SQLAlchemy's documented recipe hands transaction control back to it.
    """
    if engine.dialect.name != "sqlite" or sa.event.contains(engine, "connect", _sqlite_connect):
        return
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)


def _sqlite_begin(connection: sa.Connection) -> None:
    immediate = connection.get_execution_options().get(SQLITE_WRITE_LOCK, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
