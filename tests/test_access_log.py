"""Each request logged once with its id, returned as X-Request-Id; JSON log lines; probes."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from flask.testing import FlaskClient

from reporting.app import create_app
from sediment.core.logs import JsonFormatter
from tests.support import make_settings


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sediment.access"]


def test_each_request_is_logged_once_with_the_id_it_returns(
        client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sediment.access"):
        response = client.get("/api/v1/reports/orders?limit=3")
    (record,) = access_records(caplog)
    identifier = response.headers["X-Request-Id"]
    assert len(identifier) >= 24
    assert client.get("/livez").headers["X-Request-Id"] != identifier
    assert (record.method, record.path, record.status) == (  # type: ignore[attr-defined]
        "GET", "/api/v1/reports/orders", 200)
    assert record.request_id == identifier  # type: ignore[attr-defined]
    assert record.duration_ms >= 0  # type: ignore[attr-defined]
    assert identifier in record.getMessage()


@pytest.mark.parametrize(("offered", "kept"), [
    ("lb-7f3a:42", True), ("a" * 64, True), ("a" * 65, False), ("has space", False),
    ("<script>", False), ("", False),
])
def test_a_clients_request_id_is_kept_when_it_is_a_plain_token(
        client: FlaskClient, offered: str, kept: bool) -> None:
    response = client.get("/livez", headers={"X-Request-Id": offered})
    assert (response.headers["X-Request-Id"] == offered) is kept


def test_errors_carry_the_request_id_too(client: FlaskClient,
                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sediment.access"):
        response = client.get("/api/v1/reports/nothing", headers={"X-Request-Id": "abc-1"})
    assert response.status_code == 404 and response.headers["X-Request-Id"] == "abc-1"
    (record,) = access_records(caplog)
    assert record.status == 404  # type: ignore[attr-defined]


def test_json_log_lines_carry_the_request_fields(
        client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sediment.access"):
        client.get("/livez", headers={"X-Request-Id": "req-9"})
    (record,) = access_records(caplog)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    body = json.loads(line)
    assert body["request_id"] == "req-9" and body["status"] == 200
    assert body["method"] == "GET" and body["path"] == "/livez"
    assert body["level"] == "INFO" and body["logger"] == "sediment.access"
    assert body["time"].endswith("+00:00")


def test_json_log_lines_hold_a_traceback_as_one_member() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed %s",
                                                   ("here",), exc_info=sys.exc_info())
    body = json.loads(JsonFormatter().format(record))
    assert body["message"] == "failed here" and "ValueError: boom" in body["exception"]


def test_livez_asks_no_database_and_readyz_checks_both(client: FlaskClient) -> None:
    assert client.get("/livez").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.get_json()["databases"]) == {"primary", "archive"}


def test_with_the_databases_down_the_process_is_live_but_not_ready() -> None:
    down = "postgresql://root@127.0.0.1:9/{}?connect_timeout=2"
    app = create_app(make_settings(down.format("p"), down.format("a")))
    client = app.test_client()
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 503
