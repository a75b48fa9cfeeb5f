"""An existing application's database as PRIMARY, through the real CLI: the walk-through
of the README (``archive schema``, ``migrate``, ``archive run --dry-run``, ``archive run``,
``archive verify``), schema drift between runs, and the startup refusals.

The schema (tests/app_schema.py) is written in plain DDL, as the application's own
developers would have: Sediment only ever sees it by reflection.
"""

from __future__ import annotations

import logging
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from sediment.core.settings import load_settings
from sediment.service import build_service
from tests import app_schema
from tests.app_schema import (
    ARCHIVED,
    NOW,
    AppDatabase,
    one_policy,
    rows_of,
    settings_file,
    table_list,
)
from tests.support import DatabaseFactory, admin_engine, run_cli

NOW_ARG = ("--now", NOW.isoformat())


def migrated(folder: Path, primary_url: str, archive_url: str, backend: str,
             policies: str) -> Path:
    """A settings file for ``policies`` beside PRIMARY's own tables, ARCHIVE migrated."""
    settings = settings_file(folder, primary_url, archive_url, backend, policies=policies)
    ok(run_cli("--settings", str(settings), "migrate"))
    return settings


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_walk_through_archives_an_existing_database_and_changes_nothing_else(
        app_db: AppDatabase) -> None:
    names = ARCHIVED[app_db.backend]
    catalog = table_list(app_db.primary)
    before = rows_of(app_db.primary, names)
    journal = _journal_mode(app_db)

    plan = ok(app_db.cli("archive", "schema"))
    for name in names:
        assert f"planned: create_table {name}: create twin" in plan
    assert "changes planned" in plan
    ok(app_db.cli("migrate"))
    assert "ARCHIVE twins are up to date" in ok(app_db.cli("archive", "schema"))

    dry = ok(app_db.cli("archive", "run", "--dry-run", *NOW_ARG))
    aged_invoices = sum(1 for key, row in before[names[0]].items() if _moves(row, app_db))
    assert f"would move {names[0]} {aged_invoices:,}" in dry
    assert rows_of(app_db.primary, names) == before  # the dry run wrote nothing

    ok(app_db.cli("archive", "run", *NOW_ARG))
    verify = ok(app_db.cli("archive", "verify"))
    assert "archive verified: all checks passed" in verify

    after, archived = rows_of(app_db.primary, names), rows_of(app_db.archive, names,
                                                                archive=True)
    for name in names:  # nothing lost, nothing duplicated, every value exact
        assert not after[name].keys() & archived[name].keys(), name
        assert {**after[name], **archived[name]} == before[name], name
    assert len(archived[names[0]]) == aged_invoices
    assert archived[names[1]] and archived[names[2]]
    assert table_list(app_db.primary) == catalog  # not one object created or changed
    # Nor the file's journal mode: switched to WAL, a backup copying the one file missed rows.
    assert _journal_mode(app_db) == journal
    if app_db.backend == "postgres":  # the twin's types are PRIMARY's own, exactly
        with app_db.archive.connect() as connection:
            types = dict(connection.execute(sa.text(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM "
                "information_schema.columns c JOIN pg_attribute a ON a.attname = c.column_name"
                " AND a.attrelid = CAST('billing.invoices' AS regclass) "
                "WHERE c.table_schema = 'billing' AND c.table_name = 'invoices'")).all())
        assert types["doc"] == "xml" and types["amount"] == "numeric(14,2)"
        assert types["status"] == "billing.invoice_status" and types["tags"] == "text[]"
        assert types["meta"] == "jsonb" and types["tenant_id"] == "uuid"
    archive_tables = set(sa.inspect(app_db.archive).get_table_names())
    assert not archive_tables & {"orders", "order_items", "payments", "events"}  # demo twins
    with app_db.primary.connect() as connection:  # the trigger fired on every delete
        fired = connection.execute(sa.text(
            f"SELECT count(*) FROM {'billing.' if app_db.backend == 'postgres' else ''}audit"
        )).scalar_one()
    assert fired == aged_invoices
    status = ok(app_db.cli("archive", "status"))
    assert "ARCHIVE twin changes" in status and f"{names[0]}: create twin" in status
    assert " done " in status
    again = ok(app_db.cli("archive", "run", *NOW_ARG))
    assert f"{names[0]} 0" in again


def _journal_mode(app_db: AppDatabase) -> str | None:
    """PRIMARY's journal mode (a setting of a SQLite file), or None on PostgreSQL."""
    if app_db.backend == "postgres":
        return None
    with app_db.primary.connect() as connection:
        return str(connection.exec_driver_sql("PRAGMA journal_mode").scalar_one())


def _moves(row: tuple[object, ...], app_db: AppDatabase) -> bool:
    """Whether an invoice row is aged and not open (the policy's own conditions)."""
    if app_db.backend == "postgres":
        issued, status = row[2], row[3]
        assert hasattr(issued, "year")
        from zoneinfo import ZoneInfo
        return bool(issued.replace(tzinfo=ZoneInfo("Europe/Paris"))  # type: ignore[attr-defined]
                    < NOW.replace(year=NOW.year - 1) and status != "open")
    return bool(str(row[2]) < "2025-06-01" and row[3] != "open")


def test_drift_a_column_added_is_followed_one_dropped_is_kept(app_db: AppDatabase) -> None:
    root, child = ARCHIVED[app_db.backend][:2]
    ok(app_db.cli("migrate"))
    ok(app_db.cli("archive", "run", *NOW_ARG))
    app_db.execute(f"ALTER TABLE {root} ADD COLUMN due_on DATE")
    app_schema.fill(app_db.primary, app_db.backend, first=5000, count=30)
    app_db.execute(f"UPDATE {root} SET due_on = '2024-12-24' WHERE invoice_no >= 5000",
                   f"ALTER TABLE {child} DROP COLUMN qty")  # NOT NULL in the twin
    before = rows_of(app_db.primary, [root, child])

    assert "add_column" in ok(app_db.cli("archive", "schema"))
    ok(app_db.cli("archive", "run", *NOW_ARG))

    archived = rows_of(app_db.archive, [root, child], archive=True)
    moved = {key: row for key, row in archived[root].items() if key[1] >= 5000}
    assert moved and all(row == before[root][key] for key, row in moved.items())
    with app_db.archive.connect() as connection:
        due = connection.execute(sa.text(
            f"SELECT count(*) FROM {root} WHERE invoice_no >= 5000 AND due_on IS NOT NULL"
        )).scalar_one()
        kept, emptied = (connection.execute(sa.text(
            f"SELECT count(*) FROM {child} WHERE qty IS {test} NULL")).scalar_one()
            for test in ("NOT", ""))
    assert due == len(moved)  # the new column's values arrived
    if app_db.backend == "postgres":  # an enum label PRIMARY gained is added to ARCHIVE's type
        app_db.execute("ALTER TYPE billing.invoice_status ADD VALUE 'refunded'")
        app_db.execute("UPDATE billing.invoices SET status = 'refunded' "  # aged, were open
                       "WHERE invoice_no IN (5, 10)")
        assert "add label 'refunded' to enum type invoice_status" in ok(
            app_db.cli("archive", "schema"))
        ok(app_db.cli("archive", "run", *NOW_ARG))
        with app_db.archive.connect() as connection:
            assert connection.execute(sa.text(
                "SELECT count(*) FROM billing.invoices WHERE status = 'refunded'")
            ).scalar_one() > 0
    assert kept > 0  # the dropped column keeps what was archived before
    assert emptied > 0  # and is NULL for rows archived since
    status = ok(app_db.cli("archive", "status"))
    assert f"{root}: add column due_on" in status and f"{child}: make qty nullable" in status
    assert "archive verified" in ok(app_db.cli("archive", "verify"))


def test_drift_with_evolution_off_stops_the_run_naming_the_command(
        app_db: AppDatabase) -> None:
    root = ARCHIVED[app_db.backend][0]
    settings = app_db.settings(extra="[archive]\nevolve_schema = false\n")
    ok(app_db.cli("migrate", settings=settings))
    app_db.execute(f"ALTER TABLE {root} ADD COLUMN due_on DATE")
    before = rows_of(app_db.primary, [root])
    result = app_db.cli("archive", "run", "--policy", "invoices", *NOW_ARG, settings=settings)
    assert result.returncode == 1
    assert "schema_drift" in result.stdout and "archive schema --apply" in result.stdout
    assert rows_of(app_db.primary, [root]) == before  # nothing moved
    ok(app_db.cli("archive", "schema", "--apply", settings=settings))
    ok(app_db.cli("archive", "run", "--policy", "invoices", *NOW_ARG, settings=settings))


