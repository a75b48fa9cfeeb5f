"""Deterministic demo data: three years of a small shop, generated from a seed.

The same seed and the same ``until`` date give the same rows, so demos, tests and
benchmarks can be reproduced. Customers are Zipf-skewed (a few buy a lot), business grows
over time, older orders are closed, and the audit log is the biggest table, as in life.
Rows go in through bulk Core inserts in chunks, one transaction per chunk.
"""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

import sqlalchemy as sa

from sediment.core.databases import analyze
from sediment.core.pgcopy import copy_in
from sediment.core.schema.primary import Customer, Event, Order, OrderItem, Payment, Product

logger = logging.getLogger(__name__)

HISTORY = timedelta(days=3 * 365)
CHUNK_ROWS = 10_000
CATEGORIES = (
    "books", "garden", "kitchen", "toys", "electronics",
    "outdoor", "office", "beauty", "music", "pets",
)
FIRST_NAMES = (
    "Ada", "Bo", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Jun",
    "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq",
)
LAST_NAMES = (
    "Abe", "Berg", "Costa", "Diallo", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
    "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe", "Rossi", "Silva",
)
COUNTRIES = ("DE", "FR", "NL", "US", "GB", "SE", "PL", "ES", "IT", "JP")
EVENT_KINDS = (
    "login", "view_product", "add_to_cart", "checkout", "order_placed",
    "payment_received", "order_shipped", "support_ticket",
)
EVENT_WEIGHTS = (30, 40, 12, 5, 4, 4, 3, 2)
ORDER_EVENT_KINDS = frozenset({"checkout", "order_placed", "payment_received", "order_shipped"})

ProgressCallback = Callable[[int], None]


class SeedError(RuntimeError):
    """Seeding was refused (the database already holds data)."""


@dataclass(frozen=True)
class SeedPlan:
    """How much demo data to create, and from which seed."""

    customers: int = 1_000
    orders: int = 10_000
    events: int = 100_000
    seed: int = 42
    until: datetime | None = None

    @property
    def estimated_rows(self) -> int:
        """Rows the plan creates, roughly (items and payments are random)."""
        return self.customers + len(CATEGORIES) * 20 + self.orders * 6 + self.events


@dataclass(frozen=True)
class SeedResult:
    rows: dict[str, int]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


def is_empty(connection: sa.Connection, tables: list[sa.Table]) -> bool:
    """Return whether none of ``tables`` holds a row."""
    return all(
        connection.execute(sa.select(sa.literal(1)).select_from(t).limit(1)).first() is None
        for t in tables
    )


def seed(
    primary: sa.Engine,
    plan: SeedPlan,
    *,
    archive: sa.Engine | None = None,
    archive_tables: Mapping[str, sa.Table] | None = None,
    append: bool = False,
    progress: ProgressCallback | None = None,
) -> SeedResult:
    """Fill PRIMARY with demo data.

    New ids start above the largest id in PRIMARY *and* ARCHIVE: an id reused after its row
    was archived would make the archiver overwrite the archived row.

    :param primary: the PRIMARY engine.
    :param archive: the ARCHIVE engine, holding ``archive_tables`` (twins of PRIMARY tables).
    :param append: add to existing data instead of refusing a non-empty database.
    :param progress: called with the number of rows written after each chunk.
    :raises SeedError: when either database already holds data and ``append`` is false.
    """
    started = time.perf_counter()
    until = (plan.until or datetime.now(UTC)).astimezone(UTC)
    until = until.replace(hour=0, minute=0, second=0, microsecond=0)
    rng = random.Random(plan.seed)
    twins = dict(archive_tables or {})
    next_ids = {t.name: 1 for t in _all_tables()}
    for engine, tables in ((primary, _all_tables()), (archive, list(twins.values()))):
        if engine is None or not tables:
            continue
        with engine.connect() as connection:
            if not append and not is_empty(connection, tables):
                raise SeedError(
                    f"{engine.url.database} already holds data; pass --append to add to it, "
                    "or start from empty databases"
                )
            for table in tables:
                next_ids[table.name] = max(next_ids[table.name], _next_id(connection, table))
    if not plan.customers and (plan.orders or plan.events):
        with primary.connect() as connection:
            if is_empty(connection, [Customer.__table__]):  # type: ignore[list-item]
                # Orders and events were skipped in silence: "seeded 200 rows".
                raise SeedError(
                    f"--customers 0 leaves the {plan.orders:,} orders and {plan.events:,} "
                    "events no customer to belong to: seed customers too, or pass "
                    "--orders 0 --events 0")
    counts = {t.name: 0 for t in _all_tables()}
    writer = _ChunkWriter(primary, counts, progress)
    with primary.connect() as connection:
        product_rows = [(int(product_id), int(price)) for product_id, price in
                        connection.execute(sa.select(Product.id, Product.price_cents))]
    if not product_rows:
        products = list(_products(rng, next_ids["products"]))
        writer.write(Product.__table__, products)  # type: ignore[arg-type]
        product_rows = [(p["id"], p["price_cents"]) for p in products]
    writer.write(Customer.__table__,  # type: ignore[arg-type]
                 list(_customers(rng, next_ids["customers"], plan.customers, until)))
    writer.flush()
    with primary.connect() as connection:
        customer_ids = list(
            connection.execute(sa.select(Customer.id).order_by(Customer.id)).scalars()
        )
    if customer_ids:
        pick_customer = _zipf_picker(rng, customer_ids)
        _write_orders(rng, writer, plan.orders, next_ids, pick_customer, product_rows, until)
        _write_events(rng, writer, plan.events, next_ids, pick_customer, until)
    writer.flush()
    _advance_sequences(primary, next_ids)
    analyze(primary, _all_tables())
    result = SeedResult(rows=counts, seconds=time.perf_counter() - started)
    logger.info("seeded %d rows in %.1fs (%.0f rows/s): %s", result.total, result.seconds,
                result.rows_per_second, counts)
    return result


