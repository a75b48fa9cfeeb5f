#!/usr/bin/env python3
"""Report latency at depth, against OFFSET, and report throughput against a trivial endpoint.

    python bench/report_bench.py            # 1,200,000 events on PostgreSQL, page 1,000,000 deep
    python bench/report_bench.py --quick    # 150,000 events, page 100,000 deep

In one run, against a real ``run_service.py serve`` on this machine:

* the ``events`` report's first page and the page ``depth`` rows deep, through HTTP (median
  of repeated requests, the deep cursor signed exactly as the API signs its own);
* the same page at the same depth read with ``OFFSET`` (the report's SQL, median of repeats);
* requests per second for the report's first page and for ``GET /api/v1/`` (no database),
  each from the same closed-loop load generator, in alternating rounds: the median of each
  side's rounds, so a noisy neighbour on a shared machine slows both alike rather than one;
* the same first page against its raw-driver floor (``bench/floor_app.py``: the same SQL in
  a bare Flask + waitress + psycopg2 app, as many threads), in alternating rounds too:
  ``report_vs_floor``;
* the WSGI server's share: the same page from ``serve --workers 2`` (gunicorn, two
  processes of 8 threads) against ``serve`` (waitress, one process of 8 threads), in
  alternating rounds (``gunicorn_vs_waitress``);
* the Python share alone: CPU time per request of Sediment's app and of the floor app,
  both called as WSGI apps in this process, in alternating rounds (``report_cpu_vs_floor``):
  the waitress server and the load generator are out of it, so it says how much of the
  throughput gap is Sediment's own code.

Then the same first and deep pages of a *table endpoint* over an application's own table,
reflected (``primary_schema = "existing"``): ``ledger_entries``, keyed by ``(account uuid,
seq bigint)``, as many rows as events, its deep page reached by a cursor over the composite
key (``table_deep_vs_first``).

The last line is ``deep_vs_first=<ratio>`` (deep page latency over first page latency).
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from werkzeug.test import create_environ

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import databases, free_port, service_environ, wait_until_up
from bench.floor_app import create_floor_app
from reporting.app import create_app
from reporting.pagination import PageCursor, encode_cursor
from reporting.reports import REPORTS
from reporting.request import parse_request
from reporting.state import state_of
from sediment.core.migrations import upgrade_all
from sediment.core.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
LIMIT = 100
SECRET = "report-bench-secret"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="150,000 events (CI)")
    parser.add_argument("--repeats", type=int, default=None, help="requests per latency figure")
    parser.add_argument("--seconds", type=float, default=None,
                        help="load per endpoint, split into alternating rounds")
    parser.add_argument("--rounds", type=int, default=None, help="alternating load rounds")
    args = parser.parse_args()
    events = 150_000 if args.quick else 1_200_000
    depth = 100_000 if args.quick else 1_000_000
    repeats = args.repeats or (15 if args.quick else 41)
    seconds = args.seconds or (3.0 if args.quick else 24.0)
    rounds = args.rounds or (5 if args.quick else 12)
    with databases(sqlite=False) as (primary_url, archive_url):
        environ = service_environ(primary_url, archive_url, SEDIMENT_SERVICE__SECRET_KEY=SECRET)
        app = create_app(load_settings(environ=environ))
        upgrade_all(state_of(app).engines)
        primary = state_of(app).engines.primary
        load_events(primary, events)
        sort_value, key = row_at(primary, depth)
        offset_ms = offset_latency(primary, depth, repeats)
        primary.dispose()
        print(f"events: {events:,} in PRIMARY; page size {LIMIT}; depth {depth:,}", flush=True)
        query = {"limit": str(LIMIT), "source": "primary"}
        report_request = parse_request(REPORTS["events"], {k: [v] for k, v in query.items()},
                                       default_limit=100, max_limit=1000)
        cursor = encode_cursor(report_request, PageCursor((sort_value, key)), SECRET)
        with serve(environ) as port:
            first_path = f"/api/v1/reports/events?{urlencode(query)}"
            deep_path = f"/api/v1/reports/events?{urlencode({**query, 'cursor': cursor})}"
            check_deep_page(port, deep_path, key)
            first_ms = latency(port, first_path, repeats)
            deep_ms = latency(port, deep_path, repeats)
            report_rps, trivial_rps = alternating_throughput(
                (port, first_path), (port, "/api/v1/"), seconds / rounds, rounds)
            with floor(primary_url) as floor_port:
                floor_path = f"/events?limit={LIMIT}"
                paired_rps, floor_rps = alternating_throughput(
                    (port, first_path), (floor_port, floor_path), seconds / rounds, rounds)
            with serve(environ, workers=2) as gunicorn_port:
                gunicorn_rps, waitress_rps = alternating_throughput(
                    (gunicorn_port, first_path), (port, first_path), seconds / rounds, rounds)
        floor_app = create_floor_app(floor.dsn_of(primary_url), threads=1)
        our_cpu_us, floor_cpu_us = alternating_cpu(
            (app, first_path), (floor_app, f"/events?limit={LIMIT}"),
            requests=300 if args.quick else 1500, rounds=rounds)
    table_first_ms, table_deep_ms = table_endpoint_latency(events, depth, repeats)
    print(f"first page          {first_ms:8.2f} ms (median of {repeats})")
    print(f"page {depth:,} deep  {deep_ms:8.2f} ms (keyset cursor)")
    print(f"same depth, OFFSET  {offset_ms:8.2f} ms (SQL only)  -> keyset is "
          f"{offset_ms / deep_ms:,.0f}x faster")
    print(f"report page         {report_rps:8.0f} req/s (median of {rounds} rounds)")
    print(f"trivial endpoint    {trivial_rps:8.0f} req/s  -> report_vs_trivial="
          f"{report_rps / trivial_rps:.2f}")
    print(f"report page         {paired_rps:8.0f} req/s against the raw-driver floor "
          f"(bench/floor_app.py) {floor_rps:.0f} req/s -> report_vs_floor="
          f"{paired_rps / floor_rps:.2f}")
    print(f"report page, gunicorn 2 processes {gunicorn_rps:.0f} req/s against waitress 1 "
          f"process {waitress_rps:.0f} req/s -> gunicorn_vs_waitress="
          f"{gunicorn_rps / waitress_rps:.2f}")
    print(f"report page in process {our_cpu_us:.0f} us of CPU per request against the "
          f"floor app's {floor_cpu_us:.0f} us (median of {rounds} rounds) -> "
          f"report_cpu_vs_floor={floor_cpu_us / our_cpu_us:.2f}")
    print(f"table endpoint, reflected composite key: first page {table_first_ms:.2f} ms, "
          f"{depth:,} deep {table_deep_ms:.2f} ms")
    print(f"table_deep_vs_first={table_deep_ms / table_first_ms:.2f}")
    print(f"deep_vs_first={deep_ms / first_ms:.2f}")
    return 0


LEDGER_SETTINGS = """
[database]
primary_url = "{primary_url}"
archive_url = "{archive_url}"
primary_schema = "existing"
[service]
secret_key = "{secret}"
seed_when_empty = false
log_level = "WARNING"
[scheduler]
enabled = false
[policy.ledger]
table = "ledger_entries"
age_column = "posted_at"
older_than = "3650d"
"""


def table_endpoint_latency(rows: int, depth: int, repeats: int) -> tuple[float, float]:
    """First and ``depth``-deep page latency of ``/api/v1/tables/ledger_entries`` (ms)."""
    import uuid

    from reporting.pagination import PageCursor, encode_cursor
    from sediment.service import build_service

    with databases(sqlite=False) as (primary_url, archive_url):
        engine = sa.create_engine(primary_url.replace("postgresql://", "postgresql+psycopg2://"))
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TABLE ledger_entries (account uuid NOT NULL, seq bigint NOT NULL, "
                "posted_at timestamptz NOT NULL, amount numeric(12,2), memo text, "
                "PRIMARY KEY (account, seq))")
            connection.exec_driver_sql(
                "INSERT INTO ledger_entries SELECT md5((g %% 1000)::text)::uuid, g, "
                "now() - g * INTERVAL '1 second', g %% 977 / 7.0, 'entry ' || g "
                "FROM generate_series(1, %(n)s) AS s(g)", {"n": rows})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE ledger_entries")
            account, seq = connection.exec_driver_sql(
                "SELECT account, seq FROM ledger_entries ORDER BY account, seq "
                "OFFSET %(n)s LIMIT 1", {"n": depth - 1}).one()
        engine.dispose()
        with tempfile.TemporaryDirectory() as folder:
            settings = Path(folder) / "settings.toml"
            settings.write_text(LEDGER_SETTINGS.format(
                primary_url=primary_url, archive_url=archive_url, secret=SECRET))
            subprocess.run([sys.executable, str(REPO / "run_service.py"), "--settings",
                            str(settings), "migrate"], check=True, stdout=subprocess.DEVNULL)
            service = build_service(load_settings(str(settings)))
            report = state_of(service.app).tables["ledger_entries"]
            query = {"limit": str(LIMIT), "source": "primary"}
            request = parse_request(report, {k: [v] for k, v in query.items()},
                                    default_limit=100, max_limit=1000)
            cursor = encode_cursor(request, PageCursor((uuid.UUID(str(account)),
                                                        uuid.UUID(str(account)), seq)), SECRET)
            service.engines.dispose()
            with serve({}, settings) as port:
                first = f"/api/v1/tables/ledger_entries?{urlencode(query)}"
                deep = f"/api/v1/tables/ledger_entries?{urlencode({**query, 'cursor': cursor})}"
                status, body = get(port, deep)
                import json
                found = json.loads(body)["rows"] if status == 200 else []
                if len(found) != LIMIT or found[0]["seq"] == seq:
                    raise SystemExit(f"table deep page is wrong: HTTP {status}")
                return latency(port, first, repeats), latency(port, deep, repeats)


def load_events(primary: sa.Engine, count: int) -> None:
    start = datetime(2026, 6, 1, tzinfo=UTC) - timedelta(seconds=count)
    with primary.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO customers (id, name, email, country, created_at) SELECT g, "
            "'Customer ' || g, 'c' || g || '@example.com', 'DE', now() "
            "FROM generate_series(1, 1000) AS s(g)")
        connection.exec_driver_sql(
            "INSERT INTO events (id, occurred_at, kind, customer_id, order_id, detail) "
            "SELECT g, %(start)s::timestamptz + g * INTERVAL '1 second', "
            "(ARRAY['login','view_product','add_to_cart','checkout'])[1 + g %% 4], "
            "1 + g %% 1000, NULL, 'benchmark event ' || g FROM generate_series(1, %(n)s) AS s(g)",
            {"start": start, "n": count})
    with primary.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE events")


def row_at(primary: sa.Engine, depth: int) -> tuple[datetime, int]:
    """The sort value and key of the last row before the page ``depth`` rows deep."""
    with primary.connect() as connection:
        occurred_at, key = connection.exec_driver_sql(
            "SELECT occurred_at, id FROM events ORDER BY occurred_at DESC, id DESC "
            "OFFSET %(n)s LIMIT 1", {"n": depth - 1}).one()
    return occurred_at, int(key)


def offset_latency(primary: sa.Engine, depth: int, repeats: int) -> float:
    """The report's page at ``depth`` with OFFSET instead of a cursor (SQL only)."""
    sql = ("SELECT id, occurred_at, kind, customer_id, order_id, detail FROM events "
           "ORDER BY occurred_at DESC, id DESC OFFSET %(n)s LIMIT %(limit)s")
    timings = []
    with primary.connect() as connection:
        for _ in range(max(3, repeats // 4)):
            started = time.perf_counter()
            connection.exec_driver_sql(sql, {"n": depth, "limit": LIMIT}).all()
            timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


class serve:
    """``run_service.py serve`` on a free port, stopped at exit."""

    def __init__(self, environ: dict[str, str], settings: Path | None = None,
                 workers: int = 1) -> None:
        self.environ = environ
        self.settings = ["--settings", str(settings)] if settings else []
        self.workers = workers

    def __enter__(self) -> int:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "run_service.py"), *self.settings, "serve", "--port",
             str(self.port), "--no-scheduler", "--workers", str(self.workers)],
            env={**os.environ, **self.environ}, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_up(self.port, seconds=60)
        return self.port

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def get(port: int, path: str, connection: http.client.HTTPConnection | None = None
        ) -> tuple[int, bytes]:
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        if own:
            connection.close()