@pytest.mark.postgres
def test_a_type_change_the_twin_cannot_hold_stops_before_copying(app_db: AppDatabase) -> None:
    root, child = ARCHIVED[app_db.backend][:2]
    ok(app_db.cli("migrate"))
    app_db.execute(f"ALTER TABLE {child} ALTER COLUMN qty TYPE text")
    before = rows_of(app_db.primary, [root, child])
    result = app_db.cli("archive", "run", *NOW_ARG)
    assert result.returncode == 1
    assert (f"{child}.qty is now TEXT in PRIMARY, which the ARCHIVE twin's INTEGER cannot "
            "hold losslessly") in result.stdout
    assert rows_of(app_db.primary, [root, child]) == before
    assert rows_of(app_db.archive, [root], archive=True)[root] == {}
    # A widening is followed: the twin's column takes the wider type.
    app_db.execute(f"ALTER TABLE {child} ALTER COLUMN qty TYPE integer USING qty::integer",
                   f"ALTER TABLE {child} ALTER COLUMN price TYPE numeric(18,6)")
    assert "widen price from NUMERIC(12, 4) to NUMERIC(18, 6)" in ok(
        app_db.cli("archive", "schema"))
    ok(app_db.cli("archive", "run", *NOW_ARG))
    assert "archive verified" in ok(app_db.cli("archive", "verify"))


def test_a_column_added_during_a_run_is_never_left_behind(app_db: AppDatabase) -> None:
    """A run resolved the schema before PRIMARY gained a column: its batches refuse to copy
    (checked under the batch's row locks) instead of deleting rows whose new value the
    twin would not hold."""
    from archive.runner import run_policy
    from sediment.core.settings import load_settings
    from sediment.service import build_service

    settings = load_settings(str(app_db.settings()))
    ok(app_db.cli("migrate"))
    service = build_service(settings)
    policy = service.archiver.policy("invoices")
    root = ARCHIVED[app_db.backend][0]
    app_db.execute(f"ALTER TABLE {root} ADD COLUMN due_on DATE")
    before = rows_of(app_db.primary, [root])
    outcome = run_policy(service.engines.primary, service.engines.archive, policy, now=NOW,
                         database=settings.database, settings=settings.archive)
    service.engines.dispose()
    assert outcome.status == "schema_drift" and "due_on" in (outcome.error or "")
    assert rows_of(app_db.primary, [root]) == before