def _all_tables() -> list[sa.Table]:
    return [m.__table__ for m in (Customer, Product, Order, OrderItem, Payment, Event)]  # type: ignore[misc]


class _ChunkWriter:
    """Buffers rows per table and inserts them in chunks, parents before children."""

    def __init__(
        self, engine: sa.Engine, counts: dict[str, int], progress: ProgressCallback | None
    ) -> None:
        self.engine = engine
        self.counts = counts
        self.progress = progress
        self.pending: dict[sa.Table, list[dict[str, Any]]] = {}

    def write(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        self.pending.setdefault(table, []).extend(rows)
        if sum(len(r) for r in self.pending.values()) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        written = 0
        with self.engine.begin() as connection:
            for table in sorted(self.pending, key=_all_tables().index):  # parents first
                rows = self.pending[table]
                if rows:
                    _bulk_insert(connection, table, rows)
                    self.counts[table.name] += len(rows)
                    written += len(rows)
        self.pending = {}
        if self.progress is not None:
            self.progress(written)


def _bulk_insert(connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert with COPY on PostgreSQL (about 4x a multi-row INSERT), Core executemany elsewhere."""
    if connection.dialect.name == "postgresql":
        columns = [column.name for column in table.columns]
        copy_in(connection, table.name, columns, ([row[c] for c in columns] for row in rows))
    else:
        connection.execute(table.insert(), rows)


def _next_id(connection: sa.Connection, table: sa.Table) -> int:
    return int(connection.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0)))
               .scalar_one()) + 1


def _advance_sequences(engine: sa.Engine, next_ids: dict[str, int]) -> None:
    """Move PostgreSQL sequences past the explicit ids the seeder wrote."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        for table in _all_tables():
            connection.execute(
                sa.text("SELECT setval(pg_get_serial_sequence(:table, 'id'), :next, false)"),
                {"table": table.name, "next": next_ids[table.name]},
            )


def _growing_instant(rng: random.Random, until: datetime) -> datetime:
    """A moment in the last three years, more likely recent: the shop grows."""
    fraction: float = rng.random() ** 0.7
    return until - HISTORY + HISTORY * fraction


def _zipf_picker(rng: random.Random, ids: list[int]) -> Callable[[], int]:
    order = ids[:]
    rng.shuffle(order)
    cumulative = list(accumulate(1.0 / (rank + 1) ** 1.1 for rank in range(len(order))))
    total = cumulative[-1]
    return lambda: order[bisect_left(cumulative, rng.random() * total)]


def _products(rng: random.Random, first_id: int) -> Iterator[dict[str, Any]]:
    product_id = first_id
    for category in CATEGORIES:
        for n in range(20):
            yield {
                "id": product_id,
                "sku": f"{category[:3].upper()}-{product_id:05d}",
                "name": f"{category.title()} item {n + 1}",
                "category": category,
                "price_cents": rng.choice((199, 499, 999, 1499, 2499, 4999, 9999, 19999)),
            }
            product_id += 1


def _customers(
    rng: random.Random, first_id: int, count: int, until: datetime
) -> Iterator[dict[str, Any]]:
    for customer_id in range(first_id, first_id + count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        yield {
            "id": customer_id,
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}.{customer_id}@example.com",
            "country": rng.choice(COUNTRIES),
            "created_at": until - HISTORY - timedelta(days=rng.randint(0, 365)),
        }


def _write_orders(
    rng: random.Random,
    writer: _ChunkWriter,
    count: int,
    next_ids: dict[str, int],
    pick_customer: Callable[[], int],
    products: list[Any],
    until: datetime,
) -> None:
    order_id, item_id, payment_id = (next_ids["orders"], next_ids["order_items"],
                                     next_ids["payments"])
    placed = sorted(_growing_instant(rng, until) for _ in range(count))
    for placed_at in placed:
        status, closed_at = _order_fate(rng, placed_at, until)
        writer.write(Order.__table__, [{  # type: ignore[arg-type]
            "id": order_id, "customer_id": pick_customer(), "status": status,
            "placed_at": placed_at, "closed_at": closed_at,
        }])
        total = 0
        items = []
        for _ in range(rng.randint(1, 8)):
            product_id, price = rng.choice(products)
            quantity = rng.choice((1, 1, 1, 2, 2, 3, 5))
            total += quantity * price
            items.append({"id": item_id, "order_id": order_id, "product_id": product_id,
                          "quantity": quantity, "unit_price_cents": price})
            item_id += 1
        writer.write(OrderItem.__table__, items)  # type: ignore[arg-type]
        if status not in ("pending", "cancelled"):
            paid_at = placed_at + timedelta(minutes=rng.randint(1, 240))
            splits = [total] if rng.random() < 0.9 else [total // 2, total - total // 2]
            payments = []
            for amount in splits:
                payments.append({"id": payment_id, "order_id": order_id, "amount_cents": amount,
                                 "method": rng.choice(("card", "card", "transfer", "wallet")),
                                 "paid_at": min(paid_at, until)})
                payment_id += 1
            writer.write(Payment.__table__, payments)  # type: ignore[arg-type]
        order_id += 1
    next_ids.update(orders=order_id, order_items=item_id, payments=payment_id)


def _order_fate(
    rng: random.Random, placed_at: datetime, until: datetime
) -> tuple[str, datetime | None]:
    age = until - placed_at
    roll = rng.random()
    if age > timedelta(days=30):
        if roll < 0.92:
            return "closed", min(placed_at + timedelta(days=rng.randint(2, 20)), until)
        if roll < 0.99:
            return "cancelled", min(placed_at + timedelta(hours=rng.randint(1, 72)), until)
        return "shipped", None
    if roll < 0.3:
        return "closed", min(placed_at + timedelta(days=rng.randint(2, 20)), until)
    return rng.choice(("pending", "paid", "shipped")), None


def _write_events(
    rng: random.Random,
    writer: _ChunkWriter,
    count: int,
    next_ids: dict[str, int],
    pick_customer: Callable[[], int],
    until: datetime,
) -> None:
    first_order, last_order = 1, max(1, next_ids["orders"] - 1)
    event_id = next_ids["events"]
    batch: list[dict[str, Any]] = []
    for occurred_at in sorted(_growing_instant(rng, until) for _ in range(count)):
        kind = rng.choices(EVENT_KINDS, EVENT_WEIGHTS)[0]
        order_id = rng.randint(first_order, last_order) if kind in ORDER_EVENT_KINDS else None
        customer_id = pick_customer() if rng.random() < 0.95 else None
        batch.append({"id": event_id, "occurred_at": occurred_at, "kind": kind,
                      "customer_id": customer_id, "order_id": order_id,
                      "detail": f"{kind} via {rng.choice(('web', 'app', 'api'))}"})
        event_id += 1
        if len(batch) >= CHUNK_ROWS:
            writer.write(Event.__table__, batch)  # type: ignore[arg-type]
            batch = []
    writer.write(Event.__table__, batch)  # type: ignore[arg-type]
    next_ids["events"] = event_id
