"""Every report, source, sort and filter, paged through the API, equals the reference."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest
import sqlalchemy as sa
from flask import Flask

from archive.runner import RunLimits
from reporting.execution import fetch_rows
from reporting.pagination import PageCursor
from reporting.report_databases import apply_lookups
from reporting.reports import REPORTS
from reporting.reports.base import Report, RowReport
from reporting.request import parse_request
from reporting.state import state_of
from reporting.statements import source_query
from sediment.core.instants import parse_instant
from tests import reference
from tests.archiving import run, seed_shop, small_batches
from tests.support import settings_of

CASES: list[tuple[str, str, dict[str, str]]] = [
    ("orders", "-placed_at", {}),
    ("orders", "placed_at", {"status": "closed"}),
    ("orders", "-total_cents", {"status[in]": "closed,cancelled", "total_cents[gte]": "5000"}),
    ("orders", "id", {"placed_at[gte]": "2023-09-01", "customer_id[in]": "1,2,3,4,5,6,7,8"}),
    ("events", "-occurred_at", {}),
    ("events", "id", {"kind": "login", "occurred_at[lt]": "2026-01-01T00:00:00Z"}),
    ("customer-summary", "-revenue_cents", {}),
    ("customer-summary", "name", {"revenue_cents[gte]": "20000"}),
    ("monthly-revenue", "month", {}),
    ("monthly-revenue", "-revenue_cents", {"category": "books", "month[gte]": "2023-08"}),
    ("top-products", "rank", {}),
    ("top-products", "-units", {"metric": "units", "category[in]": "books,toys"}),
    ("archive-runs", "-id", {}),
    ("archive-runs", "started_at", {"status[ne]": "lock_busy"}),
]
#: The demo's SQL-file rewrites (reporting/reports/sql) against the same reference.
SQL_CASES = [(f"{name}-sql", sort, params) for name, sort, params in CASES
             if name in ("orders", "customer-summary")]
OPS = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gte": operator.ge,
       "lt": operator.lt, "lte": operator.le}


@pytest.fixture
def shop(app: Flask, primary: sa.Engine, archive: sa.Engine) -> Flask:
    """Live and archived data, plus orders caught in both databases by a failed run."""
    seed_shop(primary, archive)
    orders, events = small_batches(app, orders=7, events=50)
    run(app, primary, archive, orders, limits=RunLimits(max_rows=40))
    run(app, primary, archive, events, limits=RunLimits(max_rows=400))

    def fail_delete(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE"):
            raise sa.exc.OperationalError(statement, None, RuntimeError("injected"))

    sa.event.listen(primary, "before_cursor_execute", fail_delete)
    try:
        one_try = dataclasses.replace(settings_of(app).archive, retry_attempts=1)
        failed = run(app, primary, archive, orders, archive_settings=one_try,
                     limits=RunLimits(max_rows=7))
    finally:
        sa.event.remove(primary, "before_cursor_execute", fail_delete)
    assert failed.status == "error"
    with primary.begin() as connection:  # PRIMARY changes a row also copied: PRIMARY wins
        connection.execute(sa.text(
            "UPDATE orders SET status = 'closed' WHERE id = (SELECT min(o.id) FROM orders o "
            "WHERE o.status = 'cancelled' AND o.closed_at IS NOT NULL)"))
    return app


def pages(client: Any, name: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
    cursor = None
    for _ in range(1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(f"/api/v1/reports/{name}", query_string=query)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        yield body
        cursor = body["page"]["next_cursor"]
        if cursor is None:
            assert "Link" not in response.headers
            return
        target, _, relation = response.headers["Link"].partition(">; ")
        path, _, link_query = target.lstrip("<").partition("?")
        assert (relation, path) == ('rel="next"', f"/api/v1/reports/{name}")
        assert dict(parse_qsl(link_query)) == {**params, "cursor": cursor}
    pytest.fail("too many pages")


def expected_rows(primary: sa.Engine, archive: sa.Engine, report: Report, source: str,
                  sort: str, params: dict[str, str]) -> list[dict[str, Any]]:
    name = report.name.removesuffix("-sql")  # a SQL rewrite answers as its original
    data = reference.dataset(primary, archive, source)
    builder = reference.BUILDERS[name]
    if name == "top-products":
        categories = params.get("category[in]")
        rows = builder(data, params.get("metric", "revenue"),
                       set(categories.split(",")) if categories else None)
    else:
        rows = builder(data)
    for arg, raw in params.items():
        if any(p.name == arg for p in report.params):
            continue
        column, _, op = arg.partition("[")
        op = op.rstrip("]") or "eq"
        spec = next(f for f in report.filters if f.column == column)
        convert = {"integer": int, "datetime": parse_instant}.get(spec.type, str)
        if op == "in":
            allowed = {convert(v) for v in raw.split(",")}
            rows = [r for r in rows if r[column] in allowed]
        else:
            rows = [r for r in rows if r[column] is not None and OPS[op](r[column], convert(raw))]
    descending = sort.startswith("-")
    order = (sort.lstrip("-"), *report.key)
    rows.sort(key=lambda r: tuple(r[c] for c in order), reverse=descending)
    return [{k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v)
             for k, v in row.items()} for row in rows]


@pytest.mark.parametrize(("name", "sort", "params"), [*CASES, *SQL_CASES],
                         ids=[f"{c[0]}:{c[1]}:{'&'.join(c[2])}" for c in [*CASES, *SQL_CASES]])
def test_report_pages_equal_the_reference(
    shop: Flask, primary: sa.Engine, archive: sa.Engine, name: str, sort: str,
    params: dict[str, str],
) -> None:
    client = shop.test_client()
    limit = "50" if name == "events" else "9"
    seen = {}
    report = state_of(shop).reports[name]
    for source in report.sources:
        query = {**params, "sort": sort, "limit": limit, "source": source}
        got = [row for body in pages(client, name, query) for row in body["rows"]]
        want = expected_rows(primary, archive, report, source, sort, params)
        assert got == want, f"{name} source={source} sort={sort} {params}"
        seen[source] = len(got)
    assert seen.get("all", seen.get("archive")), f"{name}: no rows; the case tests nothing"
    if "all" in seen:
        assert seen["archive"] > 0, f"{name}: nothing archived; the merge is untested"


def test_top_products_range(shop: Flask, primary: sa.Engine, archive: sa.Engine) -> None:
    body = shop.test_client().get("/api/v1/reports/top-products", query_string={
        "from": "2025-01-01", "to": "2025-07-01", "limit": "1000"}).get_json()
    data = reference.dataset(primary, archive, "all")
    start, end = parse_instant("2025-01-01"), parse_instant("2025-07-01")
    data["orders"] = {k: o for k, o in data["orders"].items() if start <= o["placed_at"] < end}
    want = sorted(reference.top_products(data), key=lambda r: (r["rank"], r["product_id"]))
    assert body["rows"] == want and want


def test_requests_differing_only_in_values_share_one_statement(
    shop: Flask, primary: sa.Engine, archive: sa.Engine,
) -> None:
    """The statement cache keys on a request's shape; values are bound at execution, so a
    reused statement still answers each request's own values, cursors included."""
    client = shop.test_client()
    for source in ("primary", "archive"):
        for status in ("closed", "cancelled", "paid"):
            query = {"status": status, "sort": "placed_at", "limit": "4", "source": source}
            got = [row for body in pages(client, "orders", query) for row in body["rows"]]
            assert got == expected_rows(primary, archive, REPORTS["orders"], source, "placed_at",
                                        {"status": status}), (source, status)
    sources, report = state_of(shop).report_databases, REPORTS["orders"]

    def statement_for(args: dict[str, str]) -> object:
        request = parse_request(report, {k: [v] for k, v in args.items()},
                                default_limit=100, max_limit=1000)
        return source_query(sources, request, report, "primary")  # type: ignore[arg-type]

    same_shape = {id(statement_for({"status": s})) for s in ("closed", "cancelled", "paid")}
    assert len(same_shape) == 1
    assert statement_for({"status[ne]": "closed"}) is not statement_for({"status": "closed"})
    assert statement_for({"sort": "id"}) is not statement_for({"sort": "-id"})