REFUSALS = {
    "uncovered foreign key": (
        "CREATE TABLE {p}disputes (id INTEGER PRIMARY KEY, tenant_id {uuid} NOT NULL, "
        "invoice_no INTEGER NOT NULL, FOREIGN KEY (tenant_id, invoice_no) REFERENCES "
        "{p}invoices (tenant_id, invoice_no))", "children = {children}",
        "policy.invoices.children", "disputes"),
    "cascading foreign key": (
        "CREATE TABLE {p}disputes (id INTEGER PRIMARY KEY, tenant_id {uuid} NOT NULL, "
        "invoice_no INTEGER NOT NULL, FOREIGN KEY (tenant_id, invoice_no) REFERENCES "
        "{p}invoices (tenant_id, invoice_no) ON DELETE CASCADE)", "children = {children}",
        "policy.invoices.children", "ON DELETE CASCADE"),
    "bad where": (None, "where = \"stauts <> 'open'\"", "policy.invoices.where", "stauts"),
    "no primary key": ("CREATE TABLE {p}loose (made_at DATE)",
                       "table = \"{p}loose\"\nage_column = \"made_at\"",
                       "policy.invoices.table", "has no primary key"),
    "no key, a nullable unique column": (
        "CREATE TABLE {p}loose (made_at DATE, code TEXT UNIQUE)",
        "table = \"{p}loose\"\nage_column = \"made_at\"", "policy.invoices.table",
        "has no primary key, nor a unique index over NOT NULL columns"),
    "a view": ("CREATE VIEW {p}recent AS SELECT * FROM {p}invoices",
               "table = \"{p}recent\"", "policy.invoices.table",
               "recent' is a view, not a table: name the table it reads"),
    "unknown column": (None, "age_column = \"issued_on\"", "policy.invoices.age_column",
                       "issued_on"),
    "unknown table": (None, "table = \"{p}invoice\"", "policy.invoices.table", "invoice"),
    "stamp column taken": ("ALTER TABLE {p}invoice_lines ADD COLUMN archived_at DATE", "",
                           "policy.invoices.children", "has its own column archived_at"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_startup_refusals_name_the_policy_key(app_db: AppDatabase, case: str) -> None:
    ddl, setting, key, says = REFUSALS[case]
    p = "billing." if app_db.backend == "postgres" else ""
    uuid_type = "uuid" if app_db.backend == "postgres" else "TEXT"
    if ddl:
        app_db.execute(ddl.format(p=p, uuid=uuid_type))
    children = "[" + ", ".join(
        f'"{name}"' for name in app_schema.INVOICE_CHILDREN[app_db.backend]) + "]"
    lines = {line.split("=")[0].strip(): line
             for line in setting.format(p=p, children=children).splitlines()}
    policy = app_schema.INVOICES_POLICY[app_db.backend]
    policy = "\n".join(lines.get(line.split("=")[0].strip(), line)
                       for line in policy.splitlines())
    result = app_db.cli("archive", "run", "--dry-run", *NOW_ARG,
                        settings=app_db.settings(policies=policy))
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"sediment: settings: {key}:")
    assert says in message


def test_seed_and_primary_migrations_are_refused_beside_an_existing_database(
        app_db: AppDatabase) -> None:
    catalog = table_list(app_db.primary)
    result = app_db.cli("seed")
    assert result.returncode == 2 and "never writes an application's database" in result.stderr
    ok(app_db.cli("migrate"))
    assert table_list(app_db.primary) == catalog


CRASH_POINTS = ("after_select", "after_archive_commit", "before_primary_commit",
                "after_primary_commit", "random")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crashes_on_an_existing_schema_lose_and_duplicate_nothing(
        app_db: AppDatabase, point: str, request: pytest.FixtureRequest) -> None:
    """SIGKILL the real CLI at every dangerous point of a batch on composite and uuid keys;
    a completed run then repairs all, with every value exact."""
    import os
    import random

    from tests.test_crashes import crash_once, wait_for_lock

    names = ARCHIVED[app_db.backend]
    wanted = 5 if request.config.getoption("--full") else 2
    # Random kills land 0.3-1.5 s after the CLI starts: the throttle makes the whole run
    # last about 2 s (at 15 ms it took 1.2 s on PostgreSQL, and was sometimes not killed).
    settings = app_db.settings(extra="[archive]\nthrottle = \"150ms\"\n" if point == "random"
                               else "")
    ok(app_db.cli("migrate", settings=settings))
    before = rows_of(app_db.primary, names)
    env = {**os.environ, "CRASH_DRIVER_SETTINGS": str(settings)}
    for name in ("SEDIMENT_DATABASE__PRIMARY_URL", "SEDIMENT_DATABASE__ARCHIVE_URL"):
        env.pop(name, None)
    env["SEDIMENT_DATABASE__ARCHIVE_URL"] = app_db.archive_url  # read by the driver
    rng = random.Random(f"{point}-{app_db.backend}")
    killed = 0
    for _ in range(2 * wanted):
        code = crash_once(point, rng, env)
        if code == 0:
            break
        assert code == -9
        killed += 1
        if killed == wanted:
            break
    assert killed, "no run was killed"
    for policy in app_schema.POLICY_NAMES[app_db.backend]:
        from tests.app_schema import engine_for
        with engine_for(app_db.primary_url) as primary:
            wait_for_lock(primary, policy)
    ok(app_db.cli("archive", "run", *NOW_ARG, settings=settings))
    assert "all checks passed" in ok(app_db.cli("archive", "verify", settings=settings))
    after, archived = rows_of(app_db.primary, names), rows_of(app_db.archive, names)
    for name in names:
        assert not after[name].keys() & archived[name].keys(), name
        assert {**after[name], **archived[name]} == before[name], name


@pytest.mark.postgres
def test_a_sqlite_application_database_archives_into_postgresql(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """Mixed engines: SQLite's columns are all portable, so the walk-through works."""
    archive_url = databases.pair("mixed")[1]
    primary_url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    with app_schema.engine_for(primary_url) as primary, \
            app_schema.engine_for(archive_url) as archive:
        app_schema.create_app_schema(primary)
        app_db = AppDatabase("sqlite", primary_url, archive_url, primary, archive, tmp_path)
        names = ARCHIVED["sqlite"]
        before = rows_of(primary, names)
        ok(app_db.cli("migrate"))
        ok(app_db.cli("archive", "run", *NOW_ARG))
        assert "all checks passed" in ok(app_db.cli("archive", "verify"))
        after, archived = rows_of(primary, names), rows_of(archive, names)
        for name in names:
            assert {**after[name], **archived[name]} == before[name], name


@pytest.mark.postgres
def test_a_value_postgresql_cannot_take_ends_the_run_in_the_ledger(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """SQLite keeps any text in a DATETIME column; copied into PostgreSQL, one that is no
    timestamp SQLAlchemy reads raised ValueError past the runner: a traceback, and the run
    left ``running`` in the ledger. The run ends ``error`` naming the value; nothing moved."""
    archive_url = databases.pair("unconvertible")[1]
    primary_url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE notes (id integer PRIMARY KEY, at DATETIME NOT NULL, body text)")
        connection.execute(sa.text("INSERT INTO notes VALUES (:id, :at, 'b')"), [
            {"id": i, "at": (NOW - timedelta(days=100 * i)).strftime("%Y-%m-%d %H:%M:%S")}
            for i in range(1, 7)] + [{"id": 7, "at": "2024-01-02 03:04:05.678 +00:00"}])
    settings = migrated(tmp_path, primary_url, archive_url, "sqlite",
                        one_policy("notes", "at"))
    ran = run_cli("--settings", str(settings), "archive", "run", *NOW_ARG)
    assert ran.returncode == 1, ran.stderr[-2000:]
    assert "Traceback" not in ran.stderr and "Traceback" not in ran.stdout
    assert "a stored value could not be converted: Invalid isoformat string: " \
        "'2024-01-02 03:04:05.678 +00:00'" in ran.stdout
    status = ok(run_cli("--settings", str(settings), "archive", "status"))
    assert " error " in status.splitlines()[1] and "running" not in status
    with app_schema.engine_for(primary_url) as primary, primary.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM notes").scalar() == 7
    assert "archive verified" in ok(run_cli("--settings", str(settings), "archive", "verify"))


@pytest.mark.postgres
def test_a_postgresql_application_database_is_refused_a_sqlite_archive(
        app_db: AppDatabase, tmp_path: Path) -> None:
    archive_url = f"sqlite:///{tmp_path / 'archive.sqlite3'}"
    settings = app_schema.settings_file(tmp_path, app_db.primary_url, archive_url, "postgres")
    result = run_cli("--settings", str(settings), "archive", "run", "--dry-run", *NOW_ARG)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.startswith("sediment: settings: database.archive_url:")
    for column in ("billing.invoices.tenant_id", "billing.invoices.meta",
                   "billing.invoices.tags", "billing.invoice_lines.price"):
        assert column in message


def _restart(app_db: AppDatabase, invoices: int) -> None:
    """Empty both databases' rows (the schema and the twins stay), then refill PRIMARY."""
    names = [*reversed(ARCHIVED[app_db.backend]),
             f"{'billing.' if app_db.backend == 'postgres' else ''}tenants"]
    for engine, tables in ((app_db.archive, [*ARCHIVED[app_db.backend], "archive_run_tables",
                                              "archive_runs"]),
                           (app_db.primary, names)):
        with engine.begin() as connection:
            for table in tables:
                connection.exec_driver_sql(f"DELETE FROM {table}")
    app_schema.fill(app_db.primary, app_db.backend, count=invoices)


def test_failure_at_every_statement_on_an_existing_schema_loses_nothing(
        app_db: AppDatabase, request: pytest.FixtureRequest) -> None:
    """Fail statement N of a run, for every N on SQLite and every other N on PostgreSQL
    (every sixth without --full), on composite and uuid keys; the next run completes and
    every value is where it belongs, once."""
    from sediment.core.settings import load_settings
    from sediment.service import build_service

    settings = load_settings(str(app_db.settings(extra="[archive]\nretry_attempts = 1\n")))
    ok(app_db.cli("migrate"))
    service = build_service(settings)
    names = ARCHIVED[app_db.backend]
    step = (1 if app_db.backend == "sqlite" else 2) if request.config.getoption("--full") else 6
    counter = {"n": 0, "fail_at": 0}

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        counter["n"] += 1
        if counter["n"] == counter["fail_at"]:
            raise sa.exc.OperationalError(statement, parameters, RuntimeError("injected"))

    n, statements = 1, None
    try:
        while statements is None or n <= statements:
            _restart(app_db, invoices=8)
            before = rows_of(app_db.primary, names)
            counter.update(n=0, fail_at=n)
            for engine in (service.engines.primary, service.engines.archive):
                sa.event.listen(engine, "before_cursor_execute", count)
            try:
                status = service.archiver.run("invoices", NOW).status
            except sa.exc.SQLAlchemyError:
                status = "raised"  # the ledger itself could not be written: surfaced
            finally:
                for engine in (service.engines.primary, service.engines.archive):
                    sa.event.remove(engine, "before_cursor_execute", count)
            if counter["n"] < n:
                statements = n - 1
                assert status == "done"
            final = service.archiver.run("invoices", NOW)
            assert final.status == "done", (n, final.error)
            after, archived = rows_of(app_db.primary, names), rows_of(app_db.archive, names)
            for name in names:
                assert not after[name].keys() & archived[name].keys(), (n, name)
                assert {**after[name], **archived[name]} == before[name], (n, name)
            n += step
    finally:
        service.engines.dispose()
    assert statements and statements > 20


def test_max_rows_and_the_http_service_work_beside_an_existing_database(
        app_db: AppDatabase) -> None:
    from sediment.core.settings import load_settings
    from sediment.service import build_service

    root = ARCHIVED[app_db.backend][0]
    ok(app_db.cli("migrate"))
    result = ok(app_db.cli("archive", "run", "--policy", "invoices", "--max-rows", "40",
                           *NOW_ARG))
    assert " max_rows " in result
    assert len(rows_of(app_db.archive, [root])[root]) == 40
    app = build_service(load_settings(str(app_db.settings()))).app
    client = app.test_client()
    health = client.get("/healthz")
    assert health.status_code == 200, health.json
    assert health.json is not None
    assert health.json["databases"]["primary"]["revision"] is None  # never migrated
    assert health.json["databases"]["archive"]["at_head"] is True
    catalog = client.get("/api/v1/reports")
    assert catalog.status_code == 200 and catalog.json is not None
    assert catalog.json["reports"] == []  # the demo's reports need the demo's tables
    assert {table["name"] for table in catalog.json["tables"]} >= set(ARCHIVED[app_db.backend])
    assert client.get(f"/api/v1/tables/{root}?count=exact").json["count"]["value"] == len(
        rows_of(app_db.primary, [root])[root]) + 40
    missing = client.get("/api/v1/reports/orders")
    assert missing.status_code == 404 and missing.json is not None
    assert missing.json["type"].endswith("unknown_report")


def test_the_scheduler_archives_an_existing_database(app_db: AppDatabase) -> None:
    """The scheduled job takes the same path as 'archive run': resolved again holding the
    lock, twins created if missing, then batches."""
    import time
    from datetime import UTC, datetime

    from archive.scheduler import start_in_background
    from sediment.core.settings import load_settings
    from sediment.service import build_service

    settings = load_settings(str(app_db.settings()))
    ok(app_db.cli("migrate"))
    service = build_service(settings)
    background = start_in_background(service.archiver)
    status = None
    try:
        job = background.scheduler.get_job("archive:invoices")
        job.modify(next_run_time=datetime.now(UTC))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and status is None:
            with app_db.archive.connect() as connection:
                status = connection.execute(sa.text(
                    "SELECT status FROM archive_runs WHERE policy = 'invoices' "
                    "AND status <> 'running'")).scalar()
            time.sleep(0.1)
    finally:
        background.shutdown()
        service.engines.dispose()
    assert status == "done"
    root = ARCHIVED[app_db.backend][0]
    assert rows_of(app_db.archive, [root])[root]


@pytest.mark.postgres
def test_enum_arrays_get_their_type_in_archive_and_follow_new_labels(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """An enum in a column and in an array column of one table (the twin's CREATE once
    created the type a second time), and an enum used only in arrays, whose new label must
    reach ARCHIVE's copy of the type before rows holding it are copied."""
    primary_url, archive_url = databases.pair("enums")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE SCHEMA app; CREATE TYPE app.mood AS ENUM ('sad', 'ok');"
            "CREATE TYPE app.flag AS ENUM ('red', 'blue');"
            "CREATE TABLE app.moods (id integer PRIMARY KEY, seen_at timestamptz NOT NULL,"
            " mood app.mood, moods app.mood[], flags app.flag[]);"
            "INSERT INTO app.moods SELECT g, %(now)s::timestamptz - g * interval '100 days',"
            " 'ok', ARRAY['sad', 'ok']::app.mood[], ARRAY['blue']::app.flag[]"
            " FROM generate_series(1, 20) g", {"now": NOW.isoformat()})
    settings = migrated(tmp_path, primary_url, archive_url, "postgres",
                        one_policy("app.moods", "seen_at"))
    ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("ALTER TYPE app.flag ADD VALUE 'green'")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("UPDATE app.moods SET flags = ARRAY['green', 'red']::app.flag[]")
    assert "add label 'green' to enum type flag" in ok(
        run_cli("--settings", str(settings), "archive", "schema"))
    a_year_later = NOW.replace(year=NOW.year + 1).isoformat()
    ok(run_cli("--settings", str(settings), "archive", "run", "--now", a_year_later))
    with app_schema.engine_for(archive_url) as archive, archive.connect() as connection:
        archived = connection.exec_driver_sql(
            "SELECT id, mood::text, moods::text, flags::text FROM app.moods ORDER BY id").all()
    assert [row[0] for row in archived] == list(range(1, 21))
    assert {row[1:3] for row in archived} == {("ok", "{sad,ok}")}
    flags = {row[0]: row[3] for row in archived}
    assert {flags[i] for i in range(1, 4)} == {"{green,red}"}  # the second run's
    assert {flags[i] for i in range(4, 21)} == {"{blue}"}  # the first run's
    assert "archive verified" in ok(run_cli("--settings", str(settings), "archive", "verify"))


@pytest.mark.sqlite
def test_a_sqlite_application_table_is_archived_and_restored_byte_for_byte(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A generated column (``PRAGMA table_info`` leaves it out, where reflection has it:
    every batch stopped ``schema_drift``), and values SQLAlchemy would rewrite on their way
    back: JavaScript's timestamps (a restore wrote ``... 10:00:00.000000`` and then refused
    its own read-back), Unix times in a DATETIME column (failed to parse), compact JSON.
    Restored rows are the rows the application wrote."""
    primary_url, archive_url = databases.pair("generated")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE carts (id integer PRIMARY KEY, placed_at DATETIME NOT NULL,"
            " seen DATETIME, meta JSON, doubled REAL GENERATED ALWAYS AS (id * 2) VIRTUAL)")
        connection.exec_driver_sql(
            "CREATE TABLE cart_lines (cart_id integer NOT NULL REFERENCES carts (id)"
            " ON DELETE CASCADE, line integer NOT NULL, sku text,"
            " PRIMARY KEY (cart_id, line)) WITHOUT ROWID")
        connection.execute(sa.text("INSERT INTO carts (id, placed_at, seen, meta)"
                                   " VALUES (:id, :at, :seen, :meta)"), [
            {"id": i, "at": (NOW - timedelta(days=100 * i)).strftime("%Y-%m-%dT%H:%M:%S.123Z"),
             "seen": 1_700_000_000 + i, "meta": f'{{"k":{i}}}'} for i in range(1, 9)])
        connection.execute(sa.text("INSERT INTO cart_lines VALUES (:cart, :line, :sku)"), [
            {"cart": i, "line": line, "sku": f"s{i}.{line}"}
            for i in range(1, 9) for line in (1, 2)])
        written = connection.exec_driver_sql("SELECT * FROM carts ORDER BY id").all()
    settings = migrated(tmp_path, primary_url, archive_url, "sqlite",
                        one_policy("carts", "placed_at", children='"auto"'))
    ran = ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    assert "carts 5, cart_lines 10" in ran, ran  # 400 to 800 days old
    restored = ok(run_cli("--settings", str(settings), "archive", "restore", "--table",
                          "carts", "--key", "4", "--key", "8", *NOW_ARG))
    assert "carts 2, cart_lines 4" in restored, restored
    with app_schema.engine_for(primary_url) as primary, primary.connect() as connection:
        assert connection.exec_driver_sql("SELECT * FROM carts ORDER BY id").all() == [
            row for row in written if row[0] in (1, 2, 3, 4, 8)]
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM cart_lines WHERE cart_id IN (4, 8)").scalar() == 4
    assert "archive verified" in ok(run_cli("--settings", str(settings), "archive", "verify"))


@pytest.mark.sqlite
@pytest.mark.parametrize("declared", ["TIMESTAMPTZ", "timestamp with time zone", "UTC_DATETIME"])
def test_a_sqlite_column_declared_as_any_timestamp_is_one(
        databases: DatabaseFactory, tmp_path: Path, declared: str) -> None:
    """SQLAlchemy knows SQLite's ``DATETIME`` and ``TIMESTAMP``; other timestamp names (DDL
    shared with PostgreSQL, Ecto's) it reflected by affinity as NUMERIC, so neither age
    format could read the column (``holds Decimal``) and the table could not be archived."""
    primary_url, archive_url = databases.pair("declared")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE TABLE logs (id integer PRIMARY KEY, at {declared} NOT NULL, note text)")
        connection.execute(sa.text("INSERT INTO logs VALUES (:id, :at, 'n')"), [
            {"id": i, "at": (NOW - timedelta(days=100 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")}
            for i in range(1, 7)])
    settings = migrated(tmp_path, primary_url, archive_url, "sqlite",
                        one_policy("logs", "at"))
    assert "logs 3" in ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    with app_schema.engine_for(archive_url) as archive, archive.connect() as connection:
        assert connection.exec_driver_sql("SELECT at FROM logs ORDER BY id").scalars().all() \
            == [(NOW - timedelta(days=100 * i)).strftime("%Y-%m-%dT%H:%M:%SZ") for i in (4, 5, 6)]


@pytest.mark.parametrize("on_delete", ["", " ON DELETE CASCADE"], ids=["restrict", "cascade"])
def test_a_table_that_references_itself_is_archived_from_its_leaves(
        databases: DatabaseFactory, tmp_path: Path, on_delete: str) -> None:
    """Comments and their replies in one table: deleting an aged comment a recent reply
    still references failed (or, cascading, deleted the reply uncopied, which the delete
    count refused), so every batch of every run failed. A row waits for the rows that
    reference it; one run moves a thread from its leaves up, pass after pass."""
    primary_url, archive_url = databases.pair("threads")
    parent = {i: (i - 10 if i > 10 else None) for i in range(1, 31)} | {31: 31}
    aged = {i for i in parent if i <= 10 or i % 2 or i == 31}
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE comments (id integer PRIMARY KEY, parent_id integer"
            f" REFERENCES comments (id){on_delete}, created_at timestamp NOT NULL, body text)")
        connection.exec_driver_sql("CREATE INDEX comments_parent ON comments (parent_id)")
        connection.execute(sa.text("INSERT INTO comments VALUES (:id, :parent, :at, 'c')"), [
            {"id": i, "parent": p, "at": (NOW - timedelta(days=400 if i in aged else 5))
             .strftime("%Y-%m-%d %H:%M:%S")} for i, p in parent.items()])
    settings = migrated(tmp_path, primary_url, archive_url, databases.backend,
                        one_policy("comments", "created_at"))

    def stays(row: int) -> bool:
        replies = [i for i, p in parent.items() if p == row and i != row]
        return row not in aged or any(stays(reply) for reply in replies)

    kept = {i for i in parent if stays(i)}
    assert "are not counted" in ok(run_cli("--settings", str(settings), "archive", "run",
                                           "--dry-run", *NOW_ARG))
    assert f"comments {len(parent) - len(kept)}" in ok(
        run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    with app_schema.engine_for(primary_url) as primary, primary.connect() as connection:
        assert set(connection.exec_driver_sql("SELECT id FROM comments").scalars()) == kept
    assert "archive verified" in ok(run_cli("--settings", str(settings), "archive", "verify"))


@pytest.mark.postgres
def test_a_postgresql_restore_gives_back_every_value_as_the_application_wrote_it(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A key ``GENERATED ALWAYS AS IDENTITY`` refused the restore's insert ("cannot insert a
    non-DEFAULT value"), and values came back through Python changed, though PostgreSQL
    calls them equal: ``interval '1 mon'`` as ``30 days``, ``150 hours`` as ``6 days
    06:00:00``, ``json`` respaced with a duplicate key lost, an array's lower bound reset.
    Every table's rows, as PostgreSQL prints them, are the same before and after."""
    primary_url, archive_url = databases.pair("identity")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            'CREATE TABLE "Tickets" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,'
            ' "Opened At" timestamptz NOT NULL, subject text NOT NULL, span interval,'
            ' meta json, slots int[], price money, ratio numeric, client inet,'
            ' tod timetz, during tstzrange, payload xml, flags bit varying(8),'
            ' subject_len int GENERATED ALWAYS AS (length(subject)) STORED)')
        connection.exec_driver_sql(
            "CREATE TABLE ticket_replies (id integer GENERATED BY DEFAULT AS IDENTITY"
            ' PRIMARY KEY, ticket_id bigint NOT NULL REFERENCES "Tickets" (id), body text)')
        connection.exec_driver_sql(
            'INSERT INTO "Tickets" ("Opened At", subject, span, meta, slots, price, ratio,'
            " client, tod, during, payload, flags)"
            " SELECT %(now)s::timestamptz - i * interval '100 days', 'subject ' || i,"
            " CASE WHEN mod(i, 2) = 0 THEN interval '1 mon 2 days 150 hours' END,"
            ' \'{"b": 1,   "a": [1, 2], "b": 2}\', \'[0:1]={7,8}\', i * 1.25,'
            " CASE WHEN i = 4 THEN 'NaN' ELSE 1.0 / 3 * i END, '10.0.0.1/24',"
            " '10:00+02', tstzrange(%(now)s::timestamptz, NULL), '<a n=\"1\"/>', B'1011'"
            " FROM generate_series(1, 8) i", {"now": NOW})
        connection.exec_driver_sql(
            "INSERT INTO ticket_replies (ticket_id, body) SELECT 1 + mod(i, 8), 'r'"
            " FROM generate_series(1, 16) i")
    printed = {"Tickets": 'SELECT t::text FROM "Tickets" t ORDER BY id',
               "ticket_replies": "SELECT t::text FROM ticket_replies t ORDER BY id"}

    def as_printed() -> dict[str, list[str]]:
        with app_schema.engine_for(primary_url) as primary, primary.connect() as connection:
            return {name: connection.exec_driver_sql(query).scalars().all()
                    for name, query in printed.items()}

    written = as_printed()
    settings = migrated(tmp_path, primary_url, archive_url, "postgres",
                        one_policy("Tickets", "Opened At", children='"auto"'))
    assert "Tickets 5, ticket_replies 10" in ok(
        run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    assert "Tickets 5, ticket_replies 10" in ok(
        run_cli("--settings", str(settings), "archive", "restore", "--run", "1", *NOW_ARG))
    assert as_printed() == written
    assert "archive verified" in ok(run_cli("--settings", str(settings), "archive", "verify"))


@pytest.mark.postgres
def test_a_role_without_the_privileges_a_run_needs_is_told_the_grant_before_anything_moves(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """An archiver's role that could read and lock but not delete committed each run's
    first batch to ARCHIVE, then failed on the delete with PostgreSQL's bare "permission
    denied". Now the run ends ``error`` before its first batch, naming the role, what it
    lacks on which table, and the GRANT that gives it; that GRANT is enough."""
    primary_url, archive_url = databases.pair("grants")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE posts (id integer PRIMARY KEY,"
                                   " at timestamptz NOT NULL)")
        connection.exec_driver_sql("CREATE TABLE likes (id integer PRIMARY KEY,"
                                   " post_id integer NOT NULL REFERENCES posts (id))")
        connection.execute(sa.text("INSERT INTO posts VALUES (:id, :at)"), [
            {"id": i, "at": NOW - timedelta(days=100 * i)} for i in range(1, 7)])
        connection.exec_driver_sql("INSERT INTO likes SELECT i, i FROM generate_series(1, 6) i")
    with primary_role(primary_url, archive_url, "SELECT ON posts, likes",
                      "UPDATE, DELETE ON posts", "UPDATE ON likes") as (role, as_role):
        settings = migrated(tmp_path, as_role, archive_url, "postgres",
                            one_policy("posts", "at", children='"auto"'))
        refused = run_cli("--settings", str(settings), "archive", "run", *NOW_ARG)
        assert refused.returncode == 1, refused.stdout
        grant = f"GRANT SELECT, UPDATE, DELETE ON likes TO {role}"
        assert (f"error: the role {role} lacks DELETE on likes in PRIMARY, which "
                f"archive runs need; nothing was done: {grant}") in refused.stdout
        with app_schema.engine_for(archive_url) as archive:
            assert rows_of(archive, ["posts", "likes"], archive=True) == {"posts": {},
                                                                          "likes": {}}
        with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
            connection.exec_driver_sql(grant)
        assert "posts 3, likes 3" in ok(
            run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
        restoring = run_cli("--settings", str(settings), "archive", "restore", "--run", "2")
        assert (f"lacks INSERT on posts; INSERT on likes in PRIMARY, which restore runs "
                f"need; nothing was done: GRANT SELECT, INSERT ON posts, likes TO {role}"
                ) in restoring.stdout, restoring.stdout


@contextmanager
def primary_role(primary_url: str, archive_url: str, *grants: str) -> Iterator[tuple[str, str]]:
    """A new login role holding ``grants`` in PRIMARY (each ``SELECT ON posts``, say), and
    PRIMARY's URL as that role; the role is dropped at exit."""
    role = f"role_{uuid.uuid4().hex[:8]}"
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        for grant in grants:
            connection.exec_driver_sql(f"GRANT {grant} TO {role}")
    try:
        yield role, sa.engine.make_url(primary_url).set(username=role).render_as_string(
            hide_password=False)
    finally:
        for url in (primary_url, archive_url):
            with app_schema.engine_for(url) as engine, engine.begin() as connection:
                connection.exec_driver_sql(f"DROP OWNED BY {role}")
        with app_schema.engine_for(archive_url) as engine, engine.begin() as connection:
            connection.exec_driver_sql(f"DROP ROLE {role}")


@pytest.mark.postgres
def test_an_erasure_whose_role_cannot_delete_in_primary_is_refused_before_anything_goes(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A role that may archive a policy's tables but not delete the subject's own row
    erased the subject's archived rows, then stopped on PRIMARY's bare "permission denied":
    half erased. Now the erasure is refused before either database changes, naming the
    GRANT; with it, the same command erases everything."""
    primary_url, archive_url = databases.pair("erase_grants")
    _authors_and_posts(primary_url)
    with primary_role(primary_url, archive_url, "SELECT, UPDATE, DELETE ON posts",
                      "SELECT ON authors") as (role, as_role):
        settings = migrated(tmp_path, as_role, archive_url, "postgres",
                            one_policy("posts", "at"))
        ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
        with app_schema.engine_for(primary_url) as primary, \
                app_schema.engine_for(archive_url) as archive:
            before = (rows_of(primary, ["authors", "posts"]),
                      rows_of(archive, ["posts"], archive=True))
            assert before[1]["posts"] and before[0]["posts"]  # both databases hold posts
            erase = ("--settings", str(settings), "archive", "erase", "--table", "authors",
                     "--key", "2")
            refused = run_cli(*erase)
            assert refused.returncode == 1, refused.stdout
            grant = f"GRANT DELETE ON authors TO {role}"
            assert (f"erasure refused, nothing changed: the role {role} lacks DELETE on "
                    f"authors in PRIMARY, which erasing authors 2 needs: {grant}"
                    ) in refused.stderr, (refused.stdout, refused.stderr)
            assert (rows_of(primary, ["authors", "posts"]),
                    rows_of(archive, ["posts"], archive=True)) == before
            with primary.begin() as connection:
                connection.exec_driver_sql(grant)
            ok(run_cli(*erase))
            left = rows_of(primary, ["authors", "posts"])
            assert list(left["authors"]) == [(1,)]
            assert all(row[1] == 1 for rows in (left["posts"], rows_of(
                archive, ["posts"], archive=True)["posts"]) for row in rows.values())


@pytest.mark.postgres
def test_tables_the_reports_role_may_not_read_are_not_served_nor_a_500(
        databases: DatabaseFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every page of a served table PRIMARY's role could not read (the application's
    authors, referenced by the archived posts) was a 500. Served by default, it is left out
    with a warning naming the GRANT; served when the role may read the columns not hidden;
    named in reports.tables, it stops startup; a grant revoked while serving is a 503
    saying the log has the grant."""
    primary_url, archive_url = databases.pair("read_grants")
    _authors_and_posts(primary_url)
    with primary_role(primary_url, archive_url, "SELECT, UPDATE, DELETE ON posts") as (
            role, as_role):
        settings = migrated(tmp_path, as_role, archive_url, "postgres",
                            one_policy("posts", "at"))

        @contextmanager
        def served(extra: str = "") -> Iterator[FlaskClient]:
            text = settings.read_text()
            settings.write_text(text + extra)
            try:
                service = build_service(load_settings(str(settings)))
            finally:
                settings.write_text(text)
            try:
                yield service.app.test_client()
            finally:
                service.engines.dispose()

        with caplog.at_level(logging.WARNING, logger="sediment.exposure"), served() as client:
            listed = [t["name"] for t in client.get("/api/v1/tables").get_json()["tables"]]
            assert listed == ["posts"]
            assert client.get("/api/v1/tables/authors").status_code == 404
            assert f"GRANT SELECT ON authors TO {role}" in caplog.text
        with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
            connection.exec_driver_sql(f"GRANT SELECT (id) ON authors TO {role}")
        hide_name = '\n[reports]\nhide_columns = ["authors.name"]\n'
        with served(hide_name) as client:  # a grant on the columns served will do
            assert [row["id"] for row in client.get("/api/v1/tables/authors").get_json()[
                "rows"]] == [1, 2]
            with app_schema.engine_for(primary_url) as primary, \
                    primary.begin() as connection:
                connection.exec_driver_sql(f"REVOKE SELECT ON posts FROM {role}")
            for path in ("/api/v1/tables/posts?source=primary", "/api/v1/tables/posts.csv"):
                refused = client.get(path)
                assert refused.status_code == 503, (path, refused.get_data(as_text=True))
                assert refused.get_json()["code"] == "database_refused"
        settings.write_text(settings.read_text() + '\n[reports]\ntables = ["authors"]\n')
        refused_start = run_cli("--settings", str(settings), "archive", "status")
        assert refused_start.returncode == 2, refused_start.stderr
        assert (f"reports.tables: PRIMARY's role {role} may not read authors (columns name): "
                f"GRANT SELECT ON authors TO {role}") in refused_start.stderr


@pytest.mark.postgres
def test_rows_row_level_security_hides_from_the_role_stop_runs_erasures_and_verify(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """An application's row-level security (one tenant per policy) let the role see one
    tenant's rows: the run moved those, said done, and verify found nothing aged left,
    while the other tenant's aged rows stayed in PRIMARY for good."""
    primary_url, archive_url = databases.pair("row_security")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE notes (id integer PRIMARY KEY, tenant text"
                                   " NOT NULL, at timestamptz NOT NULL)")
        connection.execute(sa.text("INSERT INTO notes VALUES (:id, :tenant, :at)"), [
            {"id": i, "tenant": ("acme", "globex")[i % 2], "at": NOW - timedelta(days=400)}
            for i in range(10)])
        connection.exec_driver_sql("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
        connection.exec_driver_sql("CREATE POLICY acme_only ON notes USING (tenant = 'acme')")
    with primary_role(primary_url, archive_url, "SELECT, UPDATE, DELETE ON notes") as (
            role, as_role), app_schema.engine_for(primary_url) as primary:
        settings = migrated(tmp_path, as_role, archive_url, "postgres",
                            one_policy("notes", "at"))
        hides = f"row-level security hides rows of notes in PRIMARY from the role {role}"
        fix = f"ALTER ROLE {role} BYPASSRLS, or connect as the tables' owner"
        refused = run_cli("--settings", str(settings), "archive", "run", *NOW_ARG)
        assert refused.returncode == 1, refused.stdout
        assert (f"{hides}, which archive runs would leave behind; nothing was done: {fix}"
                in refused.stdout), refused.stdout
        assert len(rows_of(primary, ["notes"])["notes"]) == 10
        verify = run_cli("--settings", str(settings), "archive", "verify")
        assert verify.returncode != 0 and f"FAIL  policy notes: {hides}" in verify.stdout
        erase = run_cli("--settings", str(settings), "archive", "erase", "--table", "notes",
                        "--key", "3")
        assert erase.returncode != 0 and f"{hides}, which an erasure would" in erase.stderr
        with primary.begin() as connection:
            connection.exec_driver_sql(f"ALTER ROLE {role} BYPASSRLS")
        assert "notes 10" in ok(run_cli("--settings", str(settings), "archive", "run",
                                        *NOW_ARG))
        assert "all checks passed" in ok(run_cli("--settings", str(settings), "archive",
                                                 "verify"))


@contextmanager
def _thirty_aged_notes(primary_url: str) -> Iterator[sa.Connection]:
    """PRIMARY's table ``notes`` with 30 rows a year old, in a transaction left open for
    the caller's own setup."""
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE notes (id integer PRIMARY KEY,"
                                   " at timestamptz NOT NULL)")
        connection.execute(sa.text("INSERT INTO notes VALUES (:id, :at)"), [
            {"id": i, "at": NOW - timedelta(days=400)} for i in range(30)])
        yield connection


@pytest.mark.postgres
def test_a_primary_that_ends_idle_transactions_still_archives(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A batch's PRIMARY transaction waits while ARCHIVE takes the copy. An application's
    database with ``idle_in_transaction_session_timeout`` shorter than that wait had every
    batch's connection ended before its delete, and the run retried without end."""
    primary_url, archive_url = databases.pair("idle_timeout")
    with _thirty_aged_notes(primary_url) as connection:
        connection.exec_driver_sql("ALTER DATABASE " + sa.engine.make_url(primary_url).database
                                   + " SET idle_in_transaction_session_timeout = '200ms'")
    settings = migrated(tmp_path, primary_url, archive_url, "postgres",
                        one_policy("notes", "at", batch_size="10"))
    with app_schema.engine_for(archive_url) as archive, archive.begin() as connection:
        connection.exec_driver_sql(  # each copy into the twin takes longer than 200ms
            "CREATE FUNCTION slow_copy() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$")
        connection.exec_driver_sql("CREATE TRIGGER slow_copy AFTER INSERT ON notes"
                                   " FOR EACH STATEMENT EXECUTE FUNCTION slow_copy()")
    moved = run_cli("--settings", str(settings), "archive", "run", *NOW_ARG, timeout=60)
    assert "notes 30" in ok(moved)
    assert "all checks passed" in ok(run_cli("--settings", str(settings), "archive", "verify"))


def _authors_and_posts(primary_url: str) -> None:
    """Two authors and a dozen posts, every third one aged for ``one_policy``."""
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE authors (id integer PRIMARY KEY, name text)")
        connection.exec_driver_sql("CREATE TABLE posts (id integer PRIMARY KEY, author_id"
                                   " integer NOT NULL REFERENCES authors (id),"
                                   " at timestamptz NOT NULL)")
        connection.exec_driver_sql("INSERT INTO authors VALUES (1, 'Ann'), (2, 'Bob')")
        connection.execute(sa.text("INSERT INTO posts VALUES (:id, :author, :at)"), [
            {"id": i, "author": 1 + i % 2, "at": NOW - timedelta(days=10 + 400 * (i % 3 == 0))}
            for i in range(1, 13)])


@pytest.mark.postgres
def test_names_with_percent_signs_and_sql_words_are_archived_and_restored(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """SQLAlchemy doubles ``%`` in names for psycopg2's interpolation, which COPY never
    does: a column called ``100%`` failed every batch ('column "100%%" ... does not
    exist'). Tables and columns named like SQL words, with quotes, spaces, ``%`` and a
    ``%(x)s`` that looks like a parameter go there and back."""
    primary_url, archive_url = databases.pair("percent")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            'CREATE TABLE "order" ("select" bigint PRIMARY KEY, "100%%" numeric,'
            ' "a""b" text, "when" timestamp NOT NULL)')
        connection.exec_driver_sql('CREATE INDEX ON "order" ("100%%")')
        connection.exec_driver_sql(
            'CREATE TABLE "order line 100%%" ("order" bigint REFERENCES "order" ("select"),'
            ' "line%%" int, "%%(x)s" text, PRIMARY KEY ("order", "line%%"))')
        connection.execute(sa.text("""INSERT INTO "order" VALUES (:id, :pct, :q, :at)"""), [
            {"id": i, "pct": i * 1.5, "q": f'q"{i}', "at": NOW - timedelta(days=100 * i)}
            for i in range(1, 9)])
        connection.exec_driver_sql('INSERT INTO "order line 100%%" SELECT 1 + i %% 8, i, \'x\''
                                   " FROM generate_series(1, 24) i")
    names = ["order", "order line 100%"]
    with app_schema.engine_for(primary_url) as primary:
        written = rows_of(primary, names)
    settings = migrated(tmp_path, primary_url, archive_url, "postgres",
                        one_policy("order", "when", children='"auto"'))
    assert "order 5, order line 100% 15" in ok(
        run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    assert "archive verified" in ok(run_cli("--settings", str(settings), "archive", "verify"))
    assert "order 5, order line 100% 15" in ok(
        run_cli("--settings", str(settings), "archive", "restore", "--run", "1", *NOW_ARG))
    with app_schema.engine_for(primary_url) as primary:
        assert rows_of(primary, names) == written


@pytest.mark.postgres
def test_a_type_archive_lacks_is_named_with_the_statement_that_makes_it(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A composite type (or an extension's) that ARCHIVE does not have: creating the twin
    failed on PostgreSQL's bare 'type "money_pair" does not exist'. The plan names the
    column and the statement, ``migrate`` and a run refuse with it, and once it is run in
    ARCHIVE the twin is created and rows are archived."""
    primary_url, archive_url = databases.pair("composite")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TYPE money_pair AS (amount numeric(12,2),"
                                   ' "Currency" text)')
        connection.exec_driver_sql("CREATE TABLE prices (id integer PRIMARY KEY,"
                                   " at timestamptz NOT NULL, price money_pair,"
                                   " history money_pair[])")
        connection.execute(sa.text("INSERT INTO prices VALUES (:id, :at, ROW(:id, 'EUR'),"
                                   " ARRAY[ROW(1, 'USD')::money_pair])"), [
            {"id": i, "at": NOW - timedelta(days=100 * i)} for i in range(1, 7)])
    settings = settings_file(tmp_path, primary_url, archive_url, "postgres",
                             policies=one_policy("prices", "at"))
    needed = ('ARCHIVE has no type money_pair, which prices.price has in PRIMARY: run in '
              'ARCHIVE: CREATE TYPE money_pair AS (amount numeric(12,2), "Currency" text); '
              "then run 'migrate' again")
    planned = run_cli("--settings", str(settings), "archive", "schema")
    assert planned.returncode == 1 and f"conflict: {needed}" in planned.stdout
    assert "money_pair[], which prices.history" in planned.stdout
    refused = run_cli("--settings", str(settings), "migrate")
    assert refused.returncode != 0 and needed in refused.stderr, refused.stderr
    with app_schema.engine_for(archive_url) as archive, archive.begin() as connection:
        connection.exec_driver_sql(needed.split("ARCHIVE: ")[1].split(";")[0])
    ok(run_cli("--settings", str(settings), "migrate"))
    assert "prices 3" in ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    assert "archive verified" in ok(run_cli("--settings", str(settings), "archive", "verify"))


@pytest.mark.sqlite
def test_verify_finds_keys_in_both_databases_under_an_applications_nocase_key(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """``archive verify`` merges both databases' keys in Python: PRIMARY listed a
    ``COLLATE NOCASE`` key case-folded ('a' < 'B'), Python and the twin by code point
    ('B' < 'a'), so a key in both databases was missed and verify said all was well."""
    primary_url, archive_url = databases.pair("nocase_verify")
    names = [f"{letter}{i}" for i, letter in enumerate("aBcDeFgHi" * 3)]
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE tags (name text COLLATE NOCASE PRIMARY KEY,"
                                   " made_at DATETIME NOT NULL)")
        connection.execute(sa.text("INSERT INTO tags VALUES (:name, :at)"), [
            {"name": name, "at": (NOW - timedelta(days=10 + 400 * (i % 2))).isoformat(" ")}
            for i, name in enumerate(names)])
    settings = migrated(tmp_path, primary_url, archive_url, "sqlite",
                        one_policy("tags", "made_at"))
    ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    assert "all checks passed" in ok(run_cli("--settings", str(settings), "archive", "verify"))
    with app_schema.engine_for(primary_url) as primary:
        live = sorted(rows_of(primary, ["tags"])["tags"])
    caught = [key[0] for key in live[::3]]  # as a batch killed between its commits leaves
    with app_schema.engine_for(archive_url) as archive, archive.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO tags (name, made_at, archived_at, archive_run_id)"
            " VALUES (:name, '2020-01-01 00:00:00', '2026-01-01 00:00:00.000000', 1)"),
            [{"name": name} for name in caught])
    found = run_cli("--settings", str(settings), "archive", "verify")
    assert found.returncode == 1, found.stdout
    assert f"tags: {len(caught)} keys of archived rows in PRIMARY again" in found.stdout


@pytest.mark.postgres
def test_a_postgresql_column_collation_stays_behind_when_archive_is_sqlite(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A twin on SQLite took PRIMARY's ``COLLATE "C"`` along, and ``migrate`` stopped on
    SQLite's 'no such collation sequence: C': a collation belongs to one engine."""
    primary_url = databases.pair("collated_to_sqlite")[0]
    archive_url = f"sqlite:///{tmp_path / 'archive.sqlite3'}"
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            'CREATE TABLE codes (code text COLLATE "C" PRIMARY KEY,'
            ' note varchar(20) COLLATE "en-x-icu", due date NOT NULL)')
        connection.execute(sa.text("INSERT INTO codes VALUES (:code, :note, :due)"), [
            {"code": code, "note": code.lower(), "due": (NOW - timedelta(days=days)).date()}
            for code, days in (("a", 900), ("B", 800), ("c", 5))])
    settings = migrated(tmp_path, primary_url, archive_url, "sqlite", one_policy("codes", "due"))
    ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    with app_schema.engine_for(archive_url) as archive, archive.connect() as connection:
        assert sorted(connection.exec_driver_sql("SELECT code, note FROM codes")) == [
            ("B", "b"), ("a", "a")]


def test_a_table_keyed_only_by_a_unique_index_is_archived_by_those_columns(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """Prisma's implicit many-to-many table ``_PostToTag`` has no primary key, only a unique
    index on ``("A", "B")``: a policy over ``Post`` with ``children = "auto"`` was refused
    for it. NOT NULL columns under a whole-table unique index identify a row as a key does;
    a partial unique index does not, and is passed over for them."""
    primary_url, archive_url = databases.pair("unique_key")
    statements = [
        'CREATE TABLE "Post" ("id" INTEGER NOT NULL PRIMARY KEY, "createdAt" TIMESTAMP NOT NULL)',
        'CREATE TABLE "_PostToTag" ("A" INTEGER NOT NULL REFERENCES "Post" ("id"),'
        ' "B" INTEGER NOT NULL, "note" TEXT NOT NULL)',
        'CREATE UNIQUE INDEX "_PostToTag_note" ON "_PostToTag" ("note") WHERE "B" > 0',
        'CREATE UNIQUE INDEX "_PostToTag_AB_unique" ON "_PostToTag" ("A", "B")',
    ]
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
        connection.execute(sa.text('INSERT INTO "Post" VALUES (:id, :at)'), [
            {"id": i, "at": (NOW - timedelta(days=400 if i % 2 else 10)).replace(tzinfo=None)}
            for i in range(1, 9)])
        connection.execute(sa.text('INSERT INTO "_PostToTag" VALUES (:a, :b, :note)'), [
            {"a": i, "b": b, "note": f"{i}-{b}"} for i in range(1, 9) for b in (1, 2)])
    settings = migrated(tmp_path, primary_url, archive_url, databases.backend,
                        one_policy("Post", "createdAt", children='"auto"'))
    ran = ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    assert "Post 4, _PostToTag 8" in ran
    assert "all checks passed" in ok(run_cli("--settings", str(settings), "archive", "verify"))
    with app_schema.engine_for(archive_url) as archive:
        assert sa.inspect(archive).get_pk_constraint("_PostToTag")["constrained_columns"] \
            == ["A", "B"]
        archived = rows_of(archive, ["_PostToTag"], archive=True)["_PostToTag"]
    assert sorted(archived) == [(a, b) for a in (1, 3, 5, 7) for b in (1, 2)]
    ok(run_cli("--settings", str(settings), "archive", "restore", "--run", "1"))
    with app_schema.engine_for(primary_url) as primary, primary.connect() as connection:
        assert connection.exec_driver_sql('SELECT count(*) FROM "_PostToTag"').scalar() == 16



@pytest.mark.postgres
def test_a_batch_whose_delete_always_times_out_ends_the_run_and_a_rerun_moves_it(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A batch's delete fails inside the next step of a pipelined run, whose retry starts
    the same batch again and so succeeded: each failure got a fresh retry budget. A delete
    always longer than the statement timeout (here a trigger; in an application, often a
    foreign key check over an unindexed referencing table) re-copied one batch for ever.
    The budget is now renewed only by a batch moved: the run ends ``error``, saying which
    setting to change, with nothing lost, and a re-run after the fix moves every row."""
    primary_url, archive_url = databases.pair("slow_delete")
    with _thirty_aged_notes(primary_url) as connection:
        connection.exec_driver_sql(
            "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$")
        connection.exec_driver_sql("CREATE TRIGGER slow_delete AFTER DELETE ON notes"
                                   " FOR EACH STATEMENT EXECUTE FUNCTION slow_delete()")
    with app_schema.engine_for(primary_url) as primary:
        written = rows_of(primary, ["notes"])
    settings = migrated(tmp_path, primary_url, archive_url, "postgres",
                        one_policy("notes", "at", batch_size="10"))
    settings.write_text(settings.read_text().replace(
        'primary_schema = "existing"', 'primary_schema = "existing"\nstatement_timeout_ms = 300')
        + '\n[archive]\nretry_backoff = "0.1s"\n')

    failed = run_cli("--settings", str(settings), "archive", "run", *NOW_ARG, timeout=60)
    assert failed.returncode != 0
    assert ("statement timeout: a batch's statement ran longer than"
            " database.statement_timeout_ms (300 ms)") in failed.stdout
    assert "nothing is lost" in failed.stdout.splitlines()[-1]
    with app_schema.engine_for(primary_url) as primary:
        assert rows_of(primary, ["notes"]) == written
        with primary.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER slow_delete ON notes")
    assert "notes 30" in ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    assert "all checks passed" in ok(run_cli("--settings", str(settings), "archive", "verify"))
    with app_schema.engine_for(archive_url) as archive:
        assert rows_of(archive, ["notes"], archive=True) == written


@pytest.mark.postgres
def test_a_read_only_database_stops_the_run_naming_it_and_nothing_moves(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A PRIMARY that is a hot standby, or whose sessions default to read-only, failed
    every run with "cannot execute SELECT FOR UPDATE in a read-only transaction"; a
    read-only ARCHIVE was reported as "ARCHIVE unreachable". Each now names the database
    and the setting, and a run after the fix moves every row."""
    primary_url, archive_url = databases.pair("read_only")
    with _thirty_aged_notes(primary_url):
        pass
    with app_schema.engine_for(primary_url) as primary:
        written = rows_of(primary, ["notes"])
    settings = migrated(tmp_path, primary_url, archive_url, "postgres",
                        one_policy("notes", "at", batch_size="10"))

    def read_only(url: str, on: bool) -> None:
        name = sa.engine.make_url(url).database
        with admin_engine().connect() as connection:  # not the database made read-only
            connection.exec_driver_sql(
                f"ALTER DATABASE {name} SET default_transaction_read_only = on" if on
                else f"ALTER DATABASE {name} RESET default_transaction_read_only")

    for url, database in ((primary_url, "PRIMARY"), (archive_url, "ARCHIVE")):
        read_only(url, True)
        failed = run_cli("--settings", str(settings), "archive", "run", *NOW_ARG)
        read_only(url, False)
        assert failed.returncode != 0
        error = next(line for line in failed.stdout.splitlines() if "error: " in line)
        assert f"error: {database} is read-only" in error, failed.stdout
        assert (f"it is a hot standby, or its sessions default to read-only "
                f"(default_transaction_read_only = on); point database.{database.lower()}_url "
                "at the writable server") in error
        assert "unreachable" not in failed.stdout
        with app_schema.engine_for(primary_url) as primary:
            assert rows_of(primary, ["notes"]) == written
    assert "notes 30" in ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))


def _archive_then_reuse_keys(primary_url: str, archive_url: str, backend: str,
                             folder: Path) -> None:
    """Archive 30 notes, then give PRIMARY a new row under an archived key, and the archived
    row of another key back as it was: the first is refused with nothing overwritten, the
    second archived again with the ledger still balanced."""
    declared, zone = ("timestamptz", "+00:00") if backend == "postgres" else ("DATETIME", "")

    def written(key: int, body: str) -> dict[str, object]:
        at = (NOW - timedelta(days=400, minutes=key)).strftime("%Y-%m-%d %H:%M:%S") + zone
        return {"id": key, "body": body, "at": at}

    insert = sa.text("INSERT INTO notes (id, body, at) VALUES (:id, :body, :at)")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE notes (id integer PRIMARY KEY,"
                                   f" body text NOT NULL, at {declared} NOT NULL)")
        connection.execute(insert, [written(key, f"note {key}") for key in range(1, 31)])
    settings = migrated(folder, primary_url, archive_url, backend,
                        one_policy("notes", "at", batch_size="10"))
    assert "notes 30" in ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    with app_schema.engine_for(archive_url) as archive:
        archived = rows_of(archive, ["notes"], archive=True)

    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.execute(insert, [written(5, "a new row under key 5"),
                                    written(31, "a new row")])
    refused = run_cli("--settings", str(settings), "archive", "run", *NOW_ARG)
    assert refused.returncode == 1, refused.stdout
    assert ("error: notes: PRIMARY reused the keys of archived rows for new rows: 5 "
            "(archived by run 1) (ARCHIVE holds other values under them). Nothing was "
            "overwritten and the batch was rolled back") in refused.stdout, refused.stdout
    with app_schema.engine_for(archive_url) as archive:
        assert rows_of(archive, ["notes"], archive=True) == archived  # it was overwritten
    with app_schema.engine_for(primary_url) as primary:
        assert set(rows_of(primary, ["notes"])["notes"]) == {(5,), (31,)}
    verified = run_cli("--settings", str(settings), "archive", "verify")
    # Not "run 'archive run' to finish moving them": no run moves it, nor names it unaged.
    assert ("notes: 1 key of archived rows in PRIMARY again, e.g. [5]: PRIMARY reused them "
            "for new rows (give those rows other keys; 'archive run' and 'archive erase' "
            "refuse them until then)") in verified.stdout

    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("UPDATE notes SET id = 32 WHERE id = 5")
        connection.execute(insert, [written(7, "note 7")])  # as a backup had it
    again = ok(run_cli("--settings", str(settings), "archive", "run", *NOW_ARG))
    assert "notes 3" in again, again
    assert "all checks passed" in ok(run_cli("--settings", str(settings), "archive", "verify"))
    with app_schema.engine_for(archive_url) as archive:
        now_archived = rows_of(archive, ["notes"], archive=True)["notes"]
    assert now_archived[(7,)] == archived["notes"][(7,)]
    assert now_archived[(5,)] == archived["notes"][(5,)]
    assert len(now_archived) == 32


def test_a_key_primary_reused_for_a_new_row_never_overwrites_the_archived_row(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """The batch's upsert overwrote any ARCHIVE row under its keys, as it does a copy an
    interrupted run left: a row archived for good was replaced by PRIMARY's new row under
    its key (a SQLite rowid table after its newest rows left, a sequence reset) and lost,
    and the run said ``done``. PostgreSQL here takes the COPY path, SQLite the ATTACH one."""
    _archive_then_reuse_keys(*databases.pair("reused_key"), databases.backend, tmp_path)


@pytest.mark.postgres
def test_a_reused_key_is_refused_between_engines_too(databases: DatabaseFactory,
                                                     tmp_path: Path) -> None:
    """The row-by-row path (a SQLite application's database, a PostgreSQL ARCHIVE)."""
    _archive_then_reuse_keys(f"sqlite:///{tmp_path / 'app.sqlite3'}",
                             databases.pair("reused_key_mixed")[1], "sqlite", tmp_path)


@pytest.mark.postgres
def test_a_sqlite_timestamp_with_a_zone_into_postgresql_names_the_column(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """SQLite keeps ``'... +00:00'`` in a DATETIME column, which a PostgreSQL ARCHIVE's
    ``timestamp without time zone`` keeps without its zone: every run failed verification,
    told to "find what else writes to ARCHIVE"."""
    archive_url = databases.pair("zoned_mixed")[1]
    primary_url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE notes (id integer PRIMARY KEY,"
                                   " at DATETIME NOT NULL)")
        connection.exec_driver_sql("INSERT INTO notes VALUES (1, '2024-01-01 00:00:00'),"
                                   " (2, '2024-01-02 00:00:00+00:00')")
    settings = migrated(tmp_path, primary_url, archive_url, "sqlite", one_policy("notes", "at"))
    failed = run_cli("--settings", str(settings), "archive", "run", *NOW_ARG)
    assert failed.returncode == 1
    assert ("Nothing was deleted from PRIMARY; notes.at of key 2 holds a timestamp with a "
            "time zone in PRIMARY, which ARCHIVE's column keeps without one: store that "
            "column's values zone-less, or keep ARCHIVE on PRIMARY's engine, then re-run"
            ) in failed.stdout, failed.stdout
    with app_schema.engine_for(primary_url) as primary:
        assert set(rows_of(primary, ["notes"])["notes"]) == {(1,), (2,)}


@pytest.mark.postgres
def test_tables_that_reference_each_other_archive_and_restore_or_are_refused(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A team references its captain among its players: no order of deletes or inserts
    satisfies that key statement by statement, and a DEFERRABLE (initially immediate) one
    failed every batch with PRIMARY's foreign key violation, each run copying the batch
    again, and every erasure of a team. Sediment defers it in its own transactions; a NOT
    DEFERRABLE one is refused up front, naming the constraint and the ALTER that defers
    it."""
    primary_url, archive_url = databases.pair("cycle")
    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE teams (id integer PRIMARY KEY, made_at timestamptz NOT NULL,"
            " captain_id integer);"
            " CREATE TABLE players (id integer PRIMARY KEY,"
            " team_id integer NOT NULL REFERENCES teams (id));"
            " ALTER TABLE teams ADD CONSTRAINT teams_captain FOREIGN KEY (captain_id)"
            " REFERENCES players (id) DEFERRABLE INITIALLY IMMEDIATE;"
            " SET CONSTRAINTS ALL DEFERRED")
        connection.execute(sa.text("INSERT INTO teams VALUES (:id, :at, :id)"), [
            {"id": team, "at": NOW - timedelta(days=400 - 380 * (team > 3))}
            for team in range(1, 6)])
        connection.exec_driver_sql("INSERT INTO players SELECT g, g FROM generate_series(1, 5) g")
    settings = migrated(tmp_path, primary_url, archive_url, "postgres",
                        one_policy("teams", "made_at", children='"auto"'))
    assert "teams 3, players 3" in ok(run_cli("--settings", str(settings), "archive", "run",
                                              *NOW_ARG))
    with app_schema.engine_for(primary_url) as primary:
        assert sorted(rows_of(primary, ["teams"])["teams"]) == [(4,), (5,)]
    assert "teams 1, players 1" in ok(run_cli("--settings", str(settings), "archive",
                                              "restore", "--table", "teams", "--key", "2",
                                              *NOW_ARG))
    assert "all checks passed" in ok(run_cli("--settings", str(settings), "archive", "verify"))
    erased = ok(run_cli("--settings", str(settings), "archive", "erase", "--table", "teams",
                        "--key", "4"))
    assert "PRIMARY  teams                    deleted 1 row" in erased, erased
    with app_schema.engine_for(primary_url) as primary:
        assert sorted(rows_of(primary, ["players"])["players"]) == [(2,), (5,)]

    with app_schema.engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE teams ALTER CONSTRAINT teams_captain"
                                   " NOT DEFERRABLE")
    refused = run_cli("--settings", str(settings), "archive", "run", "--dry-run", *NOW_ARG)
    assert refused.returncode == 2
    assert ("settings: policy.teams.children: teams's foreign key teams_captain references "
            "players, which batches delete before teams (children first), and it is NOT "
            "DEFERRABLE, so no batch can delete or restore both: make it deferrable in "
            "PRIMARY (ALTER TABLE teams ALTER CONSTRAINT teams_captain DEFERRABLE)"
            ) in refused.stderr, refused.stderr
    # Erasing a team needs no policy, and fails: the run is ledgered as failed (it stayed
    # 'running'), with no key of the subject, and the command says what happened.
    bare = settings_file(tmp_path, primary_url, archive_url, "postgres", policies="")
    failed = run_cli("--settings", str(bare), "archive", "erase", "--table", "teams",
                     "--key", "5")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        'sediment: erasure failed: update or delete on table "players" violates foreign key '
        'constraint "teams_captain" on table "teams" (Key (id)=(5) is still referenced from '
        "table \"teams\"); ARCHIVE's rows of the subject are erased, PRIMARY's are not: "
        "resolve the cause, then erase the same subject again, which finishes what is left")
    status = ok(run_cli("--settings", str(bare), "archive", "status"))
    assert re.search(r"teams +erase +error", status), status
    assert 'constraint "teams_captain" on table "teams"; ARCHIVE' in status
    assert "(5)" not in status
