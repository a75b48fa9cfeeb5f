#!/usr/bin/env python3
"""Sediment beside Datasette, serving the same SQLite file, in one run.

    pip install -e '.[bench]'           # Datasette; this script installs nothing itself
    python bench/peer_bench.py          # 1,000,000 events
    python bench/peer_bench.py --quick  # 100,000 events (CI)

Both servers read PRIMARY's ``events`` table (``run_service.py serve`` for Sediment,
``datasette serve`` for Datasette), one at a time, one client, keep-alive connections:

* a first page of 50 rows, newest first: requests per second over alternating rounds;
* a page 90% deep in the same order, by each one's own keyset token (Sediment's signed
  cursor, Datasette's ``_next``): median latency;
* the whole table as CSV in that order: rows per second.

Datasette is asked not to count or facet (``_nocount``, ``_nofacet``), as Sediment's pages
do not by default. The ratios are Sediment over Datasette for throughputs, Datasette over
Sediment for the latency, so above 1 means Sediment is faster. Without Datasette importable
the script says so and exits 0: the figures need the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import databases, free_port, service_environ, wait_until_up
from bench.report_bench import SECRET, serve
from reporting.app import create_app
from reporting.pagination import PageCursor, encode_cursor
from reporting.reports import REPORTS
from reporting.request import parse_request
from reporting.state import state_of
from sediment.core.migrations import upgrade_all
from sediment.core.settings import load_settings

PAGE = 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events (CI)")
    args = parser.parse_args()
    if importlib.util.find_spec("datasette") is None:
        print("Datasette is not installed (pip install -e '.[bench]'): no peer figures")
        return 0
    rows = 100_000 if args.quick else 1_000_000
    seconds, rounds = (1.0, 3) if args.quick else (3.0, 5)
    with databases(True) as (primary_url, archive_url):
        environ = service_environ(primary_url, archive_url, SEDIMENT_SERVICE__SECRET_KEY=SECRET)
        app = create_app(load_settings(environ=environ))
        upgrade_all(state_of(app).engines)
        primary = state_of(app).engines.primary
        load_events(primary, rows)
        stored, key = row_at(primary, rows * 9 // 10)
        next_key = row_at(primary, rows * 9 // 10 + 1)[1]
        primary.dispose()
        print(f"events: {rows:,} in one SQLite file; page {PAGE}; deep page at 90%", flush=True)
        query = {"limit": str(PAGE), "source": "primary"}
        request = parse_request(REPORTS["events"], {k: [v] for k, v in query.items()},
                                default_limit=100, max_limit=1000)
        cursor = encode_cursor(request, PageCursor((instant(stored), key)), SECRET)
        with serve(environ) as port:
            ours = measure(port, f"/api/v1/reports/events?{urlencode(query)}",
                           f"/api/v1/reports/events?{urlencode({**query, 'cursor': cursor})}",
                           "/api/v1/reports/events.csv?source=primary", rows, seconds, rounds,
                           next_key)
        with datasette(sa.engine.make_url(primary_url).database or "") as port:
            from datasette.utils import tilde_encode

            table = "/primary/events"
            common = {"_size": str(PAGE), "_sort_desc": "occurred_at", "_nocount": "1",
                      "_nofacet": "1", "_shape": "array"}
            token = f"{tilde_encode(stored)},{tilde_encode(str(key))}"
            theirs = measure(port, f"{table}.json?{urlencode(common)}",
                             f"{table}.json?{urlencode({**common, '_next': token})}",
                             f"{table}.csv?_stream=on&_size=max&_sort_desc=occurred_at", rows,
                             seconds, rounds, next_key)
    for name, figures in (("sediment", ours), ("datasette", theirs)):
        page_rps, deep_ms, csv_rows = figures
        print(f"{name:<10} page {page_rps:8.0f} req/s   deep page {deep_ms:8.2f} ms   "
              f"csv {csv_rows:10,.0f} rows/s")
    print(f"page_vs_datasette={ours[0] / theirs[0]:.2f}")
    print(f"deep_page_vs_datasette={theirs[1] / ours[1]:.2f}")
    print(f"csv_vs_datasette={ours[2] / theirs[2]:.2f}")
    return 0


def load_events(primary: sa.Engine, count: int) -> None:
    """``count`` events one second apart, generated in SQLite, timestamps stored in the
    form Sediment writes them (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC)."""
    with primary.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO customers (id, name, email, country, created_at) VALUES "
            "(1, 'Bench Customer', 'bench@example.com', 'DE', '2026-01-01 00:00:00.000000')")
        connection.exec_driver_sql(
            "INSERT INTO events (id, occurred_at, kind, customer_id, order_id, detail) "
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ?) "
            "SELECT g, datetime('2026-01-01', '+' || g || ' seconds') || '.000000', 'login', "
            "1, NULL, 'benchmark event ' || g || ', via web' FROM s", (count,))


def row_at(primary: sa.Engine, depth: int) -> tuple[str, int]:
    """The stored ``occurred_at`` text and the id of the row ``depth`` rows deep, newest
    first: where both deep pages start after."""
    with primary.connect() as connection:
        stored, key = connection.exec_driver_sql(
            "SELECT occurred_at, id FROM events ORDER BY occurred_at DESC, id DESC "
            "LIMIT 1 OFFSET ?", (depth - 1,)).one()
    return str(stored), int(key)


def instant(stored: str) -> datetime:
    return datetime.fromisoformat(stored).replace(tzinfo=UTC)


def measure(port: int, page: str, deep: str, csv: str, rows: int, seconds: float,
            rounds: int, expected_deep_id: int) -> tuple[float, float, float]:
    """Page throughput, deep-page median latency (ms) and CSV rows per second; the deep
    page must start at ``expected_deep_id`` (both servers serve the same rows)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    for path in (page, deep):
        status, body = fetch(connection, path)
        if status != 200:
            raise SystemExit(f"{path}: HTTP {status} {body[:300]!r}")
    if first_id(body) != expected_deep_id:
        raise SystemExit(f"{deep}: starts at id {first_id(body)}, not {expected_deep_id}")
    rates = []
    for _ in range(rounds):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / rounds:
            fetch(connection, page)
            done += 1
        rates.append(done / (time.perf_counter() - started))
    timings = []
    for _ in range(21):
        started = time.perf_counter()
        fetch(connection, deep)
        timings.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    status, body = fetch(connection, csv)
    csv_seconds = time.perf_counter() - started
    lines = body.count(b"\n") - 1
    if status != 200 or lines < rows:
        raise SystemExit(f"{csv}: HTTP {status}, {lines:,} rows instead of {rows:,}")
    connection.close()
    return statistics.median(rates), statistics.median(timings), rows / csv_seconds


def first_id(body: bytes) -> int:
    """The first row's id of a Sediment page or of Datasette's ``_shape=array``."""
    document = json.loads(body)
    rows = document["rows"] if isinstance(document, dict) else document
    return int(rows[0]["id"])


def fetch(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


class datasette:
    """``datasette serve`` of one SQLite file on a free port, stopped at exit."""

    def __init__(self, database: str) -> None:
        self.database = database

    def __enter__(self) -> int:
        port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "datasette", "serve", self.database, "--port", str(port),
             "--setting", "sql_time_limit_ms", "60000", "--setting", "max_csv_mb", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_up(port, "/-/versions.json", seconds=60)
        return port

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
