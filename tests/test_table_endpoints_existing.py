"""Table endpoints over an application's database nobody here designed (tests/app_schema.py):
composite and uuid keys, an enum, a domain, numeric money, jsonb, arrays, xml, a naive
timestamp, partitions; two archival policies; a batch left in both databases.

Every page of every archived table is walked through its cursors, for each source, and
compared with the rows read straight from both databases; then filters and sorts over the
real-world types, hostile inputs, and the hiding settings.
"""

from __future__ import annotations

import csv
import io
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from reporting.schema_change import RELOAD_INTERVAL_SECONDS
from sediment.core.instants import parse_instant
from sediment.core.settings import load_settings
from sediment.service import build_service
from tests.app_schema import (
    ARCHIVED,
    NOW,
    AppDatabase,
    engine_for,
    one_policy,
    rows_of,
    settings_file,
    table_list,
)
from tests.support import DatabaseFactory, run_cli, walk_pages

Key = tuple[Any, ...]


def ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return str(result.stdout)


@pytest.fixture
def served(app_db: AppDatabase) -> Iterator[tuple[AppDatabase, Flask]]:
    """Both policies run; the invoices run's third batch fails at its deletes, so rows of
    the invoices and their children are in both databases, inside a pending window."""
    ok(app_db.cli("migrate"))
    ok(app_db.cli("archive", "run", "--policy", POLICY_OF[app_db.backend],
                  "--now", NOW.isoformat()))
    settings = load_settings(str(app_db.settings(extra="[archive]\nretry_attempts = 1\n")))
    service = build_service(settings)
    deletes = {"n": 0}

    def fail_third_delete(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE") and "invoices" in statement:
            deletes["n"] += 1
            if deletes["n"] == 3:
                raise sa.exc.OperationalError(statement, parameters, RuntimeError("injected"))

    sa.event.listen(service.engines.primary, "before_cursor_execute", fail_third_delete)
    try:
        assert service.archiver.run("invoices", NOW).status == "error"
    finally:
        sa.event.remove(service.engines.primary, "before_cursor_execute", fail_third_delete)
    root = ARCHIVED[app_db.backend][0]
    both = rows_of(app_db.primary, [root])[root].keys() & rows_of(app_db.archive, [root])[root]
    assert both, "the fixture must leave invoices in both databases"
    try:
        yield app_db, service.app
    finally:
        service.engines.dispose()


POLICY_OF = {"postgres": "calls", "sqlite": "sessions"}


@contextmanager
def policy_served(folder: Path, primary_url: str, archive_url: str, backend: str,
                  policies: str, *, archive: bool = True) -> Iterator[FlaskClient]:
    """A test client of the service over PRIMARY's own tables and ``policies``, through the
    real CLI: ARCHIVE migrated and, with ``archive``, every policy run once at ``NOW``."""
    settings = settings_file(folder, primary_url, archive_url, backend, policies=policies)
    ok(run_cli("--settings", str(settings), "migrate"))
    if archive:
        ok(run_cli("--settings", str(settings), "archive", "run", "--now", NOW.isoformat()))
    service = build_service(load_settings(str(settings)))
    try:
        yield service.app.test_client()
    finally:
        service.engines.dispose()


def walk(client: FlaskClient, table: str, query: str = "", limit: int = 50) -> list[dict[str, Any]]:
    return walk_pages(client, f"/api/v1/tables/{table}", query, limit)


def walks_in_code_point_order(client: FlaskClient, table: str, key: str, keys: list[str],
                              columns: tuple[str, ...]) -> None:
    """Merged walks sorted by each of ``columns``, both ways, hold each of ``keys`` once, in
    Python's order of (sort value, key): code point order, whatever the collation."""
    for sort in (*columns, *(f"-{column}" for column in columns)):
        rows = walk(client, table, f"sort={sort}", limit=4)
        assert sorted(row[key] for row in rows) == sorted(keys), sort
        order = [(row[sort.lstrip("-")], row[key]) for row in rows]
        assert order == sorted(order, reverse=sort.startswith("-")), sort


def api_key(row: dict[str, Any], columns: dict[str, str], key: list[str]) -> Key:
    """A row's key from the API, as tests/app_schema.rows_of gives it."""
    values = []
    for name in key:
        value = row[name]
        if columns[name] == "datetime":
            value = parse_instant(value)
        values.append(value)
    return tuple(values)


def reference_keys(app_db: AppDatabase, table: str, source: str) -> list[Key]:
    live = set(rows_of(app_db.primary, [table])[table]) if source != "archive" else set()
    kept = set(rows_of(app_db.archive, [table])[table]) if source != "primary" else set()
    return sorted(live | kept, key=_sortable)


def _sortable(key: Key) -> Key:
    return tuple(uuid.UUID(v) if _is_uuid(v) else v for v in key)


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return isinstance(value, str) and len(value) == 36


def column_names(engine: sa.Engine, table: str) -> list[str]:
    schema, _, name = table.rpartition(".")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Did not recognize type", sa.exc.SAWarning)
        return [c.name for c in sa.Table(name, sa.MetaData(), schema=schema or None,
                                         autoload_with=engine).columns]


def catalog(client: FlaskClient) -> dict[str, dict[str, Any]]:
    return {table["name"]: table for table in client.get("/api/v1/tables").get_json()["tables"]}


def test_every_archived_table_pages_over_live_and_archived_rows(
        served: tuple[AppDatabase, Flask]) -> None:
    app_db, app = served
    client = app.test_client()
    tables = catalog(client)
    assert set(ARCHIVED[app_db.backend]) <= set(tables)
    tenants = "billing.tenants" if app_db.backend == "postgres" else "tenants"
    assert tables[tenants]["sources"] == ["primary"]  # referenced, not archived
    for name in ARCHIVED[app_db.backend]:
        entry = tables[name]
        columns = {c["name"]: c["type"] for c in entry["columns"]}
        for source in ("primary", "archive", "all"):
            got = [api_key(row, columns, entry["key"]) for row in
                   walk(client, name, f"source={source}")]
            assert got == reference_keys(app_db, name, source), (name, source)
            count = client.get(f"/api/v1/tables/{name}?source={source}&count=exact")
            assert count.get_json()["count"]["value"] == len(got), (name, source)


def test_values_of_real_world_types_arrive_as_stored(served: tuple[AppDatabase, Flask]) -> None:
    app_db, app = served
    root = ARCHIVED[app_db.backend][0]
    rows = walk(app.test_client(), root, "source=all", limit=1000)
    stored = {**rows_of(app_db.archive, [root])[root], **rows_of(app_db.primary, [root])[root]}
    names = column_names(app_db.primary, root)
    for row in rows:
        expected = dict(zip(names, stored[(row["tenant_id"], row["invoice_no"])], strict=True))
        assert row["memo"] == expected["memo"]
        assert row["status"] == expected["status"]
        if app_db.backend == "postgres":
            assert parse_instant(row["issued_at"]) == expected["issued_at"].replace(tzinfo=UTC)
            assert (None if row["amount"] is None else Decimal(row["amount"])) == \
                expected["amount"]
            assert (row["doc"] is None) == (expected["doc"] is None)
        else:
            assert row["issued_at"] == expected["issued_at"]


def filtered(app_db: AppDatabase, table: str, keep: Any) -> list[Key]:
    """The keys of both databases' rows (PRIMARY's copy winning) that ``keep`` accepts."""
    names = column_names(app_db.primary, table)
    rows = {**rows_of(app_db.archive, [table])[table], **rows_of(app_db.primary, [table])[table]}
    return [key for key, values in rows.items()
            if keep(dict(zip(names, values, strict=True)))]


def test_filters_and_sorts_over_real_world_types(served: tuple[AppDatabase, Flask]) -> None:
    app_db, app = served
    client = app.test_client()
    root = ARCHIVED[app_db.backend][0]
    entry = catalog(client)[root]
    columns = {c["name"]: c["type"] for c in entry["columns"]}
    postgres = app_db.backend == "postgres"
    cutoff = datetime(2025, 3, 1)
    cases: list[tuple[str, Any]] = [
        ("status[in]=paid,void", lambda r: r["status"] in ("paid", "void")),
        ("memo[isnull]=true", lambda r: r["memo"] is None),
        ("memo[like]=%25line%25", lambda r: r["memo"] is not None and "line" in r["memo"]),
        ("memo[ilike]=PLAIN", lambda r: r["memo"] is not None and r["memo"].lower() == "plain"),
        ("invoice_no[gte]=200&status[ne]=open",
         lambda r: r["invoice_no"] >= 200 and r["status"] != "open"),
    ]
    if postgres:
        cases += [
            (f"issued_at[lt]={cutoff.isoformat()}Z", lambda r: r["issued_at"] < cutoff),
            ("amount[isnull]=true", lambda r: r["amount"] is None),
            ("amount[gt]=100.5", lambda r: r["amount"] is not None and r["amount"] > 100.5),
            (f"tenant_id={quote(str(uuid.uuid5(uuid.NAMESPACE_DNS, 'acme')))}",
             lambda r: r["tenant_id"] == str(uuid.uuid5(uuid.NAMESPACE_DNS, "acme"))),
        ]
    for query, keep in cases:
        got = sorted(api_key(row, columns, entry["key"])
                     for row in walk(client, root, query, limit=40))
        assert got == sorted(filtered(app_db, root, keep)), query
    # A sort on an indexed column, newest first, resumes across pages in the same order.
    by_issue = walk(client, root, "sort=-issued_at", limit=17)
    assert [r["issued_at"] for r in by_issue] == sorted(
        (r["issued_at"] for r in by_issue), key=_instant, reverse=True)
    assert len(by_issue) == len(reference_keys(app_db, root, "all"))


def _instant(text: str) -> Any:
    return parse_instant(text) if "T" in text else text


def test_the_csv_download_holds_every_row(served: tuple[AppDatabase, Flask]) -> None:
    app_db, app = served
    client = app.test_client()
    for name in ARCHIVED[app_db.backend]:
        for source in ("primary", "all"):
            response = client.get(f"/api/v1/tables/{name}.csv?source={source}")
            assert response.status_code == 200, response.get_json()
            lines = response.get_data(as_text=True)
            total = len(reference_keys(app_db, name, source))
            assert response.headers["X-Row-Count"] == str(total)
            assert len(list(csv.reader(io.StringIO(lines)))) == total + 1, (name, source)


HOSTILE = [
    ("/api/v1/tables/no_such_table", 404, "unknown_table"),
    ("/api/v1/tables/archive_runs", 404, "unknown_table"),
    ("/api/v1/tables/{root}?nope=1", 400, "unknown_parameter"),
    ("/api/v1/tables/{root}?invoice_no[like]=1%25", 400, "unknown_operator"),
    ("/api/v1/tables/{root}?invoice_no=1 OR 1=1", 400, "invalid_value"),
    ("/api/v1/tables/{root}?sort=memo", 400, "invalid_sort"),
    ("/api/v1/tables/{root}?columns=memo,nope", 400, "invalid_value"),
    ("/api/v1/tables/{root}?invoice_no[in]=" + ",".join(["1"] * 1001), 400, "invalid_value"),
    ("/api/v1/tables/{root}?memo[isnull]=maybe", 400, "invalid_value"),
    ("/api/v1/tables/{root}?source=elsewhere", 400, "invalid_source"),
    ("/api/v1/tables/{root}?cursor=abc", 400, "invalid_cursor"),
]


def test_hostile_inputs_are_4xx_problems_and_change_nothing(
        served: tuple[AppDatabase, Flask]) -> None:
    app_db, app = served
    client = app.test_client()
    root = ARCHIVED[app_db.backend][0]
    names = ARCHIVED[app_db.backend]
    before = (rows_of(app_db.primary, names), rows_of(app_db.archive, names),
              table_list(app_db.primary), table_list(app_db.archive))
    hostile = [*HOSTILE]
    if app_db.backend == "postgres":  # an enum (on SQLite, text) and a uuid
        hostile += [("/api/v1/tables/{root}?status[gt]=paid", 400, "unknown_operator"),
                    ("/api/v1/tables/{root}?tenant_id[like]=a%25", 400, "unknown_operator"),
                    ("/api/v1/tables/{root}?tenant_id=not-a-uuid", 400, "invalid_value"),
                    ("/api/v1/tables/{root}?status=unpaid", 400, "invalid_value"),
                    ("/api/v1/tables/{root}?status=paid'%3B DROP TABLE billing.invoices%3B--",
                     400, "invalid_value")]
    for url, status, code in hostile:
        response = client.get(url.format(root=root))
        assert response.status_code == status, (url, response.get_json())
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == code, url
    # A string filter holding SQL is a value like any other: it matches nothing.
    injected = client.get(f"/api/v1/tables/{root}?memo=x' OR '1'='1")
    assert injected.status_code == 200 and injected.get_json()["rows"] == []
    # A cursor of one table is refused by another, even with the same key shape.
    child = ARCHIVED[app_db.backend][1]
    token = client.get(f"/api/v1/tables/{child}?limit=1").get_json()["page"]["next_cursor"]
    swapped = client.get(f"/api/v1/tables/{root}?limit=1&cursor={token}")
    assert swapped.status_code == 400 and swapped.get_json()["code"] == "invalid_cursor"
    after = (rows_of(app_db.primary, names), rows_of(app_db.archive, names),
             table_list(app_db.primary), table_list(app_db.archive))
    assert after == before


def test_hidden_tables_and_columns_are_never_served(app_db: AppDatabase, tmp_path: Path) -> None:
    ok(app_db.cli("migrate"))
    root, child = ARCHIVED[app_db.backend][:2]
    settings = load_settings(str(app_db.settings(
        extra=f'[reports]\nhide_tables = ["{child}"]\nhide_columns = ["{root}.memo"]\n')))
    service = build_service(settings)
    try:
        client = service.app.test_client()
        assert child not in catalog(client)
        hidden = client.get(f"/api/v1/tables/{child}")
        assert hidden.status_code == 404 and child not in hidden.get_data(as_text=True).split(
            "there is no table")[0]
        rows = client.get(f"/api/v1/tables/{root}?limit=5").get_json()["rows"]
        assert rows and all("memo" not in row for row in rows)
        assert "memo" not in client.get(f"/api/v1/tables/{root}.csv").get_data(
            as_text=True).splitlines()[0].split(",")
        for url in (f"/api/v1/tables/{root}?memo=plain", f"/api/v1/tables/{root}?columns=memo",
                    f"/api/v1/tables/{root}?memo[isnull]=true", f"/api/v1/tables/{root}?sort=memo"):
            assert client.get(url).status_code == 400, url
        document = client.get("/api/v1/openapi.json").get_json()
        assert f"/api/v1/tables/{child}" not in document["paths"]
        assert "memo" not in str(document["paths"][f"/api/v1/tables/{root}"])
    finally:
        service.engines.dispose()


@pytest.mark.parametrize(("extra", "key"), [
    ('tables = ["no_such_table"]', "reports.tables"),
    ('hide_tables = ["no_such_table"]', "reports.hide_tables"),
    ('hide_columns = ["{root}.no_such_column"]', "reports.hide_columns"),
    ('hide_columns = ["{root}.invoice_no"]', "reports.hide_columns"),
    ('hide_columns = ["memo"]', "reports.hide_columns"),
])
def test_a_bad_exposure_setting_stops_startup_naming_the_key(
        app_db: AppDatabase, extra: str, key: str) -> None:
    root = ARCHIVED[app_db.backend][0]
    path = app_db.settings(extra="[reports]\n" + extra.format(root=root) + "\n")
    result = app_db.cli("archive", "status", settings=path)
    assert result.returncode != 0
    assert key in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.postgres
def test_a_merged_sort_on_text_follows_code_points_whatever_the_collation(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A column collated en-x-icu sorts 'a' < 'B' in each database; merged in Python, where
    'B' < 'a', the two streams would interleave wrongly and pages would skip rows. Merged
    requests compare text by code point in SQL too."""
    primary_url, archive_url = databases.pair("collated")
    names = ["a", "B", "b", "Á", "_x", "Z", "ä", "A", "z", "0", "é", "E"]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            'CREATE TABLE people (id integer PRIMARY KEY, name text COLLATE "en-x-icu" '
            "NOT NULL, seen_at timestamptz NOT NULL)")
        connection.exec_driver_sql("CREATE INDEX people_name ON people (name)")
        connection.execute(sa.text(
            "INSERT INTO people VALUES (:id, :name, :seen_at)"),
            [{"id": i, "name": f"{name}{i}", "seen_at": NOW - timedelta(days=10 + 400 * (i % 2))}
             for i, name in enumerate(names * 3)])
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("people", "seen_at")) as client:
        for sort in ("name", "-name"):
            got = [row["name"] for row in walk(client, "people", f"sort={sort}", limit=4)]
            want = sorted((f"{name}{i}" for i, name in enumerate(names * 3)),
                          reverse=sort.startswith("-"))
            assert got == want, sort
        archived = walk(client, "people", "source=archive", limit=100)
        assert 0 < len(archived) < len(names * 3)  # both databases hold some


@pytest.mark.postgres
def test_an_applications_case_insensitive_collation_is_archived_filtered_and_walked(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A key and a column under the application's own nondeterministic ICU collation:
    ``migrate`` stopped on 'collation "ci" for encoding "UTF8" does not exist' (ARCHIVE had
    no such collation), and a ``like`` or ``ilike`` filter was a 500 (PostgreSQL refuses
    LIKE under such a collation)."""
    primary_url, archive_url = databases.pair("ci_collation")
    emails = [f"{'User' if i % 2 else 'user'}{i}@example.org" for i in range(30)]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2',"
            " deterministic = false)")
        connection.exec_driver_sql(
            "CREATE TABLE users (email text COLLATE ci PRIMARY KEY, nick text COLLATE ci"
            " NOT NULL, seen_at timestamptz NOT NULL)")
        connection.exec_driver_sql("CREATE INDEX users_nick ON users (nick)")
        connection.execute(sa.text("INSERT INTO users VALUES (:email, :nick, :seen_at)"), [
            {"email": email, "nick": ("Nick" if i % 3 else "nick") + str(i % 4),
             "seen_at": NOW - timedelta(days=10 + 400 * (i % 2))}
            for i, email in enumerate(emails)])
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("users", "seen_at")) as client:
        for sort in ("email", "-email", "nick", "-nick"):
            rows = walk(client, "users", f"sort={sort}", limit=4)
            assert sorted(row["email"] for row in rows) == sorted(emails), sort
        archived = walk(client, "users", "source=archive", limit=100)
        assert 0 < len(archived) < len(emails)  # both databases hold some
        for source in ("primary", "archive", "all"):
            held = walk(client, "users", f"source={source}", limit=100)
            for query, keep in (("nick[like]=Nick1", lambda nick: nick == "Nick1"),
                                ("nick[ilike]=NICK1", lambda nick: nick.lower() == "nick1"),
                                ("nick=NICK1", lambda nick: nick.lower() == "nick1")):
                got = walk(client, "users", f"source={source}&{query}", limit=100)
                assert sorted(row["email"] for row in got) == sorted(
                    row["email"] for row in held if keep(row["nick"])), (source, query)
    with engine_for(archive_url) as archive, archive.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT collisdeterministic FROM pg_collation WHERE collname = 'ci'").scalar() \
            is False
    assert "all checks passed" in ok(run_cli("--settings", str(next(tmp_path.glob(
        "settings-*.toml"))), "archive", "verify"))


