#!/usr/bin/env python3
"""Aggregate report pages: ``customer-summary``'s first and tenth page, recomputed against reused.

    python bench/aggregate_bench.py            # 10,000 and 100,000 customers on PostgreSQL
    python bench/aggregate_bench.py --quick    # 10,000 customers (CI)

For each size, a shop with ten orders per customer (about 55% of them archived, so
``source=all`` merges both databases) is served in-process twice: with
``reports.aggregate_cache = "0s"`` (every page combines every group again, as before the
cache) and with the shipped 30 s. The first page pays the combination either way; the tenth
page, followed by cursor, is where reuse shows. Medians of repeated walks.

The last line is ``tenth_page_cached_vs_recomputed=<ratio>`` for the largest size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archive.runner import RunLimits, run_policy
from bench.common import databases, service_environ
from reporting.app import create_app
from reporting.state import state_of
from sediment.core.migrations import upgrade_all
from sediment.core.seed import SeedPlan, seed
from sediment.core.settings import load_settings
from sediment.service import resolve_policies_of

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PAGE = "/api/v1/reports/customer-summary?limit=50&sort=-revenue_cents"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 customers only (CI)")
    parser.add_argument("--walks", type=int, default=None, help="page walks per figure")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000]
    walks = args.walks or (3 if args.quick else 5)
    ratio = 0.0
    for customers in sizes:
        with databases(sqlite=False) as urls:
            prepare(urls, customers)
            figures = {}
            for label, ttl in (("recomputed", "0s"), ("cached", "30s")):
                app = create_app(load_settings(environ=service_environ(
                    *urls, SEDIMENT_REPORTS__AGGREGATE_CACHE=ttl)))
                figures[label] = walk(app, walks)
            for label, (first, tenth) in figures.items():
                print(f"{customers:>7,} customers, {label:<10}  first page {first:8.1f} ms   "
                      f"tenth page {tenth:8.1f} ms", flush=True)
            ratio = figures["cached"][1] / figures["recomputed"][1]
    print(f"tenth_page_cached_vs_recomputed={ratio:.3f}")
    return 0


def prepare(urls: tuple[str, str], customers: int) -> None:
    app = create_app(load_settings(environ=service_environ(*urls)))
    engines = state_of(app).engines
    upgrade_all(engines)
    primary, archive = engines.primary, engines.archive
    seed(primary, SeedPlan(customers=customers, orders=customers * 10, events=0, seed=5,
                           until=NOW), archive=archive)
    orders = next(p for p in resolve_policies_of(state_of(app).settings) if p.name == "orders")
    settings = state_of(app).settings
    run_policy(primary, archive, orders, now=NOW, database=settings.database,
               settings=settings.archive, limits=RunLimits())
    engines.dispose()


def walk(app: Flask, walks: int) -> tuple[float, float]:
    """Median milliseconds of the first page, and of the tenth reached by cursor."""
    client = app.test_client()
    firsts, tenths = [], []
    for _ in range(walks):
        path = PAGE
        for number in range(1, 11):
            started = time.perf_counter()
            response = client.get(path)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise SystemExit(f"GET {path} answered {response.status_code}")
            body = response.get_json()
            if number == 1:
                firsts.append(elapsed)
            path = f"{PAGE}&cursor={body['page']['next_cursor']}"
        tenths.append(elapsed)
        state_of(app).report_databases.aggregates.clear()
    return statistics.median(firsts), statistics.median(tenths)


if __name__ == "__main__":
    sys.exit(main())
