"""Table endpoints on the demo schema, against an independent reference.

Each case walks every page of ``/api/v1/tables/<name>`` through its cursors and compares
the rows, in order, with plain Python over every row of both databases (tests/reference.py
loads them; nothing here shares code with the executor): filters evaluated with SQL's
NULL rules, NULLs sorted last (first descending), PRIMARY's copy winning a key caught in
both databases. The data has rows in PRIMARY only, in ARCHIVE only, and in both (a batch
whose deletes failed).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient

from sediment.core.instants import parse_instant
from tests import reference
from tests.archiving import run, seed_shop, small_batches, snapshot
from tests.support import walk_pages
from tests.test_shared_rows import _run_failing_at

STAMPS = ("archived_at", "archive_run_id")
Row = dict[str, Any]


@pytest.fixture(scope="module")
def shop(migrated_app: Flask, urls: tuple[str, str]) -> Iterator[Flask]:
    """The shop with its orders archived and one events batch left in both databases.
    Built once for the module: every test here only reads."""
    app = migrated_app
    with app.app_context():
        from tests.support import empty_all_tables, engines_of
        engines = engines_of(app)
        empty_all_tables(engines)
        seed_shop(engines.primary, engines.archive)
        orders, _events = small_batches(app)
        run(app, engines.primary, engines.archive, orders)
        _run_failing_at(app, engines.primary, engines.archive, engines.primary, "DELETE")
        in_both = (snapshot(engines.primary)["events"].keys()
                   & snapshot(engines.archive, twins=True)["events"].keys())
        assert in_both, "the fixture must leave events in both databases"
        yield app
        empty_all_tables(engines)


def reference_rows(app: Flask, table: str, source: str) -> list[Row]:
    from tests.support import engines_of
    engines = engines_of(app)
    live = reference.load(engines.primary, (table,))[table]
    if source == "primary" or table in ("customers", "products"):  # never archived
        return list(live.values())
    kept = {key: {k: v for k, v in row.items() if k not in STAMPS}
            for key, row in reference.load(engines.archive, (table,))[table].items()}
    if source == "archive":
        return list(kept.values())
    return [*live.values(), *(row for key, row in kept.items() if key not in live)]


def like(pattern: str, *, fold: bool) -> Callable[[Any], bool]:
    expression = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c)
                         for c in pattern)
    compiled = re.compile(f"^{expression}$", re.DOTALL | (re.IGNORECASE if fold else 0))
    return lambda value: value is not None and compiled.match(value) is not None


def matches(row: Row, filters: dict[str, str]) -> bool:
    """SQL's answer for ``row``: a comparison with NULL is never true."""
    for argument, raw in filters.items():
        column, _, op = argument.partition("[")
        op = op.rstrip("]") or "eq"
        value = row[column]
        if op == "isnull":
            if (value is None) != (raw == "true"):
                return False
            continue
        if value is None:
            return False
        if op in ("like", "ilike"):
            if not like(raw, fold=op == "ilike")(value):
                return False
            continue
        wanted = [typed(value, item) for item in raw.split(",")]
        checks = {"eq": value == wanted[0], "ne": value != wanted[0], "in": value in wanted,
                  "gt": value > wanted[0], "gte": value >= wanted[0],
                  "lt": value < wanted[0], "lte": value <= wanted[0]}
        if not checks[op]:
            return False
    return True


def typed(example: Any, raw: str) -> Any:
    if isinstance(example, datetime):
        return parse_instant(raw)
    if isinstance(example, int):
        return int(raw)
    return raw


def expected(app: Flask, table: str, query: str) -> list[Row]:
    args = dict(parse_qsl(query, keep_blank_values=True))
    source = args.pop("source", "all")
    sort = args.pop("sort", "id")
    descending = sort.startswith("-")
    column = sort.lstrip("-")
    rows = [row for row in reference_rows(app, table, source) if matches(row, args)]
    # NULLs after every value ascending; the whole order reversed descending.
    rows.sort(key=lambda row: (row[column] is None, row[column] or 0, row["id"]),
              reverse=descending)
    return rows


def walk(client: FlaskClient, table: str, query: str, limit: int = 7) -> list[Row]:
    return walk_pages(client, f"/api/v1/tables/{table}", query, limit)


