"""An independent reference for the reports: plain Python over every row of both databases.

Deliberately naive (load everything, loop, sort): it shares no code with the executor, so a
bug there cannot hide by being repeated here.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

TABLES = ("orders", "order_items", "payments", "events")


def load(engine: sa.Engine, names: tuple[str, ...]) -> dict[str, dict[int, dict[str, Any]]]:
    data: dict[str, dict[int, dict[str, Any]]] = {}
    metadata = sa.MetaData()
    with engine.connect() as connection:
        for name in names:
            table = sa.Table(name, metadata, autoload_with=connection)
            rows = [dict(row) for row in connection.execute(sa.select(table)).mappings()]
            data[name] = {row["id"]: {k: utc(v) for k, v in row.items()} for row in rows}
    return data


def utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == " ":
        return datetime.fromisoformat(value).replace(tzinfo=UTC)  # SQLite text timestamps
    return value


def dataset(primary: sa.Engine, archive: sa.Engine, source: str) -> dict[str, Any]:
    """The rows a source sees: ``all`` is the union, PRIMARY's copy winning on shared keys."""
    live = load(primary, (*TABLES, "customers", "products"))
    kept = load(archive, (*TABLES, "archive_runs"))
    chosen: dict[str, dict[int, dict[str, Any]]] = {}
    for name in TABLES:
        if source == "primary":
            chosen[name] = live[name]
        elif source == "archive":
            chosen[name] = kept[name]
        else:
            shared_orders = live["orders"].keys() & kept["orders"].keys()
            follows_order = name in ("order_items", "payments")
            archived = {k: v for k, v in kept[name].items() if k not in live[name]
                        and not (follows_order and v["order_id"] in shared_orders)}
            chosen[name] = {**archived, **live[name]}
    return {**chosen, "customers": live["customers"], "products": live["products"],
            "archive_runs": kept["archive_runs"]}


def orders(data: dict[str, Any]) -> list[dict[str, Any]]:
    items, paid = defaultdict(list), defaultdict(int)
    for item in data["order_items"].values():
        items[item["order_id"]].append(item)
    for payment in data["payments"].values():
        paid[payment["order_id"]] += payment["amount_cents"]
    return [{"id": o["id"], "customer_id": o["customer_id"],
             "customer_name": data["customers"].get(o["customer_id"], {}).get("name"),
             "status": o["status"], "placed_at": o["placed_at"], "closed_at": o["closed_at"],
             "items": len(items[o["id"]]),
             "total_cents": sum(i["quantity"] * i["unit_price_cents"] for i in items[o["id"]]),
             "paid_cents": paid[o["id"]]} for o in data["orders"].values()]


def events(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": e["id"], "occurred_at": e["occurred_at"], "kind": e["kind"],
             "customer_id": e["customer_id"],
             "customer_name": data["customers"].get(e["customer_id"], {}).get("name"),
             "order_id": e["order_id"], "detail": e["detail"]} for e in data["events"].values()]


def customer_summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    per: dict[int, dict[str, Any]] = {}
    for row in orders(data):
        s = per.setdefault(row["customer_id"], {
            "id": row["customer_id"], "name": row["customer_name"], "orders": 0,
            "revenue_cents": 0, "open_orders": 0, "first_order_at": row["placed_at"],
            "last_order_at": row["placed_at"]})
        s["orders"] += 1
        s["revenue_cents"] += row["total_cents"] if row["status"] != "cancelled" else 0
        s["open_orders"] += row["status"] in ("pending", "paid", "shipped")
        s["first_order_at"] = min(s["first_order_at"], row["placed_at"])
        s["last_order_at"] = max(s["last_order_at"], row["placed_at"])
    return list(per.values())


def monthly_revenue(data: dict[str, Any]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for item in data["order_items"].values():
        order = data["orders"].get(item["order_id"])
        if order is None or order["status"] == "cancelled":
            continue
        month = order["placed_at"].strftime("%Y-%m")
        category = data["products"][item["product_id"]]["category"]
        g = groups.setdefault((month, category), {"month": month, "category": category,
                                                  "revenue_cents": 0, "orders": set(),
                                                  "units": 0})
        g["revenue_cents"] += item["quantity"] * item["unit_price_cents"]
        g["orders"].add(order["id"])
        g["units"] += item["quantity"]
    return [{**g, "orders": len(g["orders"])} for g in groups.values()]


def top_products(data: dict[str, Any], metric: str = "revenue",
                 categories: set[str] | None = None) -> list[dict[str, Any]]:
    """Ranked within ``categories`` when given (a category filter narrows the ranking)."""
    per: dict[int, dict[str, Any]] = {}
    for item in data["order_items"].values():
        order = data["orders"].get(item["order_id"])
        if order is None or order["status"] == "cancelled":
            continue
        product = data["products"][item["product_id"]]
        if categories is not None and product["category"] not in categories:
            continue
        p = per.setdefault(item["product_id"], {"product_id": item["product_id"],
                                                "name": product["name"],
                                                "category": product["category"],
                                                "revenue_cents": 0, "units": 0})
        p["revenue_cents"] += item["quantity"] * item["unit_price_cents"]
        p["units"] += item["quantity"]
    key = "units" if metric == "units" else "revenue_cents"
    for p in per.values():
        p["rank"] = 1 + sum(1 for q in per.values() if q[key] > p[key])
    return list(per.values())


def archive_runs(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("id", "policy", "kind", "status", "cutoff", "started_at",
                               "finished_at", "batches", "rows_moved", "rows_per_second",
                               "error")}
            for r in data["archive_runs"].values()]


BUILDERS = {"orders": orders, "events": events, "customer-summary": customer_summary,
            "monthly-revenue": monthly_revenue, "top-products": top_products,
            "archive-runs": archive_runs}
