#!/usr/bin/env python3
"""CSV export speed and memory against the database's own CSV writer and against pandas.

    python bench/csv_bench.py            # 1,000,000 events on PostgreSQL
    python bench/csv_bench.py --quick    # 100,000 events
    python bench/csv_bench.py --sqlite   # SQLite, against the sqlite3 shell's CSV output

In one run, for the ``events`` report (source=primary):

* Sediment: ``GET /api/v1/reports/events.csv`` from a real ``run_service.py serve``, rows/s
  and the server's peak resident memory (whole process, ``VmHWM``), for a tenth of the rows
  and for all of them, each on a fresh server: the two peaks show whether memory is flat;
* ``COPY (the same query) TO STDOUT`` through ``psql`` (``sqlite3 -csv`` with --sqlite);
* ``pandas.read_sql(the same query).to_csv()``.

Each baseline runs in its own process; its peak memory is that process's ``VmHWM``, polled
while it runs (``ru_maxrss`` would include the memory of the Python process it was forked
from).
The last line is ``csv_vs_copy=<ratio>`` (Sediment rows/s over the COPY baseline's).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import databases, service_environ
from bench.report_bench import serve
from reporting.app import create_app
from reporting.csv_export import copy_statement
from reporting.reports import REPORTS
from reporting.reports.base import RowReport
from reporting.request import parse_request
from reporting.state import state_of
from reporting.statements import source_query
from sediment.core.databases import PRIMARY
from sediment.core.migrations import upgrade_all
from sediment.core.pgcopy import render
from sediment.core.settings import load_settings

Measure = Callable[[], tuple[float, float]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events (CI)")
    parser.add_argument("--sqlite", action="store_true", help="benchmark the SQLite path")
    args = parser.parse_args()
    rows = 100_000 if args.quick else 1_000_000
    baseline_tool = "sqlite3" if args.sqlite else "psql"
    if shutil.which(baseline_tool) is None:
        # As peer_bench without Datasette: no baseline, no ratio, and not a failure.
        print(f"the {baseline_tool} command is not installed: no baseline, no csv_vs_copy")
        return 0
    with databases(args.sqlite) as (primary_url, archive_url):
        environ = service_environ(primary_url, archive_url)
        app = create_app(load_settings(environ=environ))
        upgrade_all(state_of(app).engines)
        primary = state_of(app).engines.primary
        load_events(primary, rows)
        boundary = tenth_boundary(primary, rows)
        sql = export_sql(app, primary)
        primary.dispose()
        print(f"backend: {'sqlite' if args.sqlite else 'postgresql'}; events report, "
              f"source=primary; {rows:,} rows", flush=True)
        small = download(environ, {"source": "primary", "occurred_at[gte]": boundary})
        full = download(environ, {"source": "primary"})
        report("sediment (1/10)", rows // 10, *small)
        sediment_rate = report("sediment", rows, *full)
        if args.sqlite:
            database = sa.engine.make_url(primary_url).database
            baseline = report("sqlite3 -csv", rows, *child(
                ["sqlite3", "-csv", "-header", str(database), sql]))
        else:
            baseline = report("psql COPY", rows, *child(
                ["psql", psql_url(primary_url), "-q", "-c",
                 f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)"]))
        report("pandas", rows, *child([sys.executable, "-c", PANDAS, primary_url, sql]))
    print(f"server peak memory: {small[1]:.0f} MB for {rows // 10:,} rows, {full[1]:.0f} MB "
          f"for {rows:,} rows (+{full[1] - small[1]:.0f} MB)")
    print(f"csv_vs_copy={sediment_rate / baseline:.2f}")
    return 0


PANDAS = """
import sys, os, pandas as pd, sqlalchemy as sa
engine = sa.create_engine(sys.argv[1])
with engine.connect() as connection, open(os.devnull, "w") as sink:
    pd.read_sql(sa.text(sys.argv[2]), connection).to_csv(sink, index=False)
"""


def report(name: str, rows: int, seconds: float, peak_mb: float) -> float:
    rate = rows / seconds
    print(f"{name:<16} {seconds:7.2f}s {rate:>12,.0f} rows/s   peak {peak_mb:7.1f} MB",
          flush=True)
    return rate


def load_events(primary: sa.Engine, count: int) -> None:
    start = datetime(2026, 6, 1, tzinfo=UTC) - timedelta(seconds=count)
    with primary.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO customers (id, name, email, country, created_at) "
            "VALUES (1, 'Bench Customer', 'bench@example.com', 'DE', :now)"), {"now": start})
        batch = []
        for g in range(1, count + 1):
            batch.append({"id": g, "at": start + timedelta(seconds=g), "kind": "login",
                          "detail": f"benchmark event {g}, via web"})
            if len(batch) == 50_000 or g == count:
                connection.execute(sa.text(
                    "INSERT INTO events (id, occurred_at, kind, customer_id, order_id, detail) "
                    "VALUES (:id, :at, :kind, 1, NULL, :detail)"), batch)
                batch = []


def tenth_boundary(primary: sa.Engine, count: int) -> str:
    """The ``occurred_at`` from which a tenth of the events remain (the newest)."""
    with primary.connect() as connection:
        value = connection.execute(sa.text(
            "SELECT occurred_at FROM events ORDER BY occurred_at DESC LIMIT 1 OFFSET :n"),
            {"n": count // 10 - 1}).scalar_one()
    stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).isoformat()


def export_sql(app: Flask, primary: sa.Engine) -> str:
    """The exact SQL Sediment exports with (rendered), for the baselines to run."""
    request = parse_request(REPORTS["events"], {"source": ["primary"]}, default_limit=100,
                            max_limit=1000)
    sources = state_of(app).report_databases
    if primary.dialect.name == "postgresql":
        with primary.connect() as connection:
            return render(connection, *copy_statement(sources, request, True))
    # SQLite has no COPY: the report's own statement, ordered, as the sqlite3 shell runs it.
    events = REPORTS["events"]
    assert isinstance(events, RowReport)
    query = source_query(sources, request, events, PRIMARY)
    return str(query.ordered.compile(dialect=primary.dialect,
                                     compile_kwargs={"literal_binds": True}))


def psql_url(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)


def download(environ: dict[str, str], query: dict[str, str]) -> tuple[float, float]:
    """Download through a fresh server; return seconds and the server's peak MB."""
    from urllib.parse import urlencode

    server = serve(environ)
    with server as port:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.request("GET", f"/api/v1/reports/events.csv?{urlencode(query)}")
        response = connection.getresponse()
        if response.status != 200:
            raise SystemExit(f"download failed: HTTP {response.status} {response.read()[:300]!r}")
        while response.read(1 << 16):
            pass
        seconds = time.perf_counter() - started
        peak = peak_memory_mb(server.process.pid)
        connection.close()
    return seconds, peak


def peak_memory_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc")


def child(command: list[str]) -> tuple[float, float]:
    """Run a baseline to /dev/null; return seconds and its peak MB."""
    peak = 0.0
    with open(os.devnull, "wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.PIPE)
        while process.poll() is None:
            with contextlib.suppress(OSError, SystemExit):  # it exited after poll()
                peak = max(peak, peak_memory_mb(process.pid))
            time.sleep(0.005)
        seconds = time.perf_counter() - started
    if process.returncode != 0:
        error = process.stderr.read().decode()[:500] if process.stderr else ""
        raise SystemExit(f"{command[0]} failed: {error}")
    return seconds, peak


if __name__ == "__main__":
    sys.exit(main())