@pytest.mark.postgres
def test_citext_and_hstore_columns_are_named_for_archive_then_merged_in_code_point_order(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """``citext`` and ``hstore``, which SQLAlchemy knows but extensions make: ``migrate``
    stopped on a bare 'type "citext" does not exist' where ARCHIVE lacked them. And citext
    compares case-folded whatever the collation, so merged pages over a citext key or sort
    column repeated some rows and skipped others."""
    primary_url, archive_url = databases.pair("citext")
    handles = [f"{'User' if i % 2 else 'user'}{i}" for i in range(30)]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE EXTENSION citext")
        connection.exec_driver_sql("CREATE EXTENSION hstore")
        connection.exec_driver_sql(
            "CREATE TABLE handles (handle citext PRIMARY KEY, nick citext NOT NULL,"
            " attrs hstore, seen_at timestamptz NOT NULL)")
        connection.exec_driver_sql("CREATE INDEX handles_nick ON handles (nick)")
        connection.execute(sa.text(
            "INSERT INTO handles VALUES (:handle, :nick, hstore('k', :handle), :seen_at)"), [
            {"handle": handle, "nick": ("Nick" if i % 3 else "nick") + str(i % 4),
             "seen_at": NOW - timedelta(days=10 + 400 * (i % 3 == 0))}
            for i, handle in enumerate(handles)])
    policy = one_policy("handles", "seen_at")
    planned = run_cli("--settings", str(settings_file(
        tmp_path, primary_url, archive_url, "postgres", policies=policy)), "archive", "schema")
    assert planned.returncode == 1
    for column, extension in (("handle", "citext"), ("attrs", "hstore")):
        assert (f"ARCHIVE has no type {extension}, which handles.{column} has in PRIMARY: run "
                f"in ARCHIVE: CREATE EXTENSION {extension};") in planned.stdout
    with engine_for(archive_url) as archive, archive.begin() as connection:
        connection.exec_driver_sql("CREATE EXTENSION citext")
        connection.exec_driver_sql("CREATE EXTENSION hstore")
    with policy_served(tmp_path, primary_url, archive_url, "postgres", policy) as client:
        walks_in_code_point_order(client, "handles", "handle", handles, ("handle", "nick"))
        archived = walk(client, "handles", "source=archive", limit=100)
        assert 0 < len(archived) < len(handles)  # both databases hold some
        assert archived[0]["attrs"] == f'"k"=>"{archived[0]["handle"]}"'


@pytest.mark.sqlite
def test_sqlite_files_in_a_folder_whose_name_a_uri_would_cut_are_served_read_only(
        tmp_path: Path) -> None:
    """The reports open SQLite files as read-only URIs: a '#' in the path ended the URI,
    so they opened (and created, read-write) an empty 'My Data ' beside the folder, and
    every page was a 500 'no such table'."""
    folder = tmp_path / "My Data #1"
    folder.mkdir()
    primary_url = f"sqlite:///{folder / 'app 100%.sqlite3'}"
    archive_url = f"sqlite:///{folder / 'archive #2.sqlite3'}"
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE notes (id integer PRIMARY KEY, at DATETIME NOT NULL)")
        connection.execute(sa.text("INSERT INTO notes VALUES (:id, :at)"), [
            {"id": i, "at": (NOW - timedelta(days=300 * i)).strftime("%Y-%m-%d %H:%M:%S")}
            for i in range(1, 7)])
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       one_policy("notes", "at")) as client:
        for source, ids in (("primary", [1]), ("archive", [2, 3, 4, 5, 6]),
                            ("all", [1, 2, 3, 4, 5, 6])):
            assert [row["id"] for row in walk(client, "notes", f"source={source}")] == ids
            assert client.get(f"/api/v1/tables/notes.csv?source={source}").status_code == 200
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_file()
                  and not path.name.startswith("settings-")) == []


