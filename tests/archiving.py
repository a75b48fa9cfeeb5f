"""Helpers for archiver tests: a small seeded shop, snapshots, and the invariants."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask

from archive.policy import ArchivePolicy
from archive.runner import RunLimits, RunOutcome, run_policy
from archive.verify import verify_archive
from sediment.core.schema.archive import archived_tables
from sediment.core.seed import SeedPlan, seed
from tests.support import policies_of, settings_of

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SMALL_SHOP = SeedPlan(customers=25, orders=160, events=900, seed=3, until=NOW)
Snapshot = dict[str, dict[int, tuple[Any, ...]]]


def seed_shop(primary: sa.Engine, archive: sa.Engine, plan: SeedPlan = SMALL_SHOP) -> None:
    seed(primary, plan, archive=archive, archive_tables=archived_tables)


def small_batches(app: Flask, orders: int = 13, events: int = 97) -> list[ArchivePolicy]:
    """The shipped policies with small batches, so a run has many of them."""
    sizes = {"orders": orders, "events": events}
    return [dataclasses.replace(p, batch_size=sizes[p.name]) for p in policies_of(app)]


def snapshot(engine: sa.Engine, twins: bool = False) -> Snapshot:
    """Every row of the archivable tables, by key, data columns only."""
    result: Snapshot = {}
    with engine.connect() as connection:
        for name, twin in archived_tables.items():
            table = twin if twins else sa.MetaData()
            source = twin if twins else sa.Table(name, table, autoload_with=connection)
            columns = [c for c in twin.columns if c.name not in ("archived_at", "archive_run_id")]
            query = sa.select(*(source.c[c.name] for c in columns))
            result[name] = {row[0]: tuple(row) for row in connection.execute(query)}
    return result


def run(app: Flask, primary: sa.Engine, archive: sa.Engine, policy: ArchivePolicy,
        now: datetime = NOW, **kwargs: Any) -> RunOutcome:
    settings = settings_of(app)
    return run_policy(primary, archive, policy, now=now, database=settings.database,
                      settings=kwargs.pop("archive_settings", settings.archive),
                      limits=kwargs.pop("limits", RunLimits()), **kwargs)


def normalise(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Compare timestamps as instants whatever the driver hands back."""
    return tuple(v.astimezone(UTC) if isinstance(v, datetime) and v.tzinfo else
                 v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for v in row)


def assert_invariants(original: Snapshot, primary: sa.Engine, archive: sa.Engine,
                      policies: list[ArchivePolicy], now: datetime = NOW) -> None:
    """Nothing lost, nothing in both, archived rows equal the originals, nothing aged left."""
    live, archived = snapshot(primary), snapshot(archive, twins=True)
    for name, rows in original.items():
        both = live[name].keys() & archived[name].keys()
        assert not both, f"{name}: keys in both databases: {sorted(both)[:10]}"
        assert live[name].keys() | archived[name].keys() == rows.keys(), f"{name}: rows lost"
        for key, row in archived[name].items():
            assert normalise(row) == normalise(rows[key]), f"{name} {key} changed in archive"
        for key, row in live[name].items():
            assert normalise(row) == normalise(rows[key]), f"{name} {key} changed in primary"
    for policy in policies:
        with primary.connect() as connection:
            aged = connection.execute(sa.select(sa.func.count()).select_from(policy.root)
                                      .where(policy.aged(policy.cutoff(now)))).scalar_one()
        assert aged == 0, f"{policy.name}: {aged} aged rows left in PRIMARY"
    report = verify_archive(primary, archive, policies)
    assert report.ok, report.problems
