"""The two databases: their one name each, and how an engine of either is set up.

A leaf module, free of Flask: Flask-SQLAlchemy creates the engines (in
:func:`reporting.app.create_app`) with :func:`engine_options` and :func:`prepare_engine`
from here, and hands them on as :class:`Engines`. Everything else names a database by
:data:`Database` (``"primary"`` or ``"archive"``), the same word used as the bind key,
the migration folder and the label in logs and health reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

#: The name of a database: its bind key, its folder under ``migrations/``, its label.
Database = Literal["primary", "archive"]
PRIMARY: Database = "primary"
ARCHIVE: Database = "archive"
DATABASES: tuple[Database, ...] = (PRIMARY, ARCHIVE)


@dataclass(frozen=True)
class Engines:
    """The read-write engine of each database, as the composition root hands them on."""

    primary: sa.Engine
    archive: sa.Engine

    def __getitem__(self, database: Database) -> sa.Engine:
        return self.primary if database == PRIMARY else self.archive

    def items(self) -> Iterator[tuple[Database, sa.Engine]]:
        """Each database's name and engine, PRIMARY first."""
        yield PRIMARY, self.primary
        yield ARCHIVE, self.archive

    def dispose(self) -> None:
        """Close every pooled connection of both engines."""
        for _, engine in self.items():
            engine.dispose()


#: The session every PostgreSQL connection of Sediment's asks for, whatever the server's or
#: the application's database's own settings (``ALTER DATABASE ... SET``): the archiver
#: moves and compares rows as the types' text forms, and psycopg2 parses values from text.
#: So: UTC (``timestamptz`` is written in the session's zone); ISO dates (psycopg2 asks for
#: them on connecting too); intervals in PostgreSQL's own style (``iso_8601`` writes
#: ``P1M2DT150H``: ARCHIVE printed its copy otherwise, so every batch failed its read-back,
#: and psycopg2 refuses to read it); and floats to their last digit (``extra_float_digits =
#: 0`` prints 15 digits: ``0.6000000000000001`` was archived as ``0.6``, and the read-back,
#: printed as rounded, could not tell).
POSTGRESQL_SESSION = ("-c timezone=UTC -c datestyle=ISO -c intervalstyle=postgres "
                      "-c extra_float_digits=3")


def engine_options(url: str, *, pool_size: int, busy_timeout_ms: int) -> dict[str, Any]:
    """Return the engine options Sediment uses for a database at ``url``.

    PostgreSQL connections ask for :data:`POSTGRESQL_SESSION`. SQLite waits for a writer
    instead of failing at once.
    """
    options: dict[str, Any] = {"pool_pre_ping": True}
    if sa.engine.make_url(url).get_backend_name() == "postgresql":
        options.update(
            pool_size=pool_size,
            connect_args={"options": POSTGRESQL_SESSION, "application_name": "sediment"},
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
    the tables were empty. SQLite's planner gets the same from ``ANALYZE``, there from a
    sample of each index (``analysis_limit``, as SQLite advises for ``PRAGMA optimize``): a
    full ANALYZE read all of a million-row twin, 3% of the run that archived it.
    """
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as connection:  # ANALYZE, unlike VACUUM, may run in a transaction
        preparer = connection.dialect.identifier_preparer
        if sqlite:
            connection.exec_driver_sql(f"PRAGMA analysis_limit={SQLITE_ANALYSIS_LIMIT}")
        try:
            for table in tables:
                connection.exec_driver_sql(f"ANALYZE {preparer.format_table(table)}")
        finally:
            if sqlite:  # a pooled connection's later ANALYZE is a full one again
                connection.exec_driver_sql("PRAGMA analysis_limit=0")


#: Rows of each index SQLite's ANALYZE samples (its documentation suggests 100 to 1,000).
SQLITE_ANALYSIS_LIMIT = 1000


#: Execution option: on SQLite, open the transaction with ``BEGIN IMMEDIATE`` (take the
#: write lock up front), the closest SQLite has to ``SELECT ... FOR UPDATE``.
SQLITE_WRITE_LOCK = "sediment_sqlite_write_lock"


def prepare_engine(engine: sa.Engine, *, owned: bool = True, durable: bool = False) -> None:
    """Install per-connection setup on ``engine`` (idempotent).

    SQLite enforces foreign keys only when asked on each connection. The sqlite3 module
    also starts transactions lazily, only before the first write, so a SELECT followed by a
    DELETE would not see one snapshot; SQLAlchemy's documented recipe hands transaction
    control back to it.

    :param owned: whether the database is Sediment's own (ARCHIVE, the demo PRIMARY): only
        then is a SQLite file switched to WAL, so that reports read while the archiver
        writes. The journal mode is a setting of the file, kept after Sediment has gone: an
        application's database keeps its own (in WAL, a backup that copies the one file
        misses the rows still in ``-wal``), and with it SQLite's default ``synchronous``,
        which NORMAL weakens outside WAL.
    :param durable: every commit on disk when ``COMMIT`` returns (``synchronous=FULL``), for
        ARCHIVE: in WAL, NORMAL's commits reach the disk at the next checkpoint, and a power
        cut could then roll back an archived batch whose rows PRIMARY had already deleted.
        It costs one fsync per batch (3-4% of SQLite archiving time, measured).
    """
    if engine.dialect.name != "sqlite":
        return
    connect: Callable[[Any, Any], None]
    if not owned:
        connect = _sqlite_connect_keeping_journal
    else:
        connect = _sqlite_connect_durable if durable else _sqlite_connect
    if sa.event.contains(engine, "connect", connect):
        return
    sa.event.listen(engine, "connect", connect)
    sa.event.listen(engine, "begin", _sqlite_begin)


def _sqlite_begin(connection: sa.Connection) -> None:
    immediate = connection.get_execution_options().get(SQLITE_WRITE_LOCK, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_connect_in_wal(synchronous: str) -> Callable[[Any, Any], None]:
    """The connect hook of one of Sediment's own files: WAL, commits synced at ``synchronous``
    (one function per level, for :func:`prepare_engine`'s idempotence check)."""

    def connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_connect_keeping_journal(dbapi_connection, _record)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        finally:
            cursor.close()

    return connect


_sqlite_connect = _sqlite_connect_in_wal("NORMAL")
_sqlite_connect_durable = _sqlite_connect_in_wal("FULL")


def _sqlite_connect_keeping_journal(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA foreign_keys=ON")
