"""The archive benchmark's second schema: an application's own tables, reflected.

A composite-key parent (``ledger.batches``: ``uuid`` tenant and ``bigint`` number) with
three ``uuid``-keyed children each (``ledger.entries``, a composite foreign key), written in
plain DDL as an application would. Sediment archives it with ``primary_schema =
"existing"``: reflection, twins made by ``archive schema``, keyset over row values, deletes
by composite key. The baseline is the same COPY pipe as the demo's.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import sqlalchemy as sa

from archive.existing import plan_for, resolve_existing
from archive.runner import run_policy
from archive.twins import apply_plan
from bench.common import copy_pipe
from sediment.core.databases import Engines
from sediment.core.migrations import upgrade_all
from sediment.core.settings import PolicySettings, load_settings

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TABLES = ("ledger.entries", "ledger.batches")  # children first, for deletes
DDL = """
CREATE SCHEMA IF NOT EXISTS ledger;
CREATE TABLE ledger.batches (
    tenant_id uuid NOT NULL, batch_no bigint NOT NULL, closed_at timestamptz NOT NULL,
    note text, PRIMARY KEY (tenant_id, batch_no));
CREATE INDEX ON ledger.batches (closed_at);
CREATE TABLE ledger.entries (
    id uuid PRIMARY KEY, tenant_id uuid NOT NULL, batch_no bigint NOT NULL,
    amount numeric(14,2) NOT NULL, memo text,
    FOREIGN KEY (tenant_id, batch_no) REFERENCES ledger.batches (tenant_id, batch_no));
CREATE INDEX ON ledger.entries (tenant_id, batch_no);
"""
#: Three lines of policy, the batch size left at its default.
POLICY = PolicySettings(name="batches", table="ledger.batches", age_column="closed_at",
                        children="auto")


def measure(primary_url: str, archive_url: str, parents: int,
            rounds: int = 2) -> tuple[float, float]:
    """Rows per second of the COPY pipe and of Sediment on the reflected schema: the best
    of ``rounds`` alternating rounds each (one database server's timings wander by a
    third between identical runs here)."""
    settings = load_settings(environ={"SEDIMENT_DATABASE__PRIMARY_URL": primary_url,
                                      "SEDIMENT_DATABASE__ARCHIVE_URL": archive_url,
                                      "SEDIMENT_DATABASE__PRIMARY_SCHEMA": "existing"})
    engines = Engines(*(sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
                        for url in (primary_url, archive_url)))
    try:
        with engines.primary.begin() as connection:
            connection.exec_driver_sql(DDL)
        upgrade_all(engines, primary_schema="existing")
        schema = resolve_existing([POLICY], engines)
        apply_plan(engines.archive, plan_for(engines, schema), schema.twins)
        (policy,) = schema.policies
        rates: dict[str, float] = {}
        for contender in ("copy-pipe", "sediment") * rounds:
            _reset(engines)
            _load(engines.primary, parents)
            started = time.perf_counter()
            if contender == "copy-pipe":
                _copy_pipe(engines)
            else:
                outcome = run_policy(engines.primary, engines.archive, policy, now=NOW,
                                     database=settings.database, settings=settings.archive)
                if outcome.status != "done":
                    raise SystemExit(f"sediment run ended {outcome.status}: {outcome.error}")
            seconds = time.perf_counter() - started
            moved = _count(engines.archive)
            rates[contender] = max(rates.get(contender, 0.0), moved / seconds)
            print(f"reflected {contender:<10} {moved:>10,} rows in {seconds:7.2f}s = "
                  f"{moved / seconds:>10,.0f} rows/s", flush=True)
        return rates["copy-pipe"], rates["sediment"]
    finally:
        engines.dispose()


def delete_probe(primary_url: str, keys: int = 20_000) -> tuple[float, float]:
    """Milliseconds to delete ``keys`` composite-keyed rows by key (the archiver's delete:
    one array per key column, cast to the column's type, joined through ``unnest``) and by
    one range condition (the floor), each in a transaction rolled back. Run after
    :func:`measure`, which leaves the tables in place."""
    from archive.keys import key_columns, key_filters
    from archive.reflection import reflect_primary

    engine = sa.create_engine(primary_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM ledger.entries")
            connection.exec_driver_sql("DELETE FROM ledger.batches")
        _load(engine, keys * 2)
        with engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM ledger.entries")
        batches = reflect_primary(engine, ["ledger.batches"])["ledger.batches"]
        columns = key_columns(batches)
        timings = []
        with engine.connect() as connection:
            wanted = [tuple(str(v) if not isinstance(v, int) else v for v in row)
                      for row in connection.execute(sa.select(*columns).where(
                          batches.c.batch_no <= keys))]
            connection.rollback()
            for condition in (None, batches.c.batch_no <= keys):
                with connection.begin() as transaction:
                    started = time.perf_counter()
                    where = condition if condition is not None else next(
                        iter(key_filters(columns, wanted, connection.dialect)))
                    deleted = connection.execute(batches.delete().where(where)).rowcount
                    timings.append((time.perf_counter() - started) * 1000)
                    assert deleted == keys, deleted
                    transaction.rollback()
        return timings[0], timings[1]
    finally:
        engine.dispose()


def _count(archive: sa.Engine) -> int:
    with archive.connect() as connection:
        return sum(int(connection.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one())
                   for t in TABLES)


def _reset(engines: Engines) -> None:
    for _, engine in engines.items():
        with engine.begin() as connection:
            for table in TABLES:
                connection.exec_driver_sql(f"DELETE FROM {table}")
            if engine is engines.archive:
                connection.exec_driver_sql("DELETE FROM archive_run_tables")
                connection.exec_driver_sql("DELETE FROM archive_runs")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM ANALYZE")


def _load(primary: sa.Engine, parents: int) -> None:
    with primary.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO ledger.batches SELECT md5(mod(g, 7)::text)::uuid, g, "
            "TIMESTAMPTZ '2024-01-01' - g * INTERVAL '1 second', 'batch ' || g "
            f"FROM generate_series(1, {parents}) g")
        c.exec_driver_sql(
            "INSERT INTO ledger.entries SELECT md5(g || '-' || k)::uuid, "
            "md5(mod(g, 7)::text)::uuid,"
            " g, g * 1.25 + k, 'entry' FROM generate_series(1, "
            f"{parents}) g, generate_series(1, 3) k")
    with primary.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("VACUUM ANALYZE")


def _copy_pipe(engines: Engines) -> None:
    copy_pipe(engines.primary, engines.archive,
              [(f"SELECT *, now(), 0 FROM {table}", table) for table in reversed(TABLES)],
              list(TABLES))