def comparable(row: Row) -> Row:
    """API values as Python ones: timestamps as instants."""
    return {key: parse_instant(value) if isinstance(value, str) and key.endswith("_at")
            else value for key, value in row.items()}


CASES = [
    ("orders", "sort=-closed_at"),
    ("orders", "sort=closed_at&status[in]=closed,cancelled"),
    ("orders", "closed_at[isnull]=true"),
    ("orders", "source=archive&sort=customer_id&customer_id[lte]=12"),
    ("order_items", "quantity[gte]=2&sort=-order_id"),
    ("payments", "source=primary&paid_at[lt]=2026-03-01T00:00:00Z&method[ne]=card"),
    ("events", "sort=kind&kind[like]=order%"),
    ("events", "sort=-kind&kind[ilike]=ORDER_%"),
    ("events", "kind[like]=ORDER%"),  # like matches case, on SQLite too
    ("events", "customer_id[isnull]=false&sort=-customer_id"),
    ("events", "sort=customer_id"),
    ("events", "sort=-order_id&order_id[ne]=3"),
    ("events", "detail[like]=%"),
    ("customers", "sort=id&id[gt]=5"),
    ("products", "category[in]=books,games&sort=category"),
]


@pytest.mark.parametrize(("table", "query"), CASES)
def test_every_page_matches_the_reference(shop: Flask, table: str, query: str) -> None:
    got = [comparable(row) for row in walk(shop.test_client(), table, query)]
    want = expected(shop, table, query)
    assert [row["id"] for row in got] == [row["id"] for row in want]
    assert got == want


def test_the_same_rows_whatever_the_page_size(shop: Flask) -> None:
    client = shop.test_client()
    query = "sort=-customer_id&id[lte]=250"  # NULLs and values, with page ends among both
    pages = [walk(client, "events", query, limit) for limit in (1, 13, 1000)]
    assert pages[0] == pages[1] == pages[2]


def test_exact_counts_count_rows_in_both_databases_once(shop: Flask) -> None:
    client = shop.test_client()
    for table, query in CASES:
        args = dict(parse_qsl(query))
        args.pop("sort", None)
        body = client.get(f"/api/v1/tables/{table}?{urlencode(args)}&count=exact").get_json()
        assert body["count"] == {"value": len(expected(shop, table, query)), "kind": "exact"}


def test_csv_holds_the_pages_rows(shop: Flask) -> None:
    client = shop.test_client()
    query = "sort=-customer_id&customer_id[isnull]=false"
    response = client.get(f"/api/v1/tables/events.csv?{query}&formula=raw")
    assert response.status_code == 200
    records = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    pages = walk(client, "events", query, limit=1000)
    assert [int(r["id"]) for r in records] == [row["id"] for row in pages]
    assert response.headers["X-Row-Count"] == str(len(pages))


def test_columns_picks_and_orders_the_columns(shop: Flask) -> None:
    client = shop.test_client()
    body = client.get("/api/v1/tables/orders?columns=status,id&limit=3").get_json()
    assert [list(row) for row in body["rows"]] == [["status", "id"]] * 3
    csv_text = client.get("/api/v1/tables/orders.csv?columns=status,id").get_data(as_text=True)
    assert csv_text.splitlines()[0] == "status,id"


def test_the_catalog_lists_tables_with_columns_and_types(shop: Flask) -> None:
    body = shop.test_client().get("/api/v1/tables").get_json()
    tables = {table["name"]: table for table in body["tables"]}
    assert set(tables) == {"orders", "order_items", "payments", "events", "customers",
                           "products"}
    orders = tables["orders"]
    assert {c["name"]: (c["type"], c["nullable"]) for c in orders["columns"]} == {
        "id": ("integer", False), "customer_id": ("integer", False),
        "status": ("string", False), "placed_at": ("datetime", False),
        "closed_at": ("datetime", True)}
    assert orders["sources"] == ["primary", "archive", "all"]
    assert tables["customers"]["sources"] == ["primary"]
    assert orders["key"] == ["id"] and "closed_at" in orders["sort_keys"]
    assert orders["links"]["csv"] == "/api/v1/tables/orders.csv"