ROW_CASES = [case for case in CASES if isinstance(REPORTS[case[0]], RowReport)]


@pytest.mark.parametrize(("name", "sort", "params"), ROW_CASES,
                         ids=[f"{c[0]}:{c[1]}:{'&'.join(c[2])}" for c in ROW_CASES])
def test_direct_pages_equal_sqlalchemy_pages(
    shop: Flask, name: str, sort: str, params: dict[str, str],
) -> None:
    """On PostgreSQL, row-report pages run on the psycopg2 cursor (reporting.pgfetch) equal
    SQLAlchemy's value for value, types and time zones included; elsewhere there is no
    such path."""
    sources, report = state_of(shop).report_databases, REPORTS[name]
    assert isinstance(report, RowReport)
    for source in (s for s in ("primary", "archive") if s in report.sources):
        args = {**params, "sort": sort, "source": source}
        request = parse_request(report, {k: [v] for k, v in args.items()},
                                default_limit=100, max_limit=1000)
        query = source_query(sources, request, report, source)
        engine = sources.engines[source]
        if engine.dialect.name != "postgresql":
            assert query.first_page_direct is None and query.next_page_direct is None
            continue
        if name != "archive-runs":  # its float column is left to SQLAlchemy
            assert query.first_page_direct and query.next_page_direct
        cursor = None
        with engine.connect() as connection:
            for _ in range(2):
                direct = fetch_rows(connection, query, request, cursor, 3)
                result = connection.execute(query.statement(cursor),
                                            query.values(request.filters, cursor, 3))
                expected = [dict(row._mapping) for row in result]
                assert [{k: repr(v) for k, v in row.items()} for row in direct] == \
                    [{k: repr(v) for k, v in row.items()} for row in expected]
                if not direct:
                    break
                cursor = PageCursor(tuple(direct[-1][c] for c in (request.sort, *request.key)))