@pytest.mark.sqlite
def test_pages_resume_after_values_sqlite_keeps_against_the_sorted_columns_type(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """An old Rails table: booleans stored 't'/'f' beside 1/0, 'n/a' in a DECIMAL column,
    Unix times and '' in a DATETIME one. Served as stored, but a page ending on such a
    value got a cursor its next request refused: 400 'the cursor is malformed' for 'f', a
    500 for 'n/a' (Decimal's InvalidOperation). Pages now resume after the stored value,
    in SQLite's order."""
    primary_url, archive_url = databases.pair("off_type")
    published = ["t", "f", 1, 0, None, "true"]
    prices = [12.5, "n/a", 7, "", 3.25, None, "7.00"]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            'CREATE TABLE posts (id integer PRIMARY KEY, published boolean, price decimal(10,2),'
            ' seen datetime, created_at datetime NOT NULL)')
        for column in ("published", "price", "seen"):
            connection.exec_driver_sql(f"CREATE INDEX posts_{column} ON posts ({column})")
        connection.execute(sa.text(
            "INSERT INTO posts VALUES (:id, :published, :price, :seen, :created_at)"), [
            {"id": i, "published": published[i % 6], "price": prices[i % 7],
             "seen": [1_700_000_000 + i, "", "2026-01-02 03:04:05", "n/a", None][i % 5],
             "created_at": (NOW - timedelta(days=10 + 400 * (i % 2))).strftime(
                 "%Y-%m-%d %H:%M:%S")}
            for i in range(1, 43)])
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       one_policy("posts", "created_at")) as client:
        for column in ("published", "price", "seen"):
            for sort in (column, f"-{column}"):
                for source, url in (("primary", primary_url), ("archive", archive_url)):
                    rows = walk(client, "posts", f"sort={sort}&source={source}", limit=2)
                    direction = "DESC" if sort.startswith("-") else "ASC"
                    nulls = "FIRST" if direction == "DESC" else "LAST"
                    with engine_for(url) as engine, engine.connect() as connection:
                        ids = list(connection.exec_driver_sql(
                            f"SELECT id FROM posts ORDER BY {column} {direction} NULLS {nulls},"
                            f" id {direction}").scalars())
                    assert [row["id"] for row in rows] == ids, (sort, source)
                merged = walk(client, "posts", f"sort={sort}", limit=2)
                assert sorted(row["id"] for row in merged) == list(range(1, 43)), sort


