"""``monthly-revenue``: revenue, orders and units per month and product category."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from reporting.reports.base import (
    AggregateReport,
    Column,
    DatabaseTables,
    Filter,
    Param,
    ReferenceData,
    month_of,
    total,
)

if TYPE_CHECKING:
    import pandas as pd  # only annotations here: pandas loads with the first aggregate


def partials(tables: DatabaseTables, params: Mapping[str, Any],
             reference: ReferenceData) -> sa.Select[Any]:
    """Per (month, category): categories come from PRIMARY as a CASE literal, not a join.

    ``count(DISTINCT order)`` is exact across databases because an order lives in one of
    them (orders caught in both are excluded from ARCHIVE's partials by the executor).
    """
    orders, items = tables["orders"], tables["order_items"]
    category = sa.case(dict(reference.product_categories), value=items.c.product_id,
                       else_="uncategorised") if reference.product_categories else \
        sa.literal("uncategorised")
    month = month_of(orders.c.placed_at, tables.dialect)
    return (
        sa.select(
            month.label("month"), category.label("category"),
            total(items.c.quantity * items.c.unit_price_cents).label("revenue_cents"),
            sa.func.count(sa.distinct(orders.c.id)).label("orders"),
            total(items.c.quantity).label("units"),
        )
        .select_from(orders.join(items, items.c.order_id == orders.c.id))
        .where(orders.c.status != "cancelled")
        .group_by(month, category)
    )


def finish(frame: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    if params.get("pivot") != "category":
        return frame[["month", "category", "revenue_cents", "orders", "units"]]
    wide = frame.pivot_table(index="month", columns="category", values="revenue_cents",
                             aggfunc="sum", fill_value=0)
    wide.columns = [f"revenue_cents_{name}" for name in wide.columns]
    return wide.reset_index()


REPORT = AggregateReport(
    name="monthly-revenue",
    title="Monthly revenue by category",
    description="Revenue (cancelled orders excluded), orders and units per month (UTC) and "
    "product category. pivot=category gives one row per month and a revenue column per "
    "category.",
    columns=(
        Column("month", "string", "YYYY-MM (UTC)"),
        Column("category", "string", "product category"),
        Column("revenue_cents", "integer", "sum of quantity x unit price"),
        Column("orders", "integer", "orders with items in the category"),
        Column("units", "integer", "units sold"),
    ),
    key=("month", "category"),
    sort_keys=("month", "revenue_cents"),
    default_sort="month",
    filters=(
        Filter("month", "string", ("eq", "gte", "lte"), "month range, YYYY-MM"),
        Filter("category", "string", ("eq", "in"), "product category"),
    ),
    params=(Param("pivot", "string", "none", "none: one row per month and category; "
                  "category: one row per month, a revenue column per category",
                  choices=("none", "category")),),
    partials=partials,
    group_by=("month", "category"),
    combine={"revenue_cents": "sum", "orders": "sum", "units": "sum"},
    finish=finish,
    root="orders",
    wide_key=("month",),
)