def test_only_archive_rows_are_looked_up_in_primary(shop: Flask) -> None:
    """PRIMARY's statement joins the reference tables itself: a page read from PRIMARY alone
    asks it nothing more, even for a row whose join found nothing; ARCHIVE's rows are
    filled in one query."""
    sources, report = state_of(shop).report_databases, REPORTS["events"]
    assert isinstance(report, RowReport)
    seen: list[str] = []

    def record(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        seen.append(statement)

    engine = sources.engines["primary"]
    with engine.connect() as connection:
        customer = connection.execute(sa.text("SELECT id, name FROM customers LIMIT 1")).one()
    named = {}
    for source in ("primary", "archive"):
        request = parse_request(report, {"source": [source]}, default_limit=100,
                                max_limit=1000)
        rows = [{"id": 1, "customer_id": customer.id, "customer_name": None}]
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            apply_lookups(sources, request, report.lookups, rows)
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
        named[source] = (rows[0]["customer_name"], len(seen))
    assert named == {"primary": (None, 0), "archive": (customer.name, 1)}


def test_aggregate_results_are_reused_and_stay_exact_while_the_archiver_moves_rows(
    app: Flask, primary: sa.Engine, archive: sa.Engine, urls: tuple[str, str],
) -> None:
    """``source=all`` results survive a run (the union does not change); a one-database
    result is recomputed once rows moved."""
    from reporting.app import create_app
    from tests.support import make_settings

    cached = create_app(make_settings(*urls, SEDIMENT_REPORTS__AGGREGATE_CACHE="60s"))
    client = cached.test_client()
    seed_shop(primary, archive)
    orders = small_batches(app, orders=7)[0]
    run(app, primary, archive, orders, limits=RunLimits(max_rows=20))

    def computed_at(source: str, cursor: str | None = None) -> tuple[str, str | None]:
        query = {"limit": "5", "sort": "-revenue_cents", "source": source,
                 **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/reports/customer-summary", query_string=query).get_json()
        return body["meta"]["computed_at"], body["page"]["next_cursor"]

    def all_rows(source: str) -> list[dict[str, Any]]:
        query = {"limit": "5", "sort": "-revenue_cents", "source": source}
        return [r for body in pages(client, "customer-summary", query) for r in body["rows"]]

    merged, cursor = computed_at("all")
    assert computed_at("all", cursor)[0] == merged  # page two reuses page one's groups
    live, _ = computed_at("primary")
    run(app, primary, archive, orders, limits=RunLimits(max_rows=20))  # rows move
    assert computed_at("all")[0] == merged
    assert computed_at("primary")[0] > live
    for source in ("all", "primary", "archive"):
        assert all_rows(source) == expected_rows(
            primary, archive, REPORTS["customer-summary"], source, "-revenue_cents", {}), source
    for engine in state_of(cached).report_databases.engines.values():
        engine.dispose()


def test_a_report_that_forgets_its_query_or_root_is_refused_when_declared() -> None:
    """Required fields, not defaults: a report without its query cannot even be built."""
    from reporting.reports.base import AggregateReport, Column, RowReport

    common: dict[str, Any] = dict(name="x", title="X", description="", key=("id",),
                                  columns=(Column("id", "integer"),), sort_keys=("id",),
                                  default_sort="id")
    with pytest.raises(TypeError, match="query"):
        RowReport(**common, root="events")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="root"):
        RowReport(**common, query=lambda tables, params: sa.select(1))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="partials"):
        AggregateReport(**common, root="orders", group_by=("id",),  # type: ignore[call-arg]
                        combine={"n": "sum"})
