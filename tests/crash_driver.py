"""Run the real ``archive run`` CLI and SIGKILL this process at a named point.

Test harness only: it listens to SQLAlchemy engine events from outside, so the product code
carries no test hooks. Usage: ``crash_driver.py POINT N [run_service arguments...]``; the
process kills itself the N-th time it reaches POINT (``CRASH_DRIVER_SETTINGS`` may name a
settings file):

* ``after_select``: the batch is selected and locked in PRIMARY; ARCHIVE is untouched.
* ``after_archive_commit``: ARCHIVE holds the batch; PRIMARY has deleted nothing.
* ``before_primary_commit``: PRIMARY's deletes ran but have not committed.
* ``after_primary_commit``: PRIMARY committed its deletes; the ledger has not counted them.

Purges and expiries delete from one database without copying; with
``CRASH_DRIVER_DELETES=primary|archive`` naming it (and ``CRASH_DRIVER_COMMAND=expire`` for
``archive expire``), the points are:

* ``before_delete``: a batch is selected; its first DELETE of rows (not of a restore's
  marks) has not run.
* ``before_delete_commit``: the batch's deletes ran but have not committed.
* ``after_delete_commit``: they committed; the next statement on the other database (a
  purge's ledger count) has not run.
* ``before_insert_commit`` (restores, with ``CRASH_DRIVER_DELETES=archive``): the batch's
  marks are in ARCHIVE and its rows inserted into PRIMARY, not yet committed.
"""

from __future__ import annotations

import os
import signal
import sys

import sqlalchemy as sa

from sediment.cli import main

POINT, NTH = sys.argv[1], int(sys.argv[2])
ARCHIVE_DATABASE = sa.engine.make_url(os.environ["SEDIMENT_DATABASE__ARCHIVE_URL"]).database
SWEEP_DATABASE = os.environ.get("CRASH_DRIVER_DELETES")
COMMAND = os.environ.get("CRASH_DRIVER_COMMAND", "run")
reached = 0
deleting: set[int] = set()
inserting: set[int] = set()
primary_committed = False
sweep_committed = False


def is_archive(connection: sa.Connection) -> bool:
    return connection.engine.url.database == ARCHIVE_DATABASE


def reach() -> None:
    global reached
    reached += 1
    if reached == NTH:
        os.kill(os.getpid(), signal.SIGKILL)


def sweeps_here(connection: sa.Connection) -> bool:
    return is_archive(connection) == (SWEEP_DATABASE == "archive")


def on_sweep_statement(conn: sa.Connection, text: str) -> None:
    global sweep_committed
    if sweep_committed and not sweeps_here(conn):
        sweep_committed = False
        if POINT == "after_delete_commit":
            reach()
    if sweeps_here(conn) and text.startswith("DELETE") and "ARCHIVE_RESTORES" not in text:
        if POINT == "before_delete" and id(conn) not in deleting:
            reach()
        deleting.add(id(conn))
    elif text.startswith("INSERT"):
        inserting.add(id(conn))


@sa.event.listens_for(sa.Engine, "before_cursor_execute")
def on_statement(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
    text = statement.lstrip().upper()
    if SWEEP_DATABASE:
        on_sweep_statement(conn, text)
        return
    global primary_committed
    if is_archive(conn) and primary_committed:
        primary_committed = False  # the ledger's record of the deletes is next
        reach()
    if is_archive(conn):
        # The first statement of a batch's ARCHIVE transaction: its timeouts on PostgreSQL,
        # the lookup of earlier owners on the portable path, the savepoint around the copy
        # from the attached PRIMARY when both are SQLite files (ledger writes have none).
        first_of_batch = text.startswith("SET LOCAL STATEMENT_TIMEOUT") or (
            "GROUP BY" in text and "ARCHIVE_RUN_ID" in text) or (
            text.startswith("SAVEPOINT") and conn.dialect.name == "sqlite")
        if POINT == "after_select" and first_of_batch:
            reach()
    elif text.startswith("DELETE"):
        if POINT == "after_archive_commit" and id(conn) not in deleting:
            reach()
        deleting.add(id(conn))


@sa.event.listens_for(sa.Engine, "commit")
def on_commit(conn):  # type: ignore[no-untyped-def]
    global primary_committed, sweep_committed
    if SWEEP_DATABASE:
        if id(conn) in inserting and not sweeps_here(conn) and POINT == "before_insert_commit":
            reach()
        inserting.discard(id(conn))
        if id(conn) in deleting:
            if POINT == "before_delete_commit":
                reach()
            sweep_committed = POINT == "after_delete_commit"
        deleting.discard(id(conn))
        return
    if POINT == "before_primary_commit" and id(conn) in deleting:
        reach()
    if POINT == "after_primary_commit" and id(conn) in deleting:
        primary_committed = True  # the commit event comes first: kill at the next statement
    deleting.discard(id(conn))


@sa.event.listens_for(sa.Engine, "rollback")
def on_rollback(conn):  # type: ignore[no-untyped-def]
    deleting.discard(id(conn))
    inserting.discard(id(conn))


if __name__ == "__main__":
    settings = os.environ.get("CRASH_DRIVER_SETTINGS")  # a settings file, if not the default
    sys.exit(main([*(["--settings", settings] if settings else []), "archive", COMMAND,
                   *sys.argv[3:]]))
