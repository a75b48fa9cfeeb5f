"""Reports declared as SQL files: the demo's two rewrites equal the Python reports they
rewrite, row for row; every kind of bad file is refused naming the file and the line; a
reload keeps serving the previous set when the new one is bad.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from reporting.sql_reports import ReportFileError, check_against, parse_file
from reporting.state import state_of
from sediment.service import build_service, reload_catalog
from tests.archiving import run, seed_shop, small_batches
from tests.support import (
    REPO,
    DatabaseFactory,
    env_for,
    free_port,
    make_settings,
    run_cli,
    walk_pages,
)


def pages(client: FlaskClient, path: str, query: str) -> list[dict[str, object]]:
    return walk_pages(client, path, query, limit=9)


@pytest.fixture
def archived_shop(app: Flask, primary: sa.Engine, archive: sa.Engine) -> Flask:
    seed_shop(primary, archive)
    orders, _ = small_batches(app)
    run(app, primary, archive, orders)
    return app


@pytest.mark.parametrize("query", [
    "source=all", "source=primary", "source=archive", "status[in]=closed,cancelled",
    "sort=total_cents&total_cents[gte]=5000", "sort=-placed_at&customer_id[in]=3,4,5",
])
def test_the_orders_sql_file_equals_the_orders_report(archived_shop: Flask, query: str) -> None:
    client = archived_shop.test_client()
    python = pages(client, "/api/v1/reports/orders", query)
    assert python, "the comparison needs rows"
    assert pages(client, "/api/v1/reports/orders-sql", query) == python


@pytest.mark.parametrize("query", [
    "source=all", "source=archive", "sort=name", "revenue_cents[gte]=20000&sort=id",
    "open_orders[gte]=1",
])
def test_the_customer_summary_sql_file_combines_exactly_as_the_python_report(
        archived_shop: Flask, query: str) -> None:
    client = archived_shop.test_client()
    python = pages(client, "/api/v1/reports/customer-summary", query)
    assert python, "the comparison needs rows"
    assert pages(client, "/api/v1/reports/customer-summary-sql", query) == python


def test_a_parameter_reaches_the_sql(archived_shop: Flask) -> None:
    client = archived_shop.test_client()
    everything = pages(client, "/api/v1/reports/customer-summary-sql", "sort=id")
    large = pages(client, "/api/v1/reports/customer-summary-sql",
                  "sort=id&min_total_cents=30000")
    assert [r["id"] for r in large] == [r["id"] for r in everything]
    assert all(a["revenue_cents"] <= b["revenue_cents"] for a, b in zip(large, everything,
                                                                         strict=True))
    assert sum(r["revenue_cents"] for r in large) < sum(r["revenue_cents"] for r in everything)
    bad = client.get("/api/v1/reports/customer-summary-sql?min_total_cents=1;DROP")
    assert bad.status_code == 400 and bad.get_json()["param"] == "min_total_cents"


GOOD = """-- title = "Big orders"
-- key = ["id"]
-- [columns]
-- id = "integer"
-- status = "string"
-- [params.minimum]
-- type = "integer"
-- default = 0
SELECT id, status FROM orders
WHERE id >= :minimum
"""

#: A bad file per kind: (what is wrong, the file's text, the line named, words of the message).
BAD = [
    ("header TOML", GOOD.replace('-- key = ["id"]', "-- key = [id"), 2, "not valid TOML"),
    ("unknown key", GOOD.replace("-- key", '-- colour = "red"\n-- key'), 1, "colour"),
    ("no title", GOOD.replace('-- title = "Big orders"\n', ""), 1, "title"),
    ("no columns", GOOD.split("-- [columns]")[0] + "SELECT 1 AS id\n", 1, "[columns]"),
    ("bad type", GOOD.replace('status = "string"', 'status = "text"'), 1, "type must be"),
    ("key not a column", GOOD.replace('key = ["id"]', 'key = ["nope"]'), 1, "key must list"),
    ("undeclared parameter", GOOD.replace("WHERE id >= :minimum", "WHERE id >= :minimum "
                                          "AND status = :wanted"), 10, ":wanted"),
    ("unused parameter", GOOD.replace("WHERE id >= :minimum", ""), 1, "never uses"),
    ("bad default", GOOD.replace("default = 0", 'default = "many"'), 1, "default"),
    ("not a select", GOOD.replace("SELECT id, status FROM orders", "DELETE FROM orders"), 9,
     "one SELECT"),
    ("two statements", GOOD.replace("WHERE id >= :minimum", "WHERE id >= :minimum; "
                                    "DELETE FROM orders"), 10, "one statement"),
    ("filter on no column", GOOD.replace("-- [params", '-- [filters]\n-- nope = ["eq"]\n'
                                         "-- [params"), 1, "[filters]"),
    ("bad combine", GOOD.replace('-- title', '-- kind = "aggregate"\n-- title').replace(
        "-- [params", '-- [combine]\n-- status = "average"\n-- [params'), 1, "[combine]"),
    ("built-in name", GOOD, 1, "exists already"),
]
#: Bad files only a database can refuse: (what, text, line named, words of the message).
BAD_IN_DATABASE = [
    ("unknown table", GOOD.replace("FROM orders", "FROM no_such_table"), 9, "no_such_table"),
    ("unknown column", GOOD.replace("WHERE id >= :minimum", "WHERE nope >= :minimum"), 10,
     "nope"),
    ("column not returned", GOOD.replace("SELECT id, status", "SELECT id"), 9, "'status'"),
    ("root not archived", GOOD.replace("-- key", '-- root = "customers"\n-- key'), 1,
     "not a table an archival policy moves"),
    ("rows without the root's key", GOOD.replace('-- key = ["id"]',
                                                 '-- root = "orders"\n-- key = ["status"]'),
     1, "key must hold root 'orders'"),
]


@pytest.mark.parametrize(("case", "text", "line", "words"), BAD, ids=[c[0] for c in BAD])
def test_a_bad_sql_file_is_refused_naming_the_file_and_line(
        tmp_path: Path, case: str, text: str, line: int, words: str) -> None:
    name = "orders" if case == "built-in name" else "big-orders"
    path = tmp_path / f"{name}.sql"
    path.write_text(text)
    settings = make_settings("sqlite:///x.sqlite3", "sqlite:///y.sqlite3",
                             SEDIMENT_REPORTS__SQL_FOLDER=str(tmp_path))
    from sediment.service import report_files
    with pytest.raises(ReportFileError) as raised:
        report_files(settings)
    assert f"{path}:{line}:" in str(raised.value) and words in str(raised.value), raised.value


@pytest.mark.parametrize(("content", "words"), [
    (None, "cannot be read: Is a directory"),
    ("-- title = \"Big\"\nSELECT 1".encode("utf-16"), "not UTF-8 text (byte 0)"),
])
def test_a_sql_file_that_cannot_be_read_is_refused_naming_it(
        tmp_path: Path, content: bytes | None, words: str) -> None:
    """A file saved as UTF-16, or a folder named ``*.sql``, stopped startup with a
    UnicodeDecodeError or IsADirectoryError traceback."""
    path = tmp_path / "big-orders.sql"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    settings = make_settings("sqlite:///x.sqlite3", "sqlite:///y.sqlite3",
                             SEDIMENT_REPORTS__SQL_FOLDER=str(tmp_path))
    from sediment.service import report_files
    with pytest.raises(ReportFileError) as raised:
        report_files(settings)
    assert str(raised.value) == f"report file {path}:0: {words}" + (
        ": save it as UTF-8" if content else "")


@pytest.mark.parametrize(("case", "text", "line", "words"), BAD_IN_DATABASE,
                         ids=[c[0] for c in BAD_IN_DATABASE])
def test_a_sql_file_the_database_refuses_is_refused_naming_the_line(
        app: Flask, tmp_path: Path, case: str, text: str, line: int, words: str) -> None:
    path = tmp_path / "big-orders.sql"
    path.write_text(text)
    found = parse_file(path)
    with pytest.raises(ReportFileError) as raised:
        check_against(found, state_of(app).report_databases)
    message = str(raised.value)
    assert words in message and f"{path}:{line}:" in message, message


def test_serve_refuses_to_start_on_a_bad_file_in_one_line(
        databases: DatabaseFactory, tmp_path: Path) -> None:
    (tmp_path / "big-orders.sql").write_text(GOOD.replace("FROM orders", "FROM no_such_table"))
    env = {**env_for(*databases.pair("badsql")), "SEDIMENT_REPORTS__SQL_FOLDER": str(tmp_path),
           "SEDIMENT_SCHEDULER__ENABLED": "false"}
    result = run_cli("serve", "--port", str(free_port()), env=env, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sediment: report file ") and "big-orders.sql:9:" in last, last
    assert "Traceback" not in result.stderr


def test_reload_serves_new_files_and_keeps_the_previous_set_when_one_is_bad(
        urls: tuple[str, str], migrated_app: Flask, tmp_path: Path) -> None:
    settings = make_settings(*urls, SEDIMENT_REPORTS__SQL_FOLDER=str(tmp_path))
    service = build_service(settings)
    try:
        client = service.app.test_client()
        assert client.get("/api/v1/reports/big-orders").status_code == 404
        (tmp_path / "big-orders.sql").write_text(GOOD)
        assert reload_catalog(service).ok
        assert client.get("/api/v1/reports/big-orders?minimum=3").status_code == 200
        (tmp_path / "big-orders.sql").write_text(GOOD.replace("FROM orders", "FROM nothing"))
        (tmp_path / "other.sql").write_text(GOOD)
        assert not reload_catalog(service).ok
        assert client.get("/api/v1/reports/big-orders").status_code == 200  # still served
        assert client.get("/api/v1/reports/other").status_code == 404
    finally:
        service.engines.dispose()


#: Quoted text holding what SQLAlchemy's text() or Sediment's checks took for SQL.
NOTE = "at :noon; or at 10:30 (:a::b)"
#: Valid SQL whose quotes and comments hold what Sediment looks for in code: a ``:word``,
#: a ``;``, and a last-line ``--`` comment after the final ``;``.
QUOTES_AND_COMMENTS = GOOD.replace(
    '-- status = "string"', '-- status = "string"\n-- note = "string"').replace(
    "SELECT id, status FROM orders\nWHERE id >= :minimum\n",
    f"SELECT id, status, '{NOTE}' AS \"note\"  -- see :remark; a comment\n"
    "FROM orders /* one; two :three */\nWHERE id >= :minimum;  -- the end\n")


def test_quoted_text_and_comments_in_a_sql_file_are_read_as_sql(
        urls: tuple[str, str], migrated_app: Flask, tmp_path: Path,
        primary: sa.Engine, archive: sa.Engine) -> None:
    """A ``:word`` in quoted text was bound as a parameter (startup failed: "A value is
    required for bind parameter 'noon'", naming no file), one in a comment was refused as
    undeclared, a ``;`` in a comment or before a last comment as a second statement, and a
    last-line comment commented out the parenthesis closing the body ("incomplete
    input"). On PostgreSQL a placeholder cast its way, ``:minimum::int``, reached the
    database unbound ("syntax error at or near ':'")."""
    seed_shop(primary, archive)
    path = tmp_path / "noted.sql"
    path.write_text(QUOTES_AND_COMMENTS if primary.dialect.name == "sqlite" else
                    QUOTES_AND_COMMENTS.replace(":minimum;", ":minimum::int;"))
    check_against(parse_file(path), state_of(migrated_app).report_databases)
    service = build_service(make_settings(*urls, SEDIMENT_REPORTS__SQL_FOLDER=str(tmp_path)))
    try:
        client = service.app.test_client()
        page = client.get("/api/v1/reports/noted?minimum=3&limit=2&sort=-id")
        assert page.status_code == 200, page.get_json()
        assert [row["note"] for row in page.get_json()["rows"]] == [NOTE] * 2
        download = client.get("/api/v1/reports/noted.csv?minimum=3")
        assert download.status_code == 200
        header, *rows = csv.reader(io.StringIO(download.get_data(as_text=True)))
        assert header == ["id", "status", "note"] and len(rows) > 2
        assert {row[2] for row in rows} == {NOTE}
        assert min(int(row[0]) for row in rows) == 3
    finally:
        service.engines.dispose()

@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_a_running_server(databases: DatabaseFactory, tmp_path: Path,
                                         workers: int) -> None:
    """One process reloads in place; with gunicorn, ``serve`` passes SIGHUP on and gunicorn
    replaces every worker, each reading the new files as it starts."""
    port = free_port()
    env = {**os.environ, **env_for(*databases.pair("sighup")),
           "SEDIMENT_REPORTS__SQL_FOLDER": str(tmp_path), "SEDIMENT_SCHEDULER__ENABLED": "false"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run_service.py"), "serve", "--port", str(port),
         "--workers", str(workers)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/api/v1/reports/big-orders"
    try:
        assert _status_when_up(url, process) == 404
        (tmp_path / "big-orders.sql").write_text(GOOD)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _status(url) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [_status(url) for _ in range(6)] == [200] * 6  # whichever worker answers
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]
    if workers == 1:
        assert "reloaded: " in output, output[-3000:]
    else:
        assert "Handling signal: hup" in output, output[-3000:]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()  # its response's socket: a ResourceWarning once collected
        return int(error.code)
    except OSError:
        return 0


def _status_when_up(url: str, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        status = _status(url)
        if status:
            return status
        time.sleep(0.3)
    raise AssertionError("the server did not come up")
