"""``orders``: one row per order with its customer, item count, total and amount paid."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from reporting.reports.base import Column, DatabaseTables, Filter, Lookup, RowReport, total


def query(tables: DatabaseTables, params: Mapping[str, Any]) -> sa.Select[Any]:
    """Orders with correlated subqueries over their items and payments.

    Correlated subqueries (not a grouped join) are evaluated only for the rows a page
    actually reads, so page 1 does not aggregate every order item in the database.
    """
    orders, items, payments = tables["orders"], tables["order_items"], tables["payments"]
    of_order = items.c.order_id == orders.c.id
    item_count = sa.select(sa.func.count()).where(of_order).scalar_subquery()
    line_total = total(items.c.quantity * items.c.unit_price_cents)
    order_total = sa.select(line_total).where(of_order).scalar_subquery()
    paid = (sa.select(total(payments.c.amount_cents))
            .where(payments.c.order_id == orders.c.id).scalar_subquery())
    return sa.select(
        orders.c.id, orders.c.customer_id, orders.c.status, orders.c.placed_at, orders.c.closed_at,
        item_count.label("items"), order_total.label("total_cents"), paid.label("paid_cents"),
    )


REPORT = RowReport(
    name="orders",
    title="Orders",
    description="One row per order: customer, status, item count, total and amount paid. "
    "Sorting by total_cents computes every matching order's total for each page (no index "
    "can hold a sum over items): filter first on large shops; reports.statement_timeout_ms "
    "bounds it.",
    columns=(
        Column("id", "integer", "order id"),
        Column("customer_id", "integer", "customer id"),
        Column("customer_name", "string", "customer's name (from PRIMARY)"),
        Column("status", "string", "pending, paid, shipped, closed or cancelled"),
        Column("placed_at", "datetime", "when the order was placed (UTC)"),
        Column("closed_at", "datetime", "when it was closed or cancelled (UTC)"),
        Column("items", "integer", "number of order lines"),
        Column("total_cents", "integer", "sum of quantity x unit price"),
        Column("paid_cents", "integer", "sum of payments"),
    ),
    key=("id",),
    sort_keys=("placed_at", "total_cents", "id"),
    default_sort="-placed_at",
    filters=(
        Filter("customer_id", "integer", ("eq", "in"), "only these customers"),
        Filter("status", "string", ("eq", "ne", "in"), "order status",
               choices=("pending", "paid", "shipped", "closed", "cancelled")),
        Filter("placed_at", "datetime", ("gte", "gt", "lte", "lt"), "placed in this range"),
        Filter("total_cents", "integer", ("gte", "gt", "lte", "lt"), "order total bounds"),
    ),
    lookups=(Lookup("customer_name", "customer_id", "customers", "name"),),
    query=query,
    root="orders",
)