@pytest.mark.postgres
def test_merged_pages_sorted_on_numbers_holding_nan_and_infinities_hold_every_row(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """PostgreSQL sorts NaN above every number; Python's comparisons with a float NaN are
    all false, so the merge went out of order and pages skipped rows, and a Decimal NaN
    raised on comparison: every merged page of a numeric sort holding one was a 500."""
    primary_url, archive_url = databases.pair("nan")
    specials = ["NaN", "Infinity", "-Infinity"]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE measures (id integer PRIMARY KEY,"
                                   " f double precision, n numeric, at timestamptz NOT NULL)")
        connection.exec_driver_sql("CREATE INDEX measures_f ON measures (f)")
        connection.exec_driver_sql("CREATE INDEX measures_n ON measures (n)")
        connection.execute(sa.text(
            "INSERT INTO measures VALUES (:id, CAST(:f AS float8), CAST(:n AS numeric), :at)"), [
            {"id": i, "f": specials[i % 4] if i % 4 < 3 else str(i / 3),
             "n": specials[i % 3 - 1] if i % 3 == 1 else str(i * 1.5) if i % 5 else None,
             "at": NOW - timedelta(days=10 + 400 * (i % 3 == 0))}
            for i in range(1, 41)])
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("measures", "at")) as client:
        assert 0 < len(walk(client, "measures", "source=archive", limit=100)) < 40
        for sort in ("f", "-f", "n", "-n"):
            rows = walk(client, "measures", f"sort={sort}", limit=3)
            assert sorted(row["id"] for row in rows) == list(range(1, 41)), sort


