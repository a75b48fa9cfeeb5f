#!/usr/bin/env python3
"""Archival throughput against the COPY-pipe limit and a naive ORM loop, in one run.

    python bench/archive_bench.py            # 1,000,000 aged events + orders, PostgreSQL
    python bench/archive_bench.py --quick    # 100,000 aged events
    python bench/archive_bench.py --sqlite   # SQLite, against ATTACH + INSERT SELECT + DELETE

Each contender starts from the same freshly loaded PRIMARY and an empty ARCHIVE:

* copy-pipe / attach: the floor on what any archiver must do: stream the aged rows out of
  PRIMARY into ARCHIVE in one statement each, then one DELETE per table. No batching, no
  locking, no verification, no crash safety;
* naive ORM: ``session.add`` of each archived row and ``session.delete`` of each live one,
  a commit pair per row (time-boxed);
* Sediment: ``run_policy`` for the shipped policies, exactly as the CLI runs them.

The baseline and Sediment alternate for ``--rounds`` rounds (3 in full mode, 1 quick), and
the ratio is the median of the rounds' ratios: one pipe alone moved by a fifth from run to
run on a shared machine.

On PostgreSQL a second schema follows (``bench/reflected_schema.py``): an application's
own composite-key parent with ``uuid``-keyed children, archived by reflection, against the
same COPY pipe (``--parents`` of them, 3 children each).

The last lines are ``reflected_archive_vs_copy_pipe=<ratio>`` (PostgreSQL) and
``archive_vs_copy_pipe=<ratio>`` (rows/s over rows/s, the median of the rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archive.runner import run_policy
from bench import common, reflected_schema
from bench.common import databases
from reporting.app import create_app
from reporting.state import state_of
from sediment.core.migrations import upgrade_all
from sediment.core.schema.archive import archived_tables
from sediment.core.settings import load_settings
from sediment.service import resolve_policies_of

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TABLES = ("payments", "order_items", "orders", "events")  # children first, for deletes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events (CI)")
    parser.add_argument("--events", type=int, help="aged events to load (default 1,000,000)")
    parser.add_argument("--sqlite", action="store_true", help="benchmark the SQLite path")
    parser.add_argument("--parents", type=int,
                        help="composite-key parents of the reflected schema (default 200,000; "
                        "quick 20,000)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating baseline/Sediment rounds, median ratio (default 3, "
                             "quick 1): the baseline alone moved by a fifth between runs")
    parser.add_argument("--naive-seconds", type=float, default=None,
                        help="time box of the naive ORM loop (default 10, quick 4)")
    args = parser.parse_args()
    events = args.events or (100_000 if args.quick else 1_000_000)
    naive_seconds = args.naive_seconds or (4.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
    with databases(args.sqlite) as (primary_url, archive_url):
        environ = {"SEDIMENT_DATABASE__PRIMARY_URL": primary_url,
                   "SEDIMENT_DATABASE__ARCHIVE_URL": archive_url}
        app = create_app(load_settings(environ=environ))
        engines = state_of(app).engines
        upgrade_all(engines)
        primary, archive = engines.primary, engines.archive
        print(f"backend: {primary.dialect.name}; aged events: {events:,}; "
              f"orders: {events // 10:,} with 3 items and 1 payment each", flush=True)
        baseline_name = "attach" if args.sqlite else "copy-pipe"
        ratios = []
        for round_ in range(rounds):
            baseline = measure(baseline_name, primary, archive, events,
                               attach_pipe if args.sqlite else copy_pipe)
            if round_ == 0:
                naive = measure("naive ORM", primary, archive, events,
                                lambda p, a: naive_orm(p, a, naive_seconds))
            sediment = measure("sediment", primary, archive, events,
                               lambda p, a: run_sediment(app, p, a))
            ratios.append(sediment / baseline)
        for engine in (primary, archive):
            engine.dispose()
    if not args.sqlite:
        parents = args.parents or (20_000 if args.quick else 200_000)
        with databases(False) as (primary_url, archive_url):
            pipe, reflected = reflected_schema.measure(primary_url, archive_url, parents)
            by_key, by_range = reflected_schema.delete_probe(primary_url)
        print(f"delete of 20,000 composite keys: {by_key:.0f} ms by key, {by_range:.0f} ms "
              f"by one range (floor): composite_delete_vs_range={by_range / by_key:.2f}")
        print(f"reflected_archive_vs_copy_pipe={reflected / pipe:.2f}")
    print(f"sediment / naive ORM = {sediment / naive:.1f}x")
    if rounds > 1:
        print(f"{rounds} alternating rounds: " + ", ".join(f"{r:.2f}" for r in ratios)
              + "; the median follows")
    print(f"archive_vs_copy_pipe={statistics.median(ratios):.2f}")
    return 0


def measure(name: str, primary: sa.Engine, archive: sa.Engine, events: int,
            contender: Callable[[sa.Engine, sa.Engine], None]) -> float:
    """Load fresh data, run ``contender``, and return the rows it moved per second."""
    reset(primary, archive)
    load(primary, events)
    with primary.connect() as connection:
        before = sum(count(connection, t) for t in TABLES)
    started = time.perf_counter()
    contender(primary, archive)
    seconds = time.perf_counter() - started
    with archive.connect() as connection:
        moved = sum(count(connection, t) for t in TABLES)
    rate = moved / seconds
    print(f"{name:<12} {moved:>10,} of {before:,} rows in {seconds:7.2f}s = {rate:>10,.0f} rows/s",
          flush=True)
    return rate


def count(connection: sa.Connection, table: str) -> int:
    return int(connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def reset(primary: sa.Engine, archive: sa.Engine) -> None:
    for engine in (archive, primary):
        with engine.begin() as connection:
            for table in TABLES:
                connection.exec_driver_sql(f"DELETE FROM {table}")
            extra = ("archive_run_tables", "archive_runs") if engine is archive else (
                "customers", "products")
            for table in extra:
                connection.exec_driver_sql(f"DELETE FROM {table}")
    if primary.dialect.name == "postgresql":
        for engine in (primary, archive):
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM ANALYZE")


def load(primary: sa.Engine, events: int) -> None:
    """Aged rows generated in the database: every event and order is older than its cutoff."""
    orders = events // 10
    old = NOW - timedelta(days=400)
    if primary.dialect.name == "postgresql":
        def series(n: int) -> str:
            return f"generate_series(1, {n}) AS s(g)"
        ts = f"(TIMESTAMPTZ '{old.isoformat()}' - g * INTERVAL '1 second')"
    else:
        def series(n: int) -> str:
            return (f"(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s "
                    f"WHERE g < {n}) SELECT g FROM s)")
        ts = f"datetime('{old:%Y-%m-%d %H:%M:%S}', '-' || g || ' seconds')"
    with primary.begin() as c:
        c.exec_driver_sql("INSERT INTO customers (id, name, email, country, created_at) VALUES "
                          "(1, 'Bench', 'bench@example.com', 'DE', '2020-01-01T00:00:00+00:00')")
        c.exec_driver_sql("INSERT INTO products (id, sku, name, category, price_cents) VALUES "
                          "(1, 'B-1', 'Bench item', 'books', 999)")
        c.exec_driver_sql(f"INSERT INTO orders (id, customer_id, status, placed_at, closed_at) "
                          f"SELECT g, 1, 'closed', {ts}, {ts} FROM {series(orders)}")
        c.exec_driver_sql(f"INSERT INTO order_items (id, order_id, product_id, quantity, "
                          f"unit_price_cents) SELECT g * 3 - k, g, 1, k + 1, 999 "
                          f"FROM {series(orders)}, (SELECT 0 AS k UNION ALL SELECT 1 "
                          f"UNION ALL SELECT 2) AS ks")
        c.exec_driver_sql(f"INSERT INTO payments (id, order_id, amount_cents, method, paid_at) "
                          f"SELECT g, g, 5994, 'card', {ts} FROM {series(orders)}")
        c.exec_driver_sql(f"INSERT INTO events (id, occurred_at, kind, customer_id, order_id, "
                          f"detail) SELECT g, {ts}, 'login', 1, NULL, 'login via web' "
                          f"FROM {series(events)}")
    if primary.dialect.name == "postgresql":
        with primary.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM ANALYZE")


def run_sediment(app: Flask, primary: sa.Engine, archive: sa.Engine) -> None:
    settings = state_of(app).settings
    for policy in resolve_policies_of(state_of(app).settings):
        report = run_policy(primary, archive, policy, now=NOW, database=settings.database,
                            settings=settings.archive)
        if report.status != "done":
            raise SystemExit(f"sediment run ended {report.status}: {report.error}")


def copy_pipe(primary: sa.Engine, archive: sa.Engine) -> None:
    """COPY out | COPY in per table, then one DELETE per table: the floor."""
    copies = []
    for table in reversed(TABLES):
        columns = ", ".join(c.name for c in archived_tables[table].columns
                            if c.name not in ("archived_at", "archive_run_id"))
        copies.append((f"SELECT {columns}, now(), 0 FROM {table}",
                       f"{table} ({columns}, archived_at, archive_run_id)"))
    common.copy_pipe(primary, archive, copies, list(TABLES))


def attach_pipe(primary: sa.Engine, archive: sa.Engine) -> None:
    """SQLite's floor: ATTACH the archive, INSERT ... SELECT per table, DELETE per table."""
    raw = primary.raw_connection()  # the driver's own transactions: ATTACH must precede BEGIN
    try:
        cursor = raw.cursor()
        cursor.execute(f"ATTACH DATABASE '{archive.url.database}' AS arch")
        cursor.execute("BEGIN")
        for table in reversed(TABLES):
            columns = ", ".join(c.name for c in archived_tables[table].columns
                                if c.name not in ("archived_at", "archive_run_id"))
            cursor.execute(f"INSERT INTO arch.{table} ({columns}, archived_at, archive_run_id) "
                           f"SELECT {columns}, datetime('now'), 0 FROM main.{table}")
        for table in TABLES:
            cursor.execute(f"DELETE FROM main.{table}")
        cursor.execute("COMMIT")
        cursor.execute("DETACH DATABASE arch")
    finally:
        raw.close()


def naive_orm(primary: sa.Engine, archive: sa.Engine, seconds: float) -> None:
    """What a first attempt looks like: one ORM round trip pair per row, time-boxed."""
    from sqlalchemy.orm import Session

    from sediment.core.schema.primary import Event

    twin = archived_tables["events"]
    deadline = time.perf_counter() + seconds
    with Session(primary) as live, Session(archive) as kept:
        while time.perf_counter() < deadline:
            event = live.scalars(sa.select(Event).order_by(Event.id).limit(1)).first()
            if event is None:
                return
            kept.execute(twin.insert().values(
                {c.name: getattr(event, c.name) for c in Event.__table__.columns}
                | {"archived_at": datetime.now(UTC), "archive_run_id": 0}))
            kept.commit()
            live.delete(event)
            live.commit()


if __name__ == "__main__":
    sys.exit(main())