def check_deep_page(port: int, path: str, key: int) -> None:
    import json

    status, body = get(port, path)
    rows = json.loads(body)["rows"] if status == 200 else []
    if status != 200 or len(rows) != LIMIT or rows[0]["id"] >= key:
        raise SystemExit(f"deep page is wrong: HTTP {status}, {len(rows)} rows")


def latency(port: int, path: str, repeats: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        status, _ = get(port, path, connection)
        timings.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise SystemExit(f"GET {path} answered {status}")
    connection.close()
    return statistics.median(timings)


def alternating_throughput(ours: tuple[int, str], baseline: tuple[int, str], seconds: float,
                           rounds: int) -> tuple[float, float]:
    """Median requests per second of ``ours`` and of ``baseline`` (each a port and a path)
    over alternating rounds."""
    mine, theirs = [], []
    for _ in range(rounds):
        mine.append(throughput(*ours, seconds))
        theirs.append(throughput(*baseline, seconds))
    return statistics.median(mine), statistics.median(theirs)


def alternating_cpu(ours: tuple[Any, str], baseline: tuple[Any, str], requests: int,
                    rounds: int) -> tuple[float, float]:
    """Median CPU microseconds per request of ``ours`` and of ``baseline`` (each a WSGI app
    and a path with its query string), called in this process over alternating rounds."""
    calls = [wsgi_call(app, path) for app, path in (ours, baseline)]
    for call in calls:  # warm up: connections opened, statements cached
        for _ in range(max(50, requests // 5)):
            call()
    timings: list[list[float]] = [[], []]
    for _ in range(rounds):
        for call, figures in zip(calls, timings, strict=True):
            started = time.process_time()
            for _ in range(requests):
                call()
            figures.append((time.process_time() - started) / requests * 1e6)
    return statistics.median(timings[0]), statistics.median(timings[1])


def wsgi_call(app: Any, path: str) -> Callable[[], None]:
    """A function that sends ``GET path`` to the WSGI ``app`` and checks for a 200."""
    environ = create_environ(path, "http://127.0.0.1/",
                             environ_overrides={"REMOTE_ADDR": "127.0.0.1"})

    def call() -> None:
        statuses: list[str] = []
        # A copy per call: the app keeps per-request values (the request id) in the environ.
        body = b"".join(app({**environ, "wsgi.input": io.BytesIO()},
                            lambda status, headers, *info: statuses.append(status)))
        if not statuses[0].startswith("200"):
            raise SystemExit(f"GET {path} in process answered {statuses[0]}: {body[:200]!r}")

    return call


class floor:
    """``bench/floor_app.py`` over PRIMARY on a free port, stopped at exit."""

    def __init__(self, primary_url: str) -> None:
        self.dsn = self.dsn_of(primary_url)

    @staticmethod
    def dsn_of(primary_url: str) -> str:
        """PRIMARY's URL as psycopg2 takes it."""
        return primary_url.replace("postgresql+psycopg2://", "postgresql://")

    def __enter__(self) -> int:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "floor_app.py"), "--dsn", self.dsn,
             "--port", str(self.port), "--threads", "8"], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_up(self.port, path=f"/events?limit={LIMIT}", seconds=30)
        return self.port

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def throughput(port: int, path: str, seconds: float, clients: int = 4) -> float:
    """Requests per second from ``clients`` keep-alive connections in a closed loop."""
    done = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < deadline:
            status, _ = get(port, path, connection)
            if status != 200:
                raise SystemExit(f"GET {path} answered {status}")
            done[index] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
