#!/usr/bin/env python3
"""The archive's lifecycle operations against the archiver's own rate, in one run.

    python bench/lifecycle_bench.py            # 100,000 aged orders (3 items, 1 payment each)
    python bench/lifecycle_bench.py --quick    # 10,000
    python bench/lifecycle_bench.py --sqlite   # two SQLite files instead of PostgreSQL

On the same generated shop (bench/archive_bench.py's loader: every order closed 400 days
ago), each operation is timed as the CLI runs it, in rows per second over every table it
touches:

* archive: the ``orders`` policy (the baseline);
* restore: ``archive restore --run`` of that run, back to PRIMARY;
* archive again, once the restored rows have aged again;
* expire: a ``retention`` of 380 days, which every archived order has outlived;
* purge: the same policy in ``mode = "purge"`` on a fresh load;
* erase: ``archive erase`` of the one customer who owns every order and event, with half
  of them archived.

The last lines are ``<operation>_vs_archive=<ratio>`` (rows/s over the archiver's rows/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archive.archiver import Archiver
from archive.restore import RestoreRequest
from archive.runner import RunOutcome
from archive.sweep import purge_of, run_sweep
from bench.archive_bench import NOW, load, reset
from bench.common import databases
from reporting.app import create_app
from reporting.state import state_of
from sediment.core.migrations import upgrade_all
from sediment.core.settings import Retention, load_settings
from sediment.service import resolve_policies_of


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 orders (CI)")
    parser.add_argument("--orders", type=int, help="aged orders to load (default 100,000)")
    parser.add_argument("--sqlite", action="store_true", help="two SQLite files")
    args = parser.parse_args()
    orders = args.orders or (10_000 if args.quick else 100_000)
    with databases(args.sqlite) as (primary_url, archive_url):
        settings = load_settings(environ={"SEDIMENT_DATABASE__PRIMARY_URL": primary_url,
                                          "SEDIMENT_DATABASE__ARCHIVE_URL": archive_url,
                                          "SEDIMENT_POLICY__ORDERS__BATCH_SIZE": "2000"})
        app = create_app(settings)
        engines = state_of(app).engines
        upgrade_all(engines)
        policies = tuple(dataclasses.replace(
            policy, retention=Retention(duration=timedelta(days=380)))
            if policy.name == "orders" else policy for policy in resolve_policies_of(settings))
        archiver = Archiver(settings=settings, engines=engines, policies=policies)
        print(f"backend: {engines.primary.dialect.name}; aged orders: {orders:,} with 3 items "
              f"and 1 payment each; events: {orders * 10:,}", flush=True)
        fresh(engines, orders)
        archived = timed("archive", lambda: archiver.run("orders", NOW))
        rates = {"restore": timed("restore", lambda: archiver.restore(
            RestoreRequest(run=archived.run_id), NOW)).rows_per_second}
        timed("archive again", lambda: archiver.run("orders", NOW + timedelta(days=366)))
        rates["expire"] = timed("expire", lambda: archiver.expire(
            "orders", NOW + timedelta(days=366))).rows_per_second
        fresh(engines, orders)
        purge = dataclasses.replace(archiver.policy("orders"), mode="purge")
        rates["purge"] = timed("purge", lambda: run_sweep(
            engines, purge_of(purge, NOW), database=settings.database,
            settings=settings.archive)).rows_per_second
        fresh(engines, orders)
        timed("archive events", lambda: archiver.run("events", NOW))
        archiver.run("orders", NOW)
        rates["erase"] = erase_rate(archiver)
        engines.dispose()
    baseline = archived.rows_per_second or 1.0
    for name, rate in rates.items():
        print(f"{name}_vs_archive={(rate or 0.0) / baseline:.2f}")
    return 0


def fresh(engines: object, orders: int) -> None:
    primary, archive = engines.primary, engines.archive  # type: ignore[attr-defined]
    reset(primary, archive)
    for table in ("archive_restores", "archive_holds"):
        with archive.begin() as connection:
            connection.execute(sa.text(f"DELETE FROM {table}"))
    load(primary, orders * 10)


def timed(name: str, operation: Callable[[], RunOutcome | None]) -> RunOutcome:
    started = time.perf_counter()
    outcome = operation()
    seconds = time.perf_counter() - started
    if outcome is None or outcome.status != "done":
        raise SystemExit(f"{name} ended {outcome and outcome.status}: {outcome and outcome.error}")
    outcome.seconds = seconds  # the whole command's time, lock and ledger included
    print(f"{name:<14} {outcome.rows:>10,} rows in {seconds:7.2f}s = "
          f"{outcome.rows / seconds:>10,.0f} rows/s", flush=True)
    return outcome


def erase_rate(archiver: Archiver) -> float:
    started = time.perf_counter()
    outcome = archiver.erase("customers", "1", NOW)
    seconds = time.perf_counter() - started
    rows = sum(outcome.erased.values())
    print(f"{'erase':<14} {rows:>10,} rows in {seconds:7.2f}s = {rows / seconds:>10,.0f} "
          "rows/s (both databases)", flush=True)
    return rows / seconds


if __name__ == "__main__":
    sys.exit(main())
