"""The report registry: adding a report is adding a module here and a line below (or a
``.sql`` file to ``sql/``: see reporting.sql_reports)."""

from __future__ import annotations

from pathlib import Path

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

#: The demo shop's reports declared as SQL files, served beside the demo schema.
DEMO_SQL_REPORTS = Path(__file__).resolve().parent / "sql"

__all__ = ["DEMO_SQL_REPORTS", "REPORTS", "AggregateReport", "Report", "RowReport"]
