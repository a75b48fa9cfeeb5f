"""Engines for reports that the databases themselves keep read-only.

PostgreSQL: ``default_transaction_read_only`` and a ``statement_timeout`` set as connection
options; SQLite: the file opened with ``mode=ro``, so even ``PRAGMA query_only = OFF``
cannot turn a report connection into a writer. (Granting the reporting role only SELECT is
the stronger barrier on PostgreSQL; give these URLs such a role in production.)

Report connections run in autocommit and without a pre-ping: a page is one or two SELECTs,
and BEGIN, ROLLBACK and the ping were most of its round trips. Each statement still runs in
its own read-only transaction; a connection that died in the pool fails one request with a
503 and ``Retry-After``, and the pool discards it. ``pool_recycle`` retires connections
before servers or proxies drop idle ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from reporting.infinities import read_infinities
from reporting.stored_values import install_instant_function
from sediment.core.databases import POSTGRESQL_SESSION


def create_readonly_engine(url: str, *, statement_timeout_ms: int, pool_size: int) -> sa.Engine:
    """An engine whose connections cannot write."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        # JIT compiles a report query for longer than the query runs (seen: pages of the
        # orders report at 0.3-1.4 s with it, the planner misled by unanalysed tables).
        options = ("-c default_transaction_read_only=on "
                   f"-c statement_timeout={statement_timeout_ms} -c jit=off "
                   f"{POSTGRESQL_SESSION}")
        # No hstore in any report: skipping psycopg2's catalog lookup for it keeps a first
        # connection's set-up inside even a very short statement_timeout.
        # Autocommit leaves no transaction to roll back when a connection returns to the
        # pool: skipping the reset saves a measurable share of a page's time.
        engine = sa.create_engine(parsed, isolation_level="AUTOCOMMIT", pool_size=pool_size,
                                  pool_recycle=900, use_native_hstore=False,
                                  pool_reset_on_return=None,
                                  connect_args={"options": options,
                                                "application_name": "sediment-reports"})
        sa.event.listen(engine, "connect", read_infinities)
        return engine
    path = Path(parsed.database or "").resolve()
    # A URI's path is percent-encoded (and URL.create, unlike make_url, keeps it so): in a
    # folder such as "My Data #1" the '#' ended the URI, and with it "?mode=ro", so the
    # reports created and opened an empty read-write "My Data ".
    readonly = sa.engine.URL.create("sqlite", database=f"file:{quote(str(path))}",
                                    query={"mode": "ro", "uri": "true"})
    engine = sa.create_engine(readonly, isolation_level="AUTOCOMMIT",
                              connect_args={"timeout": statement_timeout_ms / 1000,
                                            "check_same_thread": False})
    _limit_statement_time(engine, statement_timeout_ms / 1000)
    return engine


def _limit_statement_time(engine: sa.Engine, seconds: float) -> None:
    """SQLite has no statement timeout: interrupt a statement from its progress handler.

    The deadline is set when a statement starts; SQLite calls the handler every few
    thousand virtual-machine steps, and a non-zero answer aborts the statement with
    "interrupted", which the API answers with a 503 like a PostgreSQL timeout.
    """

    @sa.event.listens_for(engine, "connect")
    def install(dbapi_connection: Any, record: Any) -> None:
        # ``like`` matches case as on PostgreSQL (``ilike`` is there for the other kind).
        dbapi_connection.execute("PRAGMA case_sensitive_like = ON")
        install_instant_function(dbapi_connection)  # filters on an application's timestamps
        deadline = record.info.setdefault("statement_deadline", [None])
        dbapi_connection.set_progress_handler(
            lambda: int(deadline[0] is not None and time.monotonic() > deadline[0]), 10_000)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def start(connection: sa.Connection, *args: Any) -> None:
        deadline = connection.connection.info.get("statement_deadline")
        if deadline is not None:
            deadline[0] = time.monotonic() + seconds