@pytest.mark.postgres
def test_pages_sorted_on_timestamps_and_dates_holding_infinities_hold_every_row_in_order(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """psycopg2 reads ``infinity`` as Python's latest value and binds that back as the
    finite 9999-12-31 23:59:59.999999, which PostgreSQL orders below ``infinity``: a cursor
    taken at such a row resumed in the wrong place, and pages sorted on a lease's
    ``ends_at`` or ``due`` skipped or repeated the rows holding ``-infinity`` and
    ``infinity``. A genuine 9999-12-31 is a value of its own, below ``infinity``."""
    primary_url, archive_url = databases.pair("infinities")
    ends = ["infinity", "-infinity", None, "2026-01-02 03:04:05+00",
            "9999-12-31 23:59:59.999999+00"]
    dues = ["infinity", "9999-12-31", "-infinity", "0001-01-01", "2026-05-05"]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE leases (id integer PRIMARY KEY, starts_at"
                                   " timestamptz NOT NULL, ends_at timestamptz, due date NOT"
                                   " NULL, local_end timestamp)")
        for column in ("ends_at", "due", "local_end"):
            connection.exec_driver_sql(f"CREATE INDEX leases_{column} ON leases ({column})")
        connection.execute(sa.text(
            "INSERT INTO leases VALUES (:id, :at, CAST(:end AS timestamptz), CAST(:due AS date),"
            " CAST(:end AS timestamp))"), [
            {"id": i, "at": NOW - timedelta(days=10 + 400 * (i % 2)), "end": ends[i % 5],
             "due": dues[i // 5 % 5]} for i in range(1, 41)])
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("leases", "starts_at")) as client, \
            engine_for(primary_url) as primary, engine_for(archive_url) as archive:
        for column in ("ends_at", "due", "local_end"):
            # Each row's place in PostgreSQL's order: NULLs last, then by sign, value, key.
            places: dict[str, list[tuple[Any, ...]]] = {}
            for source, engine in (("primary", primary), ("archive", archive)):
                with engine.connect() as connection:
                    places[source] = [tuple(row) for row in connection.exec_driver_sql(
                        f"SELECT {column} IS NULL, CASE WHEN {column} = 'infinity' THEN 1 WHEN"
                        f" {column} = '-infinity' THEN -1 ELSE 0 END, CASE WHEN"
                        f" isfinite({column}) THEN {column} END, id FROM leases")]
            places["all"] = places["primary"] + places["archive"]
            for direction in ("", "-"):
                for source, rows in places.items():
                    expected = [place[-1] for place in sorted(rows, reverse=bool(direction))]
                    for limit in (1, 2, 3):
                        walked = [row["id"] for row in walk(
                            client, "leases", f"sort={direction}{column}&source={source}",
                            limit=limit)]
                        assert walked == expected, (column, direction, source, limit)
        shown = {row["id"]: row for row in walk(client, "leases")}  # as psycopg2 reads them
        assert shown[20]["ends_at"] == shown[4]["ends_at"] == "9999-12-31T23:59:59.999999Z"
        assert shown[2]["due"] == shown[6]["due"] == "9999-12-31"
        assert shown[11]["due"] == shown[16]["due"] == "0001-01-01"


@pytest.mark.sqlite
def test_a_blob_in_a_column_not_declared_one_is_served_as_hex(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A STRICT table's ``ANY`` column (or bytes an application wrote into ``TEXT``) holds
    a blob: JSON has no bytes, so every page holding one was a 500, and CSV and the UI wrote
    Python's ``b'\\x00\\x01'``. Served as a declared BLOB column is: as ``hex()`` writes it."""
    primary_url, archive_url = databases.pair("any_blob")
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE kv (k TEXT PRIMARY KEY, v, note TEXT,"
                                   " at TEXT NOT NULL)")
        connection.execute(sa.text("INSERT INTO kv VALUES (:k, :v, :note, :at)"), [
            {"k": f"k{i}", "v": [b"\x00\x01", 2.5, "x"][i % 3],
             "note": b"\xff=1" if i % 2 else "=1",
             "at": (NOW - timedelta(days=10 + 400 * (i % 2))).strftime("%Y-%m-%d %H:%M:%S")}
            for i in range(6)])
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       one_policy("kv", "at", age_format='"iso_text"')) as client:
        rows = {row["k"]: row for row in walk(client, "kv")}
        assert (rows["k0"]["v"], rows["k1"]["note"], rows["k0"]["note"]) == (
            "0001", "FF3D31", "=1")
        for source in ("primary", "archive", "all"):  # SQLite's own CSV path, the general one
            text = client.get(f"/api/v1/tables/kv.csv?source={source}").get_data(as_text=True)
            cells = {line.split(",")[0]: line for line in text.splitlines()[1:]}
            for key, line in cells.items():
                want = rows[key]
                note = f"'{want['note']}" if want["note"] == "=1" else want["note"]
                assert line.startswith(f"{key},{want['v']},{note},"), (source, line)
        page = client.get("/tables/kv", headers={"Accept": "text/html"}).get_data(as_text=True)
        assert ">0001<" in page and "\\x00" not in page


@pytest.mark.sqlite
def test_a_merged_walk_over_sqlite_nocase_columns_follows_code_points(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """An application's ``COLLATE NOCASE`` key and column sort 'a' < 'B' in PRIMARY, and
    'B' < 'a' in Python and in the twin: merged pages resumed in one order after rows
    picked in the other, and a walk over the key went round in a circle for ever."""
    primary_url, archive_url = databases.pair("nocase")
    names = [f"{letter}{i}" for i, letter in enumerate("aBcDeFgHiJkLmNoP" * 3)]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE tags (name text COLLATE NOCASE PRIMARY KEY,"
            " label text COLLATE NOCASE NOT NULL, made_at DATETIME NOT NULL)")
        connection.exec_driver_sql("CREATE INDEX tags_label ON tags (label)")
        connection.execute(sa.text("INSERT INTO tags VALUES (:name, :label, :at)"), [
            {"name": name, "label": name.swapcase()[:1],
             "at": (NOW - timedelta(days=10 + 400 * (i % 3 == 0))).isoformat(" ")}
            for i, name in enumerate(names)])
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       one_policy("tags", "made_at")) as client:
        walks_in_code_point_order(client, "tags", "name", names, ("name", "label"))
        archived = walk(client, "tags", "source=archive", limit=100)
        assert 0 < len(archived) < len(names)  # both databases hold some


@pytest.mark.sqlite
def test_sqlite_nocase_and_rtrim_columns_filter_alike_in_every_source(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A column declared ``COLLATE NOCASE`` (or ``RTRIM``) keeps its collation in the twin:
    SQLAlchemy does not reflect it, so the twin compared exactly and ``email=ANN@x.org``
    found a row in PRIMARY that it missed once archived."""
    primary_url, archive_url = databases.pair("nocase_filters")
    emails = ["ann@x.org", "ANN@X.ORG", "Bob@x.org", "bob@x.org", "cy@x.org", "Cy@x.org"]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE people (id integer PRIMARY KEY, email text COLLATE NOCASE NOT NULL,"
            " code varchar(8) COLLATE RTRIM, plain text, seen_at DATETIME NOT NULL)")
        connection.execute(sa.text("INSERT INTO people VALUES (:id, :email, :code, :email,"
                                   " :at)"), [
            {"id": i, "email": email, "code": "k" + " " * (i % 3),
             "at": (NOW - timedelta(days=10 + 400 * (i % 2))).isoformat(" ")}
            for i, email in enumerate(emails * 2)])
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       one_policy("people", "seen_at")) as client:
        everyone = walk(client, "people", "source=all")
        assert len(walk(client, "people", "source=archive")) == len(emails)
        for query, wanted in (("email=ANN%40x.org", lambda r: r["email"].lower() == "ann@x.org"),
                              ("code=k", lambda r: r["code"].rstrip() == "k"),
                              ("plain=bob%40x.org", lambda r: r["plain"] == "bob@x.org")):
            expected = sorted(row["id"] for row in everyone if wanted(row))
            for source in ("primary", "archive"):
                found = walk(client, "people", f"source={source}&{query}")
                assert sorted(row["id"] for row in found) == [
                    i for i in expected if (i % 2 == 1) == (source == "archive")], (query, source)
            assert sorted(row["id"] for row in walk(client, "people", f"source=all&{query}")
                          ) == expected, query


@pytest.mark.postgres
def test_bit_strings_are_filtered_and_downloaded_as_text(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """``bit`` and ``bit varying`` hold Python text but are no SQL text: ``like`` on them
    and the CSV's formula escape (``left``, ``||``) were a 500."""
    primary_url, archive_url = databases.pair("bits")
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE flags (id integer PRIMARY KEY, seen_at timestamptz NOT NULL,"
            " mask bit(4), trail bit varying)")
        connection.execute(sa.text("INSERT INTO flags VALUES (:id, :seen_at,"
                                   " CAST(:mask AS bit(4)), CAST(:trail AS bit varying))"),
                           [{"id": i, "seen_at": NOW - timedelta(days=10 + 400 * (i % 2)),
                             "mask": f"{i:04b}", "trail": "1" * (i % 3)} for i in range(16)])
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("flags", "seen_at")) as client:
        for source in ("primary", "archive", "all"):
            ones = walk(client, "flags", f"source={source}&mask[like]=1%25&trail=11")
            assert ones and all(row["mask"].startswith("1") and row["trail"] == "11"
                                for row in ones), source
            download = client.get(f"/api/v1/tables/flags.csv?source={source}")
            assert download.status_code == 200, (source, download.get_json())
            rows = list(csv.DictReader(io.StringIO(download.get_data(as_text=True))))
            assert rows and all(row["mask"] == f"{int(row['id']):04b}" for row in rows), source
        all_rows = walk(client, "flags", "source=all")
        assert [row["id"] for row in all_rows] == list(range(16))


@pytest.mark.postgres
def test_a_download_has_the_same_cells_from_every_source(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """One database's download (COPY, where PostgreSQL writes the cells) and a merged one
    (the csv module) agree on booleans, floats and timestamps before the year 1000: they
    wrote t, 18 and NaN against True, 18.0 and nan, 0999 against 999, and an empty cell
    and infinity against 9999-12-31T23:59:59.999999Z and 9999-12-31."""
    primary_url, archive_url = databases.pair("cells")
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE gauges (id integer PRIMARY KEY, seen_at timestamptz NOT NULL,"
            " ok boolean, level float8, ratio real, since timestamptz, until timestamptz,"
            " ends date)")
        levels = [18.0, float("nan"), float("inf"), 1e15, 0.1, -2.5e-7, None]
        connection.execute(sa.text(
            "INSERT INTO gauges VALUES (:id, :seen_at, :ok, :level, :level, :since,"
            " CAST(:until AS timestamptz), CAST(:until AS date))"),
            [{"id": i, "seen_at": NOW - timedelta(days=10 + 400 * (i % 2)),
              "ok": (True, False, None)[i % 3], "level": levels[i % len(levels)],
              "since": datetime(999 + i * 100, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
              "until": ("infinity", "-infinity", None, "2026-02-03 04:05:06+00")[i % 4]}
             for i in range(14)])
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("gauges", "seen_at")) as client:

        def cells(source: str, columns: str) -> dict[str, dict[str, str]]:
            response = client.get(f"/api/v1/tables/gauges.csv?source={source}&columns={columns}")
            assert response.status_code == 200, response.get_json()
            text = response.get_data(as_text=True)
            return {row["id"]: row for row in csv.DictReader(io.StringIO(text))}

        for columns in ("id,ok,since,until,ends", "id,ok,level,ratio,since"):  # COPY, then not
            merged = cells("all", columns)
            assert len(merged) == 14
            assert cells("primary", columns) | cells("archive", columns) == merged, columns
        assert merged["0"]["ok"] == "True" and merged["1"]["ok"] == "False"
        assert merged["2"]["ok"] == ""
        assert merged["0"]["since"] == "0999-01-02T03:04:05.000006Z"
        assert merged["0"]["level"] == "18.0" and merged["1"]["level"] == "nan"
        merged = cells("all", "id,until,ends")  # infinities as psycopg2 reads them
        assert merged["0"] == {"id": "0", "until": "9999-12-31T23:59:59.999999Z",
                               "ends": "9999-12-31"}
        assert merged["1"] == {"id": "1", "until": "0001-01-01T00:00:00.000000Z",
                               "ends": "0001-01-01"}
        assert merged["2"] == {"id": "2", "until": "", "ends": ""}


@pytest.mark.sqlite
def test_unix_times_in_a_sqlite_datetime_column_are_served_as_stored(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """SQLite keeps an application's Unix times in a column declared DATETIME beside text
    ones: parsing them failed every page and download of the table (500), and a merged sort
    on the column compared numbers with timestamps. They are served as stored, and merged
    in SQLite's own order (numbers before text)."""
    primary_url, archive_url = databases.pair("epochs")
    seconds = int(NOW.timestamp())
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE hits (id integer PRIMARY KEY, at DATETIME NOT NULL, what text)")
        connection.exec_driver_sql("CREATE INDEX hits_at ON hits (at)")
        connection.execute(sa.text("INSERT INTO hits VALUES (:id, :at, :what)"), [
            *({"id": i, "at": seconds - 86400 * 100 * i, "what": f"n{i}"} for i in range(1, 9)),
            *({"id": 100 + i, "at": f"2026-0{i}-02 03:04:05.000006", "what": f"t{i}"}
              for i in range(1, 5))])
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       one_policy("hits", "at", age_format='"epoch_seconds"')) as client:
        archived = walk(client, "hits", "source=archive")
        assert {row["id"] for row in archived} == {4, 5, 6, 7, 8}  # over 365 days old
        rows = walk(client, "hits", "source=all")
        assert {row["id"]: row["at"] for row in rows} == {
            **{i: seconds - 86400 * 100 * i for i in range(1, 9)},
            **{100 + i: f"2026-0{i}-02T03:04:05.000006" for i in range(1, 5)}}
        for source in ("primary", "archive", "all"):
            download = client.get(f"/api/v1/tables/hits.csv?source={source}")
            assert download.status_code == 200, (source, download.get_json())
            cells = {row["id"]: row["at"] for row in
                     csv.DictReader(io.StringIO(download.get_data(as_text=True)))}
            assert cells["4" if source != "primary" else "1"].isdigit(), source
        page = client.get("/api/v1/tables/hits?sort=-at&limit=50")
        assert page.status_code == 200, page.get_json()
        assert [row["id"] for row in page.get_json()["rows"]] == [
            104, 103, 102, 101, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.sqlite
def test_pages_sorted_on_sqlite_timestamps_in_their_own_text_form_resume_exactly(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """SQLite compares a timestamp column by its text: CURRENT_TIMESTAMP's
    ``2026-01-02 03:04:05``, bound back in SQLAlchemy's form (``...05.000000``), sorted after
    the row it came from: descending pages repeated one page for ever, ascending ones ended
    after the first. A cursor now resumes after the stored text itself."""
    primary_url, archive_url = databases.pair("stamps")
    stamps = [(NOW - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S")
              for days in (900, 800, 10, 5)]
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE notes (id integer PRIMARY KEY,"
            " created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, body text)")
        connection.exec_driver_sql("CREATE INDEX notes_created ON notes (created_at)")
        connection.execute(sa.text("INSERT INTO notes VALUES (:id, :at, :body)"),
                           [{"id": i, "at": stamps[i % 4], "body": f"b{i}"} for i in range(16)])
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       one_policy("notes", "created_at")) as client:
        everyone = {"all": set(range(16)), "archive": {i for i in range(16) if i % 4 < 2},
                    "primary": {i for i in range(16) if i % 4 >= 2}}
        for source, ids in everyone.items():
            for sort in ("created_at", "-created_at"):
                rows = walk(client, "notes", f"source={source}&sort={sort}", limit=3)
                assert sorted(row["id"] for row in rows) == sorted(ids), (source, sort)
                stamps_seen = [row["created_at"] for row in rows]
                assert stamps_seen == sorted(stamps_seen, reverse=sort.startswith("-"))
        assert rows[0]["created_at"] == stamps[3].replace(" ", "T")  # served as a timestamp


@pytest.mark.sqlite
def test_values_sqlite_keeps_against_their_declared_type_are_served_as_stored(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """SQLite keeps any value in any column: one that failed SQLAlchemy's conversion ('n/a'
    in a DECIMAL column, a UUID in one declared UUID, which SQLAlchemy reflected as NUMERIC)
    made every page and download of the table a 500. They are served as stored, a NUMERIC
    of no scale unpadded, a text
    'false' in a BOOLEAN column is not served as true, and a merge on such a column orders
    as SQLite does (numbers, then text)."""
    primary_url, archive_url = databases.pair("odd")
    ref = str(uuid.uuid4())
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE items (id integer PRIMARY KEY, made DATETIME NOT NULL,"
            " price DECIMAL(10, 2), active BOOLEAN, ref UUID, meta JSONB, weight NUMERIC)")
        connection.exec_driver_sql("CREATE INDEX items_price ON items (price)")
        odd = {1: ("price", "n/a"), 2: ("active", "false"), 3: ("ref", "not-a-uuid"),
               4: ("meta", "{not json"), 5: ("price", "12.5.1")}
        rows = []
        for i in range(1, 21):
            row = {"id": i, "made": (NOW - timedelta(days=50 * i)).strftime("%Y-%m-%d %H:%M:%S"),
                   "price": i * 1.25, "active": i % 2, "ref": ref, "meta": f'{{"i": {i}}}',
                   "weight": i if i % 2 else i + 0.5}
            if i in odd:
                row[odd[i][0]] = odd[i][1]
            if i - 10 in odd:  # the same odd values among the archived rows
                row[odd[i - 10][0]] = odd[i - 10][1]
            rows.append(row)
        connection.execute(sa.text("INSERT INTO items VALUES (:id, :made, :price, :active,"
                                   " :ref, :meta, :weight)"), rows)
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       one_policy("items", "made")) as client:
        catalog = client.get("/api/v1/tables").get_json()["tables"]
        types = {column["name"]: column["type"] for column in catalog[0]["columns"]}
        assert (types["ref"], types["made"]) == ("string", "datetime")  # not NUMERIC's number
        served = {row["id"]: row for row in walk(client, "items", "source=all")}
        assert set(served) == set(range(1, 21))
        for i, (column, value) in odd.items():
            assert served[i][column] == served[i + 10][column] == value, (i, column)
        assert served[6]["active"] is False and served[7]["active"] is True
        assert served[6]["price"] == "7.50" and served[6]["ref"] == ref
        # NUMERIC of no scale: as stored, not padded to ten places (1.0000000000)
        assert (served[7]["weight"], served[8]["weight"]) == ("7", "8.5")
        for source in ("primary", "archive", "all"):
            assert client.get(f"/api/v1/tables/items.csv?source={source}").status_code == 200
            for sort in ("price", "-price"):
                walked = [row["price"] for row in walk(
                    client, "items", f"source={source}&sort={sort}", limit=50)]
                assert walked == sorted(walked, key=as_sqlite_orders,
                                        reverse=sort.startswith("-")), (source, sort)


def as_sqlite_orders(served: str) -> tuple[int, Any]:
    """A DECIMAL column's served value as SQLite orders what it stores: numbers, then text."""
    try:
        return 0, Decimal(served)
    except ArithmeticError:
        return 1, served


#: How applications spell an instant in a SQLite DATETIME column.
SPELLINGS: dict[str, Any] = {
    "current_timestamp": lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
    "javascript": lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z",
    "sequelize": lambda t: t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d} +00:00",
    "offset": lambda t: t.astimezone(timezone(timedelta(hours=14))).isoformat(),
    "sqlalchemy": lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f"),
}


@pytest.mark.sqlite
def test_filters_on_sqlite_timestamps_compare_instants_whatever_their_spelling(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """SQLite compares a DATETIME column as text, and a filter value was bound in
    SQLAlchemy's spelling: every row of the filter's own day fell on the wrong side (``T``
    after the space; ``...05`` before ``...05.000000``), so ``eq`` matched nothing written
    by CURRENT_TIMESTAMP or JavaScript. Filters compare instants now. Sequelize's spelling
    (a space before the zone) failed every page of its table (422); an offset was written
    to CSV as if it were UTC; text of no date ('') counted as aged and was archived."""
    primary_url, archive_url = databases.pair("spelled")
    old, new = NOW - timedelta(days=800), NOW - timedelta(days=10)
    instants: dict[int, datetime | None] = {}
    rows = []
    for base, start in ((old, 0), (new, 100)):
        for offset, (name, spell) in enumerate(SPELLINGS.items()):
            instants[start + offset] = base
            rows.append({"id": start + offset, "at": spell(base), "what": name})
        for offset, near in enumerate((base - timedelta(milliseconds=1),
                                       base + timedelta(microseconds=1),
                                       base - timedelta(hours=13)), start=10):
            instants[start + offset] = near
            rows.append({"id": start + offset, "at": SPELLINGS["offset"](near), "what": "near"})
    instants[99] = None
    rows.append({"id": 99, "at": "", "what": "unknown"})
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE visits (id integer PRIMARY KEY, at DATETIME NOT NULL, what text)")
        connection.exec_driver_sql("CREATE INDEX visits_at ON visits (at)")
        connection.execute(sa.text("INSERT INTO visits VALUES (:id, :at, :what)"), rows)
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "visited.sql").write_text(
        '-- title = "Visits"\n-- key = ["id"]\n-- sort_keys = ["at", "id"]\n'
        '-- default_sort = "-at"\n-- root = "visits"\n-- [columns]\n-- id = "integer"\n'
        '-- at = { type = "datetime", nullable = false }\n-- [filters]\n'
        '-- at = ["eq", "gte"]\nSELECT id, at FROM visits WHERE at <> \'\'\n')
    with policy_served(tmp_path, primary_url, archive_url, "sqlite",
                       '[reports]\nsql_folder = "sql"\n' + one_policy("visits", "at")) as client:
        archived = {row["id"] for row in walk(client, "visits", "source=archive")}
        assert archived == {i for i in instants if i < 99}, "'' is no date: never aged"
        served = {row["id"]: row["at"] for row in walk(client, "visits", "source=all")}
        assert served[99] == ""
        assert {i: parse_instant(at) for i, at in served.items() if i != 99} == {
            i: at for i, at in instants.items() if at is not None}
        checks = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
                  "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
                  "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b}
        for bound in (old, new):
            value = quote(bound.isoformat())
            for op, check in checks.items():
                expected = {i for i, at in instants.items() if at is not None and check(at, bound)}
                for source in ("primary", "archive", "all"):
                    found = walk(client, "visits", f"source={source}&at[{op}]={value}&sort=-at")
                    in_source = {i for i in expected if (i in archived) == (source == "archive")
                                 or source == "all"}
                    assert {row["id"] for row in found} == in_source, (bound, op, source)
            # A SQL report's datetime column reads and compares them alike.
            found = walk_pages(client, "/api/v1/reports/visited", f"at[eq]={value}")
            assert {row["id"] for row in found} == {
                i for i, at in instants.items() if at == bound}, bound
            both = quote(f"{bound.isoformat()},{(bound - timedelta(hours=13)).isoformat()}")
            found = walk(client, "visits", f"at[in]={both}")
            assert len(found) == len(SPELLINGS) + 1, bound
        for source in ("primary", "archive", "all"):  # the SQLite path, and the merged one
            download = client.get(f"/api/v1/tables/visits.csv?source={source}")
            assert download.status_code == 200, download.get_data(as_text=True)[:300]
            for cell in csv.DictReader(io.StringIO(download.get_data(as_text=True))):
                at = instants[int(cell["id"])]
                zone = "Z" if served[int(cell["id"])].endswith("Z") else ""  # as in JSON:
                # text without a zone is a wall-clock time of no stated zone
                assert cell["at"] == (at.strftime("%Y-%m-%dT%H:%M:%S.%f") + zone
                                      if at else ""), cell
            filtered = client.get(f"/api/v1/tables/visits.csv?source={source}"
                                  f"&at[eq]={quote(new.isoformat())}")
            assert len(filtered.get_data(as_text=True).splitlines()) == (
                1 if source == "archive" else 1 + len(SPELLINGS)), source


@pytest.mark.postgres
def test_a_date_python_cannot_hold_is_a_problem_naming_the_way_around(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """PostgreSQL stores dates from 4713 BC, Python's run from year 1: psycopg2's
    ``ValueError`` was a 500 (a page), or a download cut after its 200. It is a 422 problem
    saying how to filter such rows out."""
    primary_url, archive_url = databases.pair("bc")
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE eras (id integer PRIMARY KEY, seen_at timestamptz NOT NULL,"
            " began timestamptz)")
        connection.exec_driver_sql(
            "INSERT INTO eras SELECT g, now() - g * interval '100 days',"
            " CASE WHEN g = 3 THEN '0044-03-15 12:00 BC' ELSE now() END"
            " FROM generate_series(1, 6) g")
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("eras", "seen_at"), archive=False) as client:
        for source in ("primary", "all"):
            refused = client.get(f"/api/v1/tables/eras?source={source}")
            assert refused.status_code == 422, refused.get_data(as_text=True)
            assert refused.get_json()["code"] == "unrepresentable_value"
            assert "[gte]=0001-01-01" in refused.get_json()["detail"]
            rows = walk(client, "eras", f"source={source}&began[gte]=0001-01-01")
            assert sorted(row["id"] for row in rows) == [1, 2, 4, 5, 6]
        # Before the first byte, not a download broken after its 200 (COPY formats it).
        download = client.get("/api/v1/tables/eras.csv?source=all")
        assert download.status_code == 422, download.get_data(as_text=True)[:300]
        assert client.get("/api/v1/tables/eras.csv?source=primary").status_code == 200


@pytest.mark.postgres
def test_the_application_databases_own_session_settings_change_no_value(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A database its application set to ``datestyle 'SQL, DMY'``, ``intervalstyle
    'iso_8601'`` and ``extra_float_digits 0``: every batch failed its read-back (the
    intervals), and without that, floats were archived rounded to 15 digits, unnoticed.
    Rows are archived exactly and served in PostgreSQL's default forms. And an ``inet``
    address is served as PostgreSQL prints it, not with the ``/32`` a cast to text adds."""
    primary_url, archive_url = databases.pair("datestyle")
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE visits (id integer PRIMARY KEY, at timestamptz NOT NULL, day date,"
            " stay interval, score float8, client inet)")
        connection.execute(sa.text(
            "INSERT INTO visits VALUES (:id, :at, :day, :stay, :score, :client)"), [
            {"id": i, "at": NOW - timedelta(days=100 * i), "day": datetime(2026, 1, 3 * i).date(),
             "stay": "1 mon 2 days 150 hours", "score": i / 10 + 0.2, "client": f"10.0.0.{i}"}
            for i in range(1, 9)])
        database = sa.engine.make_url(primary_url).database
        for setting in ("datestyle = 'SQL, DMY'", "intervalstyle = 'iso_8601'",
                        "extra_float_digits = 0"):
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" SET {setting}')

    def printed(url: str) -> list[tuple[str, ...]]:
        with engine_for(url) as engine, engine.connect() as connection:
            connection.exec_driver_sql("SET datestyle = ISO; SET intervalstyle = postgres;"
                                       " SET extra_float_digits = 3; SET timezone = UTC")
            return [tuple(row) for row in connection.exec_driver_sql(
                "SELECT id::text, at::text, day::text, stay::text, score::text,"
                " client::text FROM visits ORDER BY id")]

    written = printed(primary_url)
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("visits", "at")) as client:
        assert printed(archive_url) == written[3:]  # 400 days and older
        assert printed(primary_url) == written[:3]
        served = walk(client, "visits", "source=all")
    assert [(row["at"], row["day"], row["stay"], row["score"], row["client"])
            for row in served] == [
        ((NOW - timedelta(days=100 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"), f"2026-01-{3 * i:02d}",
         "1 mon 2 days 150:00:00", i / 10 + 0.2, f"10.0.0.{i}") for i in range(1, 9)]


def test_links_to_a_table_whose_name_needs_escaping_are_urls(databases: DatabaseFactory,
                                                            tmp_path: Path) -> None:
    """A table called ``100% done #1``: the API's ``Link: rel="next"`` and the UI's form,
    Clear, sort, source and pager links carried the name unescaped (a space, a ``%`` that
    starts no escape, a ``#`` that ends the path), so following them missed the table."""
    primary_url, archive_url = databases.pair("escaping")
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.execute(sa.text('CREATE TABLE "100% done #1" (id integer PRIMARY KEY,'
                                   " at timestamp NOT NULL)"))
        connection.execute(sa.text('INSERT INTO "100% done #1" VALUES (:id, :at)'), [
            {"id": i, "at": NOW - timedelta(days=10 * i)} for i in range(1, 120)])
    escaped = "/tables/100%25%20done%20%231"
    with policy_served(tmp_path, primary_url, archive_url, databases.backend,
                       '[policy.done]\ntable = "100% done #1"\nage_column = "at"\n'
                       'older_than = "365d"\n') as client:
        page = client.get(f"/api/v1{escaped}?limit=50&source=all")
        assert page.status_code == 200, page.get_json()
        link = page.headers["Link"]
        assert link.startswith(f"</api/v1{escaped}?"), link
        following = client.get(link[1:link.index(">")])
        assert following.status_code == 200 and following.get_json()["rows"][0]["id"] == 51
        html = client.get(f"{escaped}?limit=50&source=all",
                          headers={"Accept": "text/html"}).get_data(as_text=True)
        refused = client.get(f"{escaped}?id[gt]=abc", headers={"Accept": "text/html"})
    hrefs = re.findall(r'(?:href|action)="(/tables/[^"]*)"', html)
    assert len(hrefs) > 5 and all(href.startswith(f"{escaped}") for href in hrefs), hrefs
    assert refused.status_code == 400
    assert f'<a href="{escaped}">This page without its filters' in refused.get_data(as_text=True)


@pytest.mark.postgres
def test_a_timestamp_without_time_zone_is_written_to_csv_without_one(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """A ``timestamp`` the application writes in its local time was served in JSON as it is
    (``2026-01-02T03:04:05``) but written to CSV as a UTC instant (``...05.000000Z``), on
    both CSV paths: a spreadsheet or pandas read it hours off. Now without a ``Z``, as
    served, infinities too; a ``timestamptz`` keeps its ``Z``."""
    primary_url, archive_url = databases.pair("naive")
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE shifts (id integer PRIMARY KEY,"
                                   " starts timestamp NOT NULL, logged timestamptz)")
        connection.execute(sa.text("INSERT INTO shifts VALUES (:id, :starts, :logged)"), [
            {"id": i, "starts": (NOW - timedelta(days=100 * i, microseconds=i)).replace(
                tzinfo=None), "logged": NOW} for i in range(1, 7)])
        connection.exec_driver_sql("INSERT INTO shifts VALUES (7, '-infinity', NULL),"
                                   " (8, 'infinity', NULL)")
    with policy_served(tmp_path, primary_url, archive_url, "postgres",
                       one_policy("shifts", "starts")) as client:
        served = {row["id"]: row for row in walk(client, "shifts", "source=all")}
        for source in ("primary", "all"):  # COPY, and the csv module over both databases
            cells = list(csv.DictReader(io.StringIO(client.get(
                f"/api/v1/tables/shifts.csv?source={source}").get_data(as_text=True))))
            assert len(cells) == (4 if source == "primary" else 8)  # -infinity is aged
            for cell in cells:
                row = served[int(cell["id"])]
                if cell["id"] in ("7", "8"):
                    assert cell["starts"] == {"7": "0001-01-01T00:00:00.000000",
                                              "8": "9999-12-31T23:59:59.999999"}[cell["id"]]
                    continue
                assert datetime.fromisoformat(cell["starts"]) == datetime.fromisoformat(
                    row["starts"]) and not cell["starts"].endswith("Z"), (cell, row)
                assert cell["logged"] == NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_column_dropped_while_served_is_a_503_and_served_again_after_the_reload_it_starts(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """An application migration dropped a served column: every page, download and UI view
    of the table was a 500 "internal error" until an operator sent SIGHUP. It is a 503
    ``schema_changed`` now, which starts the reload SIGHUP does; then the table is served
    from its new columns. On PostgreSQL a column's new type made its filters a 500 too
    ("operator does not exist: text > integer")."""
    primary_url, archive_url = databases.pair("dropped")
    with engine_for(primary_url) as primary, primary.begin() as connection:
        connection.execute(sa.text("CREATE TABLE notes (id integer PRIMARY KEY,"
                                   " at timestamp NOT NULL, size integer, extra integer)"))
        connection.execute(sa.text("INSERT INTO notes VALUES (:id, :at, :id, :id)"), [
            {"id": i, "at": NOW - timedelta(days=10 * i)} for i in range(1, 60)])
    with policy_served(tmp_path, primary_url, archive_url, databases.backend,
                       one_policy("notes", "at")) as client:
        assert client.get("/api/v1/tables/notes?source=all").get_json()["rows"][0]["extra"] == 1
        with engine_for(primary_url) as primary, primary.begin() as connection:
            connection.execute(sa.text("ALTER TABLE notes DROP COLUMN extra"))
        changed = client.get("/api/v1/tables/notes?source=all")
        assert changed.status_code == 503, changed.get_data(as_text=True)
        assert changed.get_json()["code"] == "schema_changed"
        assert changed.headers["Retry-After"] == "5"
        served = _once_reloaded(client, "/api/v1/tables/notes?source=all")
        assert served.get_json()["meta"]["columns"] == ["id", "at", "size"]
        assert client.get("/api/v1/tables/notes.csv?source=all").status_code == 200
        if databases.backend != "postgres":
            return
        with engine_for(primary_url) as primary, primary.begin() as connection:
            connection.execute(sa.text("ALTER TABLE notes ALTER COLUMN size TYPE text"))
        filtered = "/api/v1/tables/notes?source=primary&size[gt]=5"
        assert client.get(filtered).get_json()["code"] == "schema_changed"
        time.sleep(RELOAD_INTERVAL_SECONDS)
        client.get(filtered)  # starts the reload
        assert _once_reloaded(client, filtered).get_json()["rows"][0]["size"] == "6"


def _once_reloaded(client: FlaskClient, path: str) -> Any:
    """The answer to ``path`` once the reload in the background has finished."""
    for _ in range(100):
        served = client.get(path)
        if served.status_code == 200:
            return served
        time.sleep(0.05)
    raise AssertionError(served.get_data(as_text=True))
