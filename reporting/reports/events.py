"""``events``: the audit log, with the customer's name. The big table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from reporting.reports.base import Column, DatabaseTables, Filter, Lookup, RowReport


def query(tables: DatabaseTables, params: Mapping[str, Any]) -> sa.Select[Any]:
    events = tables["events"]
    return sa.select(events.c.id, events.c.occurred_at, events.c.kind, events.c.customer_id,
                     events.c.order_id, events.c.detail)


REPORT = RowReport(
    name="events",
    title="Audit events",
    description="The append-only audit log, newest first by default.",
    columns=(
        Column("id", "integer", "event id"),
        Column("occurred_at", "datetime", "when it happened (UTC)"),
        Column("kind", "string", "what happened"),
        Column("customer_id", "integer", "customer concerned, if any"),
        Column("customer_name", "string", "customer's name (from PRIMARY)"),
        Column("order_id", "integer", "order concerned, if any"),
        Column("detail", "string", "free text"),
    ),
    key=("id",),
    sort_keys=("occurred_at", "id"),
    default_sort="-occurred_at",
    filters=(
        Filter("kind", "string", ("eq", "ne", "in"), "event kind"),
        Filter("occurred_at", "datetime", ("gte", "gt", "lte", "lt"), "time range"),
        Filter("customer_id", "integer", ("eq", "in"), "only these customers"),
        Filter("order_id", "integer", ("eq",), "only this order"),
    ),
    lookups=(Lookup("customer_name", "customer_id", "customers", "name"),),
    query=query,
    root="events",
)
