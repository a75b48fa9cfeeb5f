"""``customer-summary``: lifetime figures per customer over live and archived orders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from reporting.reports.base import (
    AggregateReport,
    Column,
    DatabaseTables,
    Filter,
    Lookup,
    ReferenceData,
    total,
)

if TYPE_CHECKING:
    import pandas as pd  # only annotations here: pandas loads with the first aggregate

OPEN_STATUSES = ("pending", "paid", "shipped")


def partials(tables: DatabaseTables, params: Mapping[str, Any],
             reference: ReferenceData) -> sa.Select[Any]:
    orders, items = tables["orders"], tables["order_items"]
    totals = (sa.select(items.c.order_id,
                        total(items.c.quantity * items.c.unit_price_cents).label("total"))
              .group_by(items.c.order_id).subquery("totals"))
    counted = orders.c.status != "cancelled"
    return (
        sa.select(
            orders.c.customer_id.label("id"),
            sa.func.count().label("orders"),
            total(sa.case((counted, totals.c.total), else_=0)).label("revenue_cents"),
            total(sa.case((orders.c.status.in_(OPEN_STATUSES), 1), else_=0)).label("open_orders"),
            sa.func.min(orders.c.placed_at).label("first_order_at"),
            sa.func.max(orders.c.placed_at).label("last_order_at"),
        )
        .select_from(orders.outerjoin(totals, totals.c.order_id == orders.c.id))
        .group_by(orders.c.customer_id)
    )


def finish(frame: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    return frame[["id", "name", "orders", "revenue_cents", "open_orders", "first_order_at",
                  "last_order_at"]]


REPORT = AggregateReport(
    name="customer-summary",
    title="Customer summary",
    description="Per customer: lifetime orders, revenue (cancelled orders excluded), open "
    "orders, first and last order, over live and archived data combined exactly.",
    columns=(
        Column("id", "integer", "customer id"),
        Column("name", "string", "customer's name"),
        Column("orders", "integer", "orders placed"),
        Column("revenue_cents", "integer", "revenue of orders not cancelled"),
        Column("open_orders", "integer", "orders pending, paid or shipped"),
        Column("first_order_at", "datetime", "first order (UTC)"),
        Column("last_order_at", "datetime", "last order (UTC)"),
    ),
    key=("id",),
    sort_keys=("id", "name", "revenue_cents"),
    default_sort="-revenue_cents",
    filters=(
        Filter("revenue_cents", "integer", ("gte", "gt", "lte", "lt"), "revenue bounds"),
        Filter("open_orders", "integer", ("gte", "gt", "eq"), "open orders"),
    ),
    lookups=(Lookup("name", "id", "customers", "name"),),
    partials=partials,
    group_by=("id",),
    combine={"orders": "sum", "revenue_cents": "sum", "open_orders": "sum",
             "first_order_at": "min", "last_order_at": "max"},
    finish=finish,
    root="orders",
)
