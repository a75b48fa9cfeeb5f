"""The demo seeder: deterministic, refuses non-empty databases, never reuses archived ids."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from flask import Flask

from sediment.core.schema import metadata_of
from sediment.core.schema.archive import archived_tables
from sediment.core.schema.primary import Order
from sediment.core.seed import SeedError, SeedPlan, is_empty, seed
from tests.support import empty_all_tables, engines_of

UNTIL = datetime(2026, 6, 1, tzinfo=UTC)
SMALL = SeedPlan(customers=40, orders=150, events=600, seed=7, until=UNTIL)


def fingerprint(engine: sa.Engine) -> dict[str, str]:
    digests = {}
    with engine.connect() as connection:
        for table in metadata_of("primary").sorted_tables:
            rows = connection.execute(sa.select(table).order_by(*table.primary_key)).all()
            digests[table.name] = hashlib.sha256(repr(rows).encode()).hexdigest()
    return digests


def test_same_seed_gives_same_rows(app: Flask, primary: sa.Engine, archive: sa.Engine) -> None:
    first = seed(primary, SMALL, archive=archive, archive_tables=archived_tables)
    assert first.rows["customers"] == 40 and first.rows["orders"] == 150
    assert first.rows["events"] == 600 and first.rows["order_items"] >= 150
    before = fingerprint(primary)
    empty_all_tables(engines_of(app))
    seed(primary, SMALL, archive=archive, archive_tables=archived_tables)
    assert fingerprint(primary) == before


def test_data_looks_like_a_shop(app: Flask, primary: sa.Engine) -> None:
    seed(primary, SMALL)
    with primary.connect() as connection:
        statuses = dict(connection.execute(
            sa.select(Order.status, sa.func.count()).group_by(Order.status)).all())
        oldest = connection.execute(sa.select(sa.func.min(Order.placed_at))).scalar_one()
        orphans = connection.execute(sa.text(
            "SELECT count(*) FROM order_items i LEFT JOIN orders o ON o.id = i.order_id "
            "WHERE o.id IS NULL")).scalar_one()
    assert statuses["closed"] > statuses.get("pending", 0)
    assert orphans == 0
    assert (UNTIL - oldest.replace(tzinfo=UTC)).days > 700


def test_refuses_non_empty_database_unless_append(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed(primary, SMALL, archive=archive, archive_tables=archived_tables)
    with pytest.raises(SeedError, match="--append"):
        seed(primary, SMALL, archive=archive, archive_tables=archived_tables)
    more = seed(primary, SMALL, archive=archive, archive_tables=archived_tables, append=True)
    assert more.rows["orders"] == 150
    with primary.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(Order)).scalar() == 300


def test_orders_with_no_customer_to_belong_to_are_refused_before_any_row(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    """``seed --customers 0`` wrote 200 products, skipped the orders and events in silence
    and said "seeded 200 rows"."""
    no_customers = SeedPlan(customers=0, orders=150, events=600, seed=7, until=UNTIL)
    with pytest.raises(SeedError) as caught:
        seed(primary, no_customers, archive=archive, archive_tables=archived_tables)
    assert str(caught.value) == (
        "--customers 0 leaves the 150 orders and 600 events no customer to belong to: seed "
        "customers too, or pass --orders 0 --events 0")
    with primary.connect() as connection:
        assert is_empty(connection, list(metadata_of("primary").sorted_tables))
    seed(primary, SMALL, archive=archive, archive_tables=archived_tables)
    more = seed(primary, no_customers, archive=archive, archive_tables=archived_tables,
                append=True)  # onto customers seeded before: they place the orders
    assert (more.rows["customers"], more.rows["orders"]) == (0, 150)


def test_new_ids_start_above_archived_ids(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    twin = archived_tables["orders"]
    with archive.begin() as connection:
        connection.execute(twin.insert(), [{
            "id": 5000, "customer_id": 1, "status": "closed", "placed_at": UNTIL,
            "closed_at": UNTIL, "archived_at": UNTIL, "archive_run_id": 1,
        }])
    with pytest.raises(SeedError):
        seed(primary, SMALL, archive=archive, archive_tables=archived_tables)
    seed(primary, SMALL, archive=archive, archive_tables=archived_tables, append=True)
    with primary.connect() as connection:
        assert connection.execute(sa.select(sa.func.min(Order.id))).scalar() == 5001
