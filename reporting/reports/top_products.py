"""``top-products``: products ranked by revenue or units in a date range."""

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
    Param,
    ReferenceData,
    total,
)

if TYPE_CHECKING:
    import pandas as pd  # only annotations here: pandas loads with the first aggregate


def partials(tables: DatabaseTables, params: Mapping[str, Any],
             reference: ReferenceData) -> sa.Select[Any]:
    """Per product: a subquery picks the orders in range, the outer query sums their lines."""
    orders, items = tables["orders"], tables["order_items"]
    in_range = sa.select(orders.c.id).where(orders.c.status != "cancelled")
    if params.get("from") is not None:
        in_range = in_range.where(orders.c.placed_at >= params["from"])
    if params.get("to") is not None:
        in_range = in_range.where(orders.c.placed_at < params["to"])
    return (
        sa.select(items.c.product_id,
                  total(items.c.quantity * items.c.unit_price_cents).label("revenue_cents"),
                  total(items.c.quantity).label("units"))
        .where(items.c.order_id.in_(in_range))
        .group_by(items.c.product_id)
    )


def finish(frame: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Rank after combining: a per-database rank could not be merged."""
    metric = "units" if params.get("metric") == "units" else "revenue_cents"
    frame = frame.copy()
    frame["rank"] = frame[metric].rank(method="min", ascending=False).astype("int64")
    return frame[["rank", "product_id", "name", "category", "revenue_cents", "units"]]


REPORT = AggregateReport(
    name="top-products",
    title="Top products",
    description="Products ranked by revenue or units sold in a date range (cancelled orders "
    "excluded); ties share a rank. A category filter ranks within those categories.",
    columns=(
        Column("rank", "integer", "1 = best"),
        Column("product_id", "integer", "product id"),
        Column("name", "string", "product name"),
        Column("category", "string", "product category"),
        Column("revenue_cents", "integer", "revenue in range"),
        Column("units", "integer", "units sold in range"),
    ),
    key=("product_id",),
    sort_keys=("rank", "revenue_cents", "units", "product_id"),
    default_sort="rank",
    filters=(Filter("category", "string", ("eq", "in"), "product category"),
             Filter("rank", "integer", ("lte",), "top N")),
    params=(
        Param("metric", "string", "revenue", "rank by revenue or units",
              choices=("revenue", "units")),
        Param("from", "datetime", None, "orders placed at or after (ISO-8601)"),
        Param("to", "datetime", None, "orders placed before (ISO-8601)"),
    ),
    lookups=(Lookup("name", "product_id", "products", "name"),
             Lookup("category", "product_id", "products", "category")),
    partials=partials,
    group_by=("product_id",),
    combine={"revenue_cents": "sum", "units": "sum"},
    finish=finish,
    root="orders",
)
