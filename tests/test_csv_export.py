"""CSV downloads: same rows as the JSON pages, formula-safe, capped, limited, aborted on failure."""

from __future__ import annotations

import csv
import io
import os
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from flask import Flask

from reporting import execution
from reporting.app import create_app
from reporting.reports import REPORTS
from sediment.cli import main as cli_main
from sediment.core.migrations import upgrade_all
from tests.archiving import seed_shop
from tests.support import (
    REPO,
    DatabaseFactory,
    bulk_events,
    engines_of,
    env_for,
    make_settings,
    run_cli,
    settings_of,
)

TRICKY = ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tlead tab", "\rcarriage", "\nnewline",
          'has "quotes"', "comma, inside", "line\nbreak", "plain"]


def read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode(), newline="")))


def as_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value.endswith("Z") and "T" in value[:11]:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value)


def json_rows(client: Any, name: str, params: dict[str, str]) -> list[dict[str, str]]:
    rows, cursor = [], None
    while True:
        query = {**params, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        body = client.get(f"/api/v1/reports/{name}", query_string=query).get_json()
        rows += [{k: as_cell(v) for k, v in row.items()} for row in body["rows"]]
        cursor = body["page"]["next_cursor"]
        if cursor is None:
            return rows


@pytest.mark.parametrize("name", list(REPORTS))
def test_csv_has_the_rows_of_the_json_pages(shop: Flask, name: str) -> None:
    client = shop.test_client()
    for source in REPORTS[name].sources:
        params = {"source": source, "formula": "raw"}
        response = client.get(f"/api/v1/reports/{name}.csv", query_string=params)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert response.headers["Content-Disposition"] == (
            f'attachment; filename="{name}_{datetime.now(UTC).date().isoformat()}.csv"')
        got = read_csv(response.get_data())
        want = json_rows(client, name, {"source": source})
        assert got == want, f"{name} source={source}"
        assert int(response.headers["X-Row-Count"]) == len(want)


def add_tricky_rows(primary: sa.Engine) -> None:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    with primary.begin() as connection:
        for offset, text in enumerate(TRICKY):
            connection.execute(sa.text(
                "INSERT INTO customers (id, name, email, country, created_at) "
                "VALUES (:id, :name, :email, 'DE', :now)"),
                {"id": 900 + offset, "name": text, "email": f"t{offset}@x", "now": now})
            connection.execute(sa.text(
                "INSERT INTO events (id, occurred_at, kind, customer_id, order_id, detail) "
                "VALUES (:id, :now, 'note', :customer, :order, :detail)"),
                {"id": 90000 + offset, "now": now, "customer": 900 + offset,
                 "order": -5 - offset, "detail": text})


@pytest.mark.parametrize("source", ["primary", "all"])  # COPY path on PostgreSQL, chunked path
def test_formula_cells_are_escaped_and_quoting_round_trips(
    app: Flask, primary: sa.Engine, source: str
) -> None:
    add_tricky_rows(primary)
    client = app.test_client()
    safe = client.get("/api/v1/reports/events.csv",
                      query_string={"source": source, "kind": "note", "sort": "id"})
    raw = client.get("/api/v1/reports/events.csv",
                     query_string={"source": source, "kind": "note", "sort": "id",
                                   "formula": "raw"})
    escaped_rows, raw_rows = read_csv(safe.get_data()), read_csv(raw.get_data())
    assert [r["detail"] for r in raw_rows] == TRICKY
    for row, text in zip(escaped_rows, TRICKY, strict=True):
        dangerous = text[0] in "=+-@\t\r\n"
        assert row["detail"] == ("'" + text if dangerous else text)
        assert row["customer_name"] == ("'" + text if dangerous else text)
        assert int(row["order_id"]) < 0, "numbers, negative ones included, are left alone"
    frame = pd.read_csv(io.BytesIO(raw.get_data()), keep_default_na=False)
    assert list(frame["detail"]) == TRICKY
    assert list(frame["order_id"]) == [-5 - i for i in range(len(TRICKY))]


def test_bad_csv_requests_are_problems(app: Flask) -> None:
    client = app.test_client()
    for query, code in (("limit=10", "unknown_parameter"), ("formula=maybe", "invalid_value"),
                        ("colour=red", "unknown_parameter")):
        response = client.get(f"/api/v1/reports/orders.csv?{query}")
        assert response.status_code == 400 and response.get_json()["code"] == code
    assert client.get("/api/v1/reports/nope.csv").status_code == 404


def test_row_cap_is_announced_before_the_first_byte(
    databases: DatabaseFactory, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    capped = create_app(make_settings(primary.url.render_as_string(hide_password=False),
                                      archive.url.render_as_string(hide_password=False),
                                      SEDIMENT_REPORTS__CSV_MAX_ROWS="100"))
    response = capped.test_client().get("/api/v1/reports/events.csv")
    assert response.status_code == 413
    body = response.get_json()
    assert body["code"] == "export_too_large" and "900" in body["detail"]


def test_concurrent_exports_are_limited(
    primary: sa.Engine, archive: sa.Engine, app: Flask
) -> None:
    seed_shop(primary, archive)
    single = create_app(make_settings(primary.url.render_as_string(hide_password=False),
                                      archive.url.render_as_string(hide_password=False),
                                      SEDIMENT_REPORTS__CSV_MAX_CONCURRENT="1"))
    client = single.test_client()
    first = client.get("/api/v1/reports/events.csv", buffered=False)
    assert first.status_code == 200
    second = client.get("/api/v1/reports/events.csv")
    assert second.status_code == 429 and second.headers["Retry-After"]
    first.close()
    assert client.get("/api/v1/reports/events.csv").status_code == 200


def test_failure_mid_stream_breaks_the_download(
    app: Flask, primary: sa.Engine, archive: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the first byte aborts the transfer; no error text enters the file."""
    bulk_events(primary, 3_000)
    calls = {"n": 0}
    fetch_rows = execution.fetch_rows

    def fail_third_chunk(*args, **kwargs):  # type: ignore[no-untyped-def]
        # Each database's first chunk, then PRIMARY's second, which is needed only after
        # the first 64 KiB have gone out. (Patched here, the failure is the same on the
        # SQLAlchemy path and on PostgreSQL's direct one.)
        calls["n"] += 1
        if calls["n"] == 3:
            raise sa.exc.OperationalError("SELECT ...", None, RuntimeError("server gone"))
        return fetch_rows(*args, **kwargs)

    monkeypatch.setattr(execution, "fetch_rows", fail_third_chunk)
    response = app.test_client().get("/api/v1/reports/events.csv?source=all", buffered=False)
    assert response.status_code == 200
    received = b""
    with pytest.raises(sa.exc.OperationalError):
        for chunk in response.response:
            received += chunk
    assert calls["n"] == 3
    assert received.startswith(b"id,occurred_at") and len(received) > 64 * 1024
    assert b"server gone" not in received and b"error" not in received.lower()


@pytest.mark.postgres
def test_copy_failure_mid_stream_breaks_the_download(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    # Far more than the queue (512 KiB) plus loopback socket buffers (several MB) can hold,
    # so the backend is still sending when it is terminated.
    with primary.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO customers (id, name, email, country, created_at) "
            "VALUES (1, 'Bulk', 'bulk@x', 'DE', now())"))
        connection.execute(sa.text(
            "INSERT INTO events (id, occurred_at, kind, customer_id, order_id, detail) "
            "SELECT g, now() - g * interval '1 second', 'login', 1, NULL, repeat('x', 100) "
            "FROM generate_series(1, 200000) AS s(g)"))
    response = app.test_client().get("/api/v1/reports/events.csv?source=primary",
                                     buffered=False)
    chunks = iter(response.response)
    first = next(chunks)
    assert first.startswith(b"id,occurred_at")
    from tests.support import admin_engine
    with admin_engine().connect() as connection:
        connection.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'sediment-reports' AND query LIKE 'COPY%'"))
    received = first
    with pytest.raises(sa.exc.DBAPIError):
        for chunk in chunks:
            received += chunk
    assert b"terminat" not in received
    # The dead connection left the pool: every connection the next requests get is alive.
    pool_size = settings_of(app).database.pool_size
    client = app.test_client()
    statuses = [client.get(path).status_code for _ in range(pool_size + 1)
                for path in ("/api/v1/reports/events.csv?source=primary&kind=none",
                             "/api/v1/reports/events?source=primary&limit=1")]
    assert statuses == [200] * len(statuses)


@pytest.mark.parametrize("source", ["primary", "all"])
def test_memory_stays_flat_as_downloads_grow(
    app: Flask, primary: sa.Engine, source: str
) -> None:
    bulk_events(primary, 60_000)
    client = app.test_client()

    def peak(kind: str) -> int:
        tracemalloc.start()
        response = client.get("/api/v1/reports/events.csv",
                              query_string={"source": source, "kind": kind}, buffered=False)
        size = sum(len(chunk) for chunk in response.response)
        response.close()
        _, highest = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert size > 0
        return highest

    with primary.begin() as connection:  # a tenth of the rows get their own kind
        connection.execute(sa.text("UPDATE events SET kind = 'view' WHERE id % 10 = 0"))
    small, large = peak("view"), peak("login")
    assert large < small + 5 * 2**20, f"{small=} {large=}: memory grew with the download"


def test_a_download_on_a_connection_idle_past_the_statement_timeout_completes(
        databases: DatabaseFactory) -> None:
    """The statement deadline starts with the download, not with whatever the pooled
    connection last ran: on SQLite the fast path's statements on the raw cursor never set
    it, and a download on a connection idle for longer than the timeout was interrupted."""
    app = create_app(make_settings(*databases.pair("csv_idle"),
                                   SEDIMENT_REPORTS__STATEMENT_TIMEOUT_MS="1000"))
    engines = engines_of(app)
    upgrade_all(engines)
    bulk_events(engines.primary, 20_000)
    with app.app_context():
        from reporting.state import state_of

        reports = state_of(app).report_databases.engines["primary"]
        opened = [reports.connect() for _ in range(2)]  # two pooled connections, both used
        for connection in opened:
            connection.exec_driver_sql("SELECT 1")
            connection.close()
        time.sleep(1.3)
        response = app.test_client().get("/api/v1/reports/events.csv",
                                         query_string={"source": "primary"})
        assert response.status_code == 200
        assert response.get_data().count(b"\n") == 20_001
    engines.dispose()


def test_cli_writes_the_same_csv(databases: DatabaseFactory, tmp_path: Any) -> None:
    urls = databases.pair("csv_cli")
    app = create_app(make_settings(*urls))
    upgrade_all(engines_of(app))
    env = env_for(*urls)
    assert run_cli("seed", "--customers", "20", "--orders", "60", "--events", "200",
                   env=env).returncode == 0
    target = tmp_path / "orders.csv"
    done = run_cli("report", "orders", "--param", "status=closed", "--sort", "id",
                   "--csv", str(target), env=env)
    assert done.returncode == 0, done.stderr
    body = app.test_client().get("/api/v1/reports/orders.csv?status=closed&sort=id").get_data()
    assert target.read_bytes() == body
    bad = run_cli("report", "orders", "--param", "status=lost", "--csv", str(target), env=env)
    assert bad.returncode == 2 and "status" in bad.stderr and "\n" not in bad.stderr.strip()
    piped = subprocess.run([sys.executable, str(REPO / "run_service.py"), "report", "orders",
                            "--param", "status=closed", "--sort", "id", "--csv", "-"],
                           capture_output=True, cwd=REPO, env={**os.environ, **env}, timeout=120)
    assert piped.returncode == 0 and piped.stdout == body  # the progress goes to stderr


@pytest.mark.parametrize(("where", "exit_code", "says"), [
    ("", 2, "is a folder: name the file to write"),
    ("missing/orders.csv", 2, "its folder does not exist"),
])
def test_cli_refuses_a_target_it_cannot_write_in_one_line(
        databases: DatabaseFactory, tmp_path: Path, where: str, exit_code: int,
        says: str) -> None:
    """A folder or a missing one was a traceback (IsADirectoryError after the whole export
    had been written beside it, and left there as ``.NAME.partial``)."""
    urls = databases.pair("csv_target")
    upgrade_all(engines_of(create_app(make_settings(*urls))))
    target = tmp_path / where
    refused = run_cli("report", "orders", "--csv", str(target), env=env_for(*urls))
    assert refused.returncode == exit_code, refused.stderr
    assert refused.stderr.strip() == f"sediment: --csv {str(target)!r}: {says}"
    assert list(tmp_path.iterdir()) == [] and not tmp_path.parent.joinpath(
        f".{tmp_path.name}.partial").exists()


@pytest.mark.sqlite
def test_cli_never_replaces_a_database_or_the_settings_file(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    """``report orders --csv data/primary.sqlite3`` replaced PRIMARY with a CSV."""
    urls = databases.pair("csv_protected")
    upgrade_all(engines_of(create_app(make_settings(*urls))))
    primary = Path(sa.engine.make_url(urls[0]).database or "")
    other = tmp_path / "app.db"
    with sa.create_engine(f"sqlite:///{other}").begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x integer)")
    lock = Path(f"{primary}.archive-orders.lock")  # as a run leaves it
    lock.write_text("1234")
    before = {path: path.read_bytes() for path in (other, lock, REPO / "settings.toml")}
    for target, says in [(primary, "PRIMARY's database"),
                         (Path(f"{primary}-wal"), "PRIMARY's wal file"),
                         (other, "a SQLite database"),
                         (lock, "an archival runner's lock file"),
                         (REPO / "settings.toml", "the settings file")]:
        refused = run_cli("report", "orders", "--csv", str(target), env=env_for(*urls))
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip() == (f"sediment: --csv {str(target)!r}: is {says}, which "
                                          "the CSV would replace; name another file")
    assert {path: path.read_bytes() for path in before} == before
    assert primary.read_bytes().startswith(b"SQLite format 3\x00")  # a command may write it


def test_an_export_failing_midway_leaves_no_file(
        databases: DatabaseFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docstring promised no partial file after a failed export, but nothing removed
    ``.NAME.partial`` when the database failed (or the disk filled) halfway."""
    urls = databases.pair("csv_midway")
    upgrade_all(engines_of(create_app(make_settings(*urls))))

    def failing(*_args: object) -> Iterator[bytes]:
        yield b"id,customer_id\n1,2\n"
        raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr("sediment.cli.stream_csv", failing)
    for name, value in env_for(*urls).items():
        monkeypatch.setenv(name, value)
    assert cli_main(["report", "orders", "--csv", str(tmp_path / "orders.csv")]) == 1
    assert list(tmp_path.iterdir()) == []


def sqlite_download_by_both_paths(app: Flask, formula: str,
                                  **params: str) -> tuple[bytes, bytes]:
    """The events CSV through the SQLite fast path and through the general path."""
    from reporting import csv_export
    from reporting.request import parse_request
    from reporting.state import state_of

    databases = state_of(app).report_databases
    query = {"source": ["primary"], "formula": [formula], "sort": ["id"],
             **{name: [value] for name, value in params.items()}}
    request = parse_request(REPORTS["events"], query, default_limit=10, max_limit=1000,
                            export=True)
    assert csv_export._sqlite_stream(databases, request, escape=request.escape_formulas) \
        is not None
    fast = b"".join(csv_export.stream_csv(databases, request))
    general = b"".join(csv_export._chunked_stream(databases, request,
                                                  escape=request.escape_formulas))
    return fast, general


@pytest.mark.sqlite
@pytest.mark.parametrize("formula", ["escape", "raw"])
@pytest.mark.parametrize("where", ["id % 2 = 0", "true"], ids=["mixed", "alone"])
@pytest.mark.parametrize("stored", [
    "2026-03-04 05:06:07.123456",        # as SQLAlchemy writes it
    "2026-03-04 05:06:07",               # as SQLite's datetime() writes it
    "2026-03-04 05:06:07+00:00",         # as sqlite3's default adapter writes an aware one
    "2026-03-04 05:06:07.123456+00:00",
])
def test_sqlite_downloads_formatted_by_sqlite_equal_the_general_path(
        app: Flask, primary: sa.Engine, stored: str, where: str, formula: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQLite fast path (reporting.sqlite_csv) formats the cells a column at a time, and
    writes the bytes the general path writes, for every timestamp form it knows (alone in
    a column or mixed with another), formulas escaped or not, quotes, commas, line breaks
    and empty cells."""
    from reporting import sqlite_csv

    formatted_in_python: list[Any] = []
    in_python = sqlite_csv.timestamp_in_python

    def counted(*args: Any) -> Any:
        formatter = in_python(*args)

        def formatted(value: Any) -> Any:
            formatted_in_python.append(value)
            return formatter(value)
        return formatted

    monkeypatch.setattr(sqlite_csv, "timestamp_in_python", counted)
    add_tricky_rows(primary)
    with primary.begin() as connection:
        connection.execute(sa.text(f"UPDATE events SET occurred_at = :stored WHERE {where}"),
                           {"stored": stored})
        connection.execute(sa.text("UPDATE events SET detail = '' WHERE id % 3 = 0"))
    fast, general = sqlite_download_by_both_paths(app, formula)
    assert fast == general
    assert fast.count(b"\r\n") > len(TRICKY)
    assert formatted_in_python == [], "known timestamp forms were parsed as datetimes"
    # One column: Python's csv writes an empty cell alone on its line as "".
    fast, general = sqlite_download_by_both_paths(app, formula, columns="detail")
    assert fast == general and b'\r\n""\r\n' in fast


@pytest.mark.sqlite
@pytest.mark.parametrize("odd", [
    "UPDATE events SET occurred_at = '2026-03-04 05:06:07.5' WHERE id % 2 = 0",  # other form
    "UPDATE events SET order_id = 1e20 WHERE id % 2 = 0",     # a REAL: written as repr()
    "UPDATE events SET detail = 'a' || char(0) || 'b' WHERE id % 2 = 0",  # text with a NUL
    "UPDATE events SET detail = x'00ff' WHERE id % 2 = 0",    # a BLOB: written as hex
    "UPDATE events SET order_id = 'x,y' WHERE id % 2 = 0",  # text in an integer column
])
def test_sqlite_downloads_of_unusual_stored_values_equal_the_general_path(
        app: Flask, primary: sa.Engine, odd: str) -> None:
    """Values stored unlike what the schema declares (SQLite keeps them) come out of the
    fast path as the general path writes them: a timestamp in another form (or a number)
    is formatted in Python for that one cell, the rest by the csv writer."""
    add_tricky_rows(primary)
    with primary.begin() as connection:
        connection.execute(sa.text(odd))
    fast, general = sqlite_download_by_both_paths(app, "escape")
    assert fast == general
    assert fast.count(b"\r\n") > len(TRICKY)
    assert b"b'\\x" not in fast  # a blob as hex, not as Python writes bytes


@pytest.mark.sqlite
@pytest.mark.parametrize("op", ["gte", "lt"])
def test_sqlite_downloads_filter_on_timestamps_as_the_general_path(
        app: Flask, primary: sa.Engine, op: str) -> None:
    """The fast path ran its statement with the filter's datetime unprocessed (only the
    expanded parameters' processors were applied), so ``sqlite3``'s adapter spelled it
    ``...07.123456+00:00``: the row stored at that very instant fell on the wrong side."""
    add_tricky_rows(primary)  # at 2026-05-01
    with primary.begin() as connection:
        connection.execute(sa.text("UPDATE events SET occurred_at = :at WHERE id = 90003"),
                           {"at": "2026-05-04 05:06:07.123456"})
    fast, general = sqlite_download_by_both_paths(
        app, "escape", **{f"occurred_at[{op}]": "2026-05-04T05:06:07.123456Z"})
    assert fast == general
    ids = [int(row["id"]) for row in read_csv(fast)]
    assert ids == ([90003] if op == "gte" else [90000 + i for i in range(len(TRICKY)) if i != 3])


def test_cli_streams_into_a_named_pipe_and_leaves_it_a_pipe(databases: DatabaseFactory,
                                                            tmp_path: Path) -> None:
    """A written file is renamed into place; renaming over a pipe or a device (``/dev/stdout``
    run as root) replaced it with a regular file."""
    urls = databases.pair("csv_pipe")
    upgrade_all(engines_of(create_app(make_settings(*urls))))
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()), daemon=True)
    reader.start()
    done = run_cli("report", "orders", "--csv", str(pipe), env=env_for(*urls))
    reader.join(timeout=30)
    assert done.returncode == 0, done.stderr
    assert received == [b"id,customer_id,customer_name,status,placed_at,closed_at,items,"
                        b"total_cents,paid_cents\r\n"]
    assert stat.S_ISFIFO(pipe.stat().st_mode) and sorted(tmp_path.iterdir()) == [pipe]
