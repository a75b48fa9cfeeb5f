#!/usr/bin/env python3
"""Resident memory of ``run_service.py serve`` on SQLite, against the bare stack it runs on.

    python bench/memory_bench.py    # the same in CI (--quick is accepted and changes nothing)

In one run, each server in its own process on fresh, empty SQLite files (migrated, no seed):

* Sediment: ``serve`` with the scheduler on, as deployed; ``VmRSS`` once ``/healthz``
  answers (at rest), after a page of the ``events`` row report, and after a page of the
  ``customer-summary`` aggregate report (which loads pandas);
* the floor: a bare Flask + Flask-SQLAlchemy + waitress app on the same two files, with
  SQLAlchemy's SQLite and PostgreSQL dialects imported, answering one query.

The last lines are ``memory_at_rest_mb=<MB>`` and ``memory_vs_floor=<ratio>``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import databases, free_port, service_environ, wait_until_up
from bench.report_bench import get, serve
from reporting.app import create_app
from reporting.state import state_of
from sediment.core.migrations import upgrade_all
from sediment.core.settings import load_settings

FLOOR = """
import sys
import sqlalchemy as sa
import sqlalchemy.dialects.postgresql
import waitress
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

app = Flask("floor")
app.config["SQLALCHEMY_DATABASE_URI"] = sys.argv[2]
app.config["SQLALCHEMY_BINDS"] = {"archive": sys.argv[3]}
db = SQLAlchemy(app)

@app.get("/healthz")
def healthz():
    return {"events": db.session.execute(sa.text("SELECT count(*) FROM events")).scalar_one()}

waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=8, _quiet=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="accepted for CI; no change")
    parser.parse_args()
    with databases(True) as (primary_url, archive_url):
        environ = service_environ(primary_url, archive_url,
                                  SEDIMENT_SCHEDULER__ENABLED="true")
        app = create_app(load_settings(environ=environ))
        upgrade_all(state_of(app).engines)
        for engine in (state_of(app).engines.primary, state_of(app).engines.archive):
            engine.dispose()
        server = serve(environ)
        with server as port:
            pid = server.process.pid
            at_rest = rss_mb(pid)
            get(port, "/api/v1/reports/events?limit=50")
            after_rows = rss_mb(pid)
            get(port, "/api/v1/reports/customer-summary?limit=50")
            after_aggregate = rss_mb(pid)
        floor = _floor_rss(primary_url, archive_url)
    print(f"sediment serve, at rest:            {at_rest:6.1f} MB")
    print(f"  after a row report page:          {after_rows:6.1f} MB")
    print(f"  after an aggregate page (pandas): {after_aggregate:6.1f} MB")
    print(f"floor (Flask + Flask-SQLAlchemy + waitress): {floor:6.1f} MB")
    print(f"memory_at_rest_mb={at_rest:.1f}")
    print(f"memory_vs_floor={at_rest / floor:.2f}")
    return 0


def rss_mb(pid: int) -> float:
    """The process's resident memory now (``VmRSS``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS in /proc")


def _floor_rss(primary_url: str, archive_url: str) -> float:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", FLOOR, str(port), primary_url,
                                archive_url], stdout=subprocess.DEVNULL)
    try:
        wait_until_up(port, seconds=30)
        return rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
