"""The HTTP surface: catalog, errors as problem details, methods, counts, read-only, 503s."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from reporting.app import create_app
from reporting.reports import REPORTS
from reporting.state import state_of
from sediment.core.databases import PRIMARY
from tests.archiving import seed_shop
from tests.support import make_settings


@pytest.fixture
def client(client: FlaskClient, primary: sa.Engine, archive: sa.Engine) -> FlaskClient:
    """The test client, over the seeded demo shop."""
    seed_shop(primary, archive)
    return client


def test_catalog_describes_every_report(client: FlaskClient) -> None:
    body = client.get("/api/v1/reports").get_json()
    # The built-in reports, then the demo's SQL files (reporting/reports/sql) by name.
    assert [r["name"] for r in body["reports"]] == [*REPORTS, "customer-summary-sql",
                                                    "orders-sql"]
    orders = body["reports"][0]
    assert {"name", "title", "description", "params", "filters", "sort_keys", "sources",
            "columns", "default_sort"} <= orders.keys()
    assert {"column": "status", "type": "string", "operators": ["eq", "ne", "in"]}.items() <= \
        orders["filters"][1].items()


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [
        ("colour=red", "unknown_parameter", "colour"),
        ("customer_id=abc", "invalid_value", "customer_id"),
        ("customer_id=99999999999999999999999", "invalid_value", "customer_id"),
        ("placed_at[gte]=yesterday", "invalid_value", "placed_at[gte]"),
        # In range as written, out of range in UTC (found by the schemathesis run)
        ("placed_at[gte]=0001-01-01T00:00:00%2B05:00", "invalid_value", "placed_at[gte]"),
        ("placed_at[lt]=9998-12-31T23:00:00-05:00", "invalid_value", "placed_at[lt]"),
        ("status=lost", "invalid_value", "status"),
        ("status[gte]=closed", "unknown_operator", "status[gte]"),
        ("sort=customer_name", "invalid_sort", "sort"),
        ("limit=0", "invalid_limit", "limit"),
        ("limit=1001", "invalid_limit", "limit"),
        ("limit=-5", "invalid_limit", "limit"),
        ("source=elsewhere", "invalid_source", "source"),
        ("count=lots", "invalid_count", "count"),
        ("cursor=garbage", "invalid_cursor", "cursor"),
        ("status=closed&status=open", "invalid_value", "status"),
    ],
)
def test_bad_requests_are_400_problems(
    client: FlaskClient, query: str, code: str, param: str
) -> None:
    response = client.get(f"/api/v1/reports/orders?{query}")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert (body["code"], body["param"], body["status"]) == (code, param, 400)
    assert body["detail"] and body["title"] and body["type"]


def test_cursor_is_bound_to_its_query(client: FlaskClient) -> None:
    first = client.get("/api/v1/reports/orders?limit=2").get_json()
    cursor = first["page"]["next_cursor"]
    assert client.get(f"/api/v1/reports/orders?limit=2&cursor={cursor}").status_code == 200
    for other in ("sort=id", "status=closed", "source=primary"):
        response = client.get(f"/api/v1/reports/orders?limit=2&{other}&cursor={cursor}")
        assert response.get_json()["code"] == "invalid_cursor", other
    foreign = client.get(f"/api/v1/reports/events?limit=2&cursor={cursor}")
    assert foreign.get_json()["code"] == "invalid_cursor"
    tampered = cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB")
    assert client.get(f"/api/v1/reports/orders?cursor={tampered}").status_code == 400


def test_unknown_report_is_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/reports/invoices")
    assert response.status_code == 404
    assert response.get_json()["code"] == "unknown_report"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_only_get_and_head(client: FlaskClient, method: str) -> None:
    response = client.open("/api/v1/reports/orders", method=method)
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert "GET" in response.headers["Allow"]
    assert client.head("/api/v1/reports/orders").status_code == 200


def test_counts_are_labelled(client: FlaskClient, backend: str, primary: sa.Engine) -> None:
    none = client.get("/api/v1/reports/events?limit=1").get_json()["count"]
    assert none == {"value": None, "kind": "none"}
    exact = client.get("/api/v1/reports/events?limit=1&count=exact").get_json()["count"]
    assert exact == {"value": 900, "kind": "exact"}
    filtered = client.get("/api/v1/reports/events?kind=login&count=exact").get_json()
    with primary.connect() as connection:
        logins = connection.execute(sa.text("SELECT count(*) FROM events WHERE kind = 'login'"))
        assert filtered["count"]["value"] == logins.scalar_one() > 0  # nothing archived yet
    estimated = client.get("/api/v1/reports/events?limit=1&count=estimated").get_json()["count"]
    if backend == "postgres":
        assert estimated["kind"] == "estimated" and estimated["value"] > 0
    else:
        assert estimated == {"value": 900, "kind": "exact"}  # SQLite has no planner estimate


def test_report_connections_refuse_writes(app: Flask) -> None:
    for engine in state_of(app).report_databases.engines.values():
        with engine.connect() as connection, pytest.raises(sa.exc.DBAPIError) as refused:
            connection.execute(sa.text("DELETE FROM events"))
        message = str(refused.value).lower()
        assert "read-only" in message or "readonly" in message


def test_unreachable_database_is_503_with_retry_after(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'p.sqlite3'}",
                                   "postgresql://nobody@127.0.0.1:1/none"))
    response = app.test_client().get("/api/v1/reports/events?source=archive")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.get_json()["code"] == "database_unavailable"


def test_statement_timeout_is_503(app: Flask, primary: sa.Engine, archive: sa.Engine,
                                  backend: str) -> None:
    slow = create_app(make_settings(primary.url.render_as_string(hide_password=False),
                                    archive.url.render_as_string(hide_password=False),
                                    SEDIMENT_REPORTS__STATEMENT_TIMEOUT_MS="1"))
    engine = state_of(slow).report_databases.engines[PRIMARY]
    busy = ("SELECT pg_sleep(0.2)" if backend == "postgres" else
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000000) "
            "SELECT count(*) FROM n")
    for _attempt in range(50):  # the 1 ms limit also binds the driver's first queries
        try:
            connection = engine.connect()  # (server version, settings): on a busy machine
            break                          # they can outlast it; the pool keeps this one
        except sa.exc.OperationalError:
            continue
    else:
        pytest.fail("no connection within a 1 ms statement timeout in 50 attempts")
    with connection, pytest.raises(sa.exc.OperationalError):
        connection.execute(sa.text(busy))
    from tests.support import bulk_events

    bulk_events(primary, 60_000)
    # A filter that reads every row (not just an index), so the count outlasts 1 ms.
    response = slow.test_client().get(
        "/api/v1/reports/events?source=primary&count=exact&kind[ne]=never")
    assert response.status_code == 503
    assert response.get_json()["code"] == "database_unavailable"


@pytest.mark.postgres
def test_a_dropped_report_connection_is_one_503_then_replaced(
    client: FlaskClient, primary: sa.Engine,
) -> None:
    """Report pages on PostgreSQL run on the psycopg2 cursor (reporting.pgfetch): a
    connection the server dropped must still be a 503, and must leave the pool."""
    page = "/api/v1/reports/events?source=primary&limit=5"
    assert client.get(page).status_code == 200
    with primary.connect() as connection:
        dropped = connection.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'sediment-reports' AND datname = current_database()"
        )).scalar_one()
    assert dropped >= 1
    failed = client.get(page)
    assert failed.status_code == 503
    assert failed.get_json()["code"] == "database_unavailable"
    assert [client.get(page).status_code for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize("limit", ["²", "①", "٣", "1_0", " 5"])
def test_a_limit_that_only_looks_like_digits_is_a_400(client: FlaskClient, limit: str) -> None:
    response = client.get("/api/v1/reports/events", query_string={"limit": limit})
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_limit"


@pytest.mark.parametrize(
    ("report", "values"),
    [
        ("orders", ["2026-01-01T00:00:00Z", "abc"]),     # key is an integer
        ("orders", [12, 5]),                              # sort value is a datetime
        ("orders", ["2026-01-01T00:00:00Z", True]),       # a boolean is not an integer
        ("events", ["not a time", 1]),
        ("customer-summary", ["lots", 1]),                # compared in Python: int < str
        ("customer-summary", [1, {"id": 2}]),
        ("top-products", [[1], 1]),
    ],
)
def test_a_signed_cursor_with_values_of_the_wrong_type_is_a_400(
    client: FlaskClient, app: Flask, report: str, values: list[object],
) -> None:
    """The signature only proves the service issued it under this key: the values inside
    are checked against the declared types before they reach a query."""
    from reporting.pagination import fingerprint, signed
    from reporting.request import parse_request

    settings = state_of(app).settings.reports
    request = parse_request(REPORTS[report], {}, default_limit=settings.default_limit,
                            max_limit=settings.max_limit)
    values = values[:1] + values[1:] * len(request.key)
    token = signed([fingerprint(request), values], app.config["SECRET_KEY"])
    response = client.get(f"/api/v1/reports/{report}", query_string={"cursor": token})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert (response.get_json()["code"], response.get_json()["param"]) == \
        ("invalid_cursor", "cursor")


def test_an_unexpected_error_is_a_500_with_a_request_id_logged_with_its_traceback(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("reporting.views.run_page", broken)
    response = client.get("/api/v1/reports/events")
    assert response.status_code == 500
    body = response.get_json()
    assert body["code"] == "internal_error" and len(body["request_id"]) >= 16
    assert "Traceback" not in response.get_data(as_text=True)
    logged = [r for r in caplog.records if body["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_a_database_error_that_is_not_an_outage_is_not_a_503(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only connection failures and timeouts ask the client to retry; a data error is the
    request's fault (400), and a broken statement the server's (500)."""
    def failing(error: Exception) -> object:
        def run(*_args: object) -> None:
            raise error
        return run

    data_error = sa.exc.DataError("SELECT", {}, Exception("value out of range"))
    monkeypatch.setattr("reporting.views.run_page", failing(data_error))
    response = client.get("/api/v1/reports/events")
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_value")
    broken_sql = sa.exc.ProgrammingError("SELECT", {}, Exception('relation "x" does not exist'))
    monkeypatch.setattr("reporting.views.run_page", failing(broken_sql))
    assert client.get("/api/v1/reports/events").status_code == 500
