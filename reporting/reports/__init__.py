"""The report registry: adding a report is adding a module here and a line below."""

from __future__ import annotations

from reporting.reports import (
    archive_runs,
    customer_summary,
    events,
    monthly_revenue,
    orders,
    top_products,
)
from reporting.reports.base import AggregateReport, Report, RowReport

REPORTS: dict[str, Report] = {
    module.REPORT.name: module.REPORT
    for module in (orders, customer_summary, monthly_revenue, top_products, events, archive_runs)
}

__all__ = ["REPORTS", "AggregateReport", "Report", "RowReport"]
