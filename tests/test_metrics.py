"""``/metrics`` parses as Prometheus text and tells what the archiver and the API did."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from sediment.service import build_service
from tests.archiving import run, seed_shop, small_batches
from tests.support import make_settings


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["Content-Type"].count("charset") == 1
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


@pytest.fixture
def served(urls: tuple[str, str], app: Flask) -> Iterator[FlaskClient]:
    service = build_service(make_settings(*urls))
    try:
        yield service.app.test_client()
    finally:
        service.engines.dispose()


def test_an_archive_run_shows_in_the_metrics(served: FlaskClient, app: Flask,
                                             primary: sa.Engine, archive: sa.Engine) -> None:
    seed_shop(primary, archive)
    before = scrape(served)
    waiting = before[("sediment_archive_backlog_rows", (("policy", "orders"),
                                                        ("table", "orders")))]
    assert waiting > 0
    orders, _ = small_batches(app)
    outcome = run(app, primary, archive, orders)
    assert outcome.status == "done" and outcome.moved["orders"] > 0
    samples = scrape(served)
    for table, moved in outcome.moved.items():
        assert samples[("sediment_archive_rows_total",
                        (("policy", "orders"), ("table", table)))] == moved
    assert samples[("sediment_archive_batches_total", (("policy", "orders"),))] \
        == outcome.batches
    assert samples[("sediment_archive_runs_total",
                    (("policy", "orders"), ("status", "done")))] == 1
    assert samples[("sediment_archive_last_run_status",
                    (("policy", "orders"), ("status", "done")))] == 1
    assert samples[("sediment_archive_last_success_timestamp_seconds",
                    (("policy", "orders"),))] > 0
    assert ("sediment_archive_last_run_duration_seconds", (("policy", "orders"),)) in samples
    assert samples[("sediment_archive_lock_busy_total", (("policy", "orders"),))] == 0
    assert samples[("sediment_ledger_up", ())] == 1


def test_requests_rows_and_downloads_are_counted(served: FlaskClient, app: Flask,
                                                 primary: sa.Engine,
                                                 archive: sa.Engine) -> None:
    seed_shop(primary, archive)
    before = scrape(served)
    rows_key = ("sediment_report_rows_total", (("format", "json"), ("report", "orders")))
    csv_key = ("sediment_report_rows_total", (("format", "csv"), ("report", "events")))
    request_key = ("sediment_http_requests_total", (("method", "GET"),
                                                   ("route", "/api/v1/reports/<name>"),
                                                   ("status", "200")))
    page = served.get("/api/v1/reports/orders?limit=7")
    download = served.get("/api/v1/reports/events.csv")
    assert page.status_code == download.status_code == 200
    csv_rows = int(download.headers["X-Row-Count"])
    csv_body = download.get_data()  # streamed: counted once it has all gone out
    missing = served.get("/api/v1/reports/nothing")
    assert missing.status_code == 404
    after = scrape(served)
    assert after[rows_key] - before.get(rows_key, 0) == 7
    assert after[csv_key] - before.get(csv_key, 0) == csv_rows
    csv_bytes = ("sediment_report_bytes_total", (("format", "csv"), ("report", "events")))
    assert after[csv_bytes] - before.get(csv_bytes, 0) == len(csv_body)
    assert after[request_key] - before.get(request_key, 0) == 1
    assert after[("sediment_csv_downloads_active", ())] == 0
    latency = ("sediment_http_request_duration_seconds_count",
               (("route", "/api/v1/reports/<name>"),))
    assert after[latency] - before.get(latency, 0) == 2
    assert ("sediment_db_pool_checked_out", (("database", "primary"),
                                             ("pool", "reports"))) in after


def test_a_made_up_method_is_counted_as_other(served: FlaskClient) -> None:
    assert served.open("/livez", method="BREW").status_code == 405
    samples = scrape(served)
    assert not any(dict(labels).get("method") == "BREW" for _, labels in samples)
    assert samples[("sediment_http_requests_total", (("method", "other"),
                                                     ("route", "<unmatched>"), ("status", "405")))]
