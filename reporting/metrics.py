"""``GET /metrics``: Prometheus metrics of the HTTP service and of the archiver.

Two kinds, collected differently:

* **Counted here** as requests are served (requests by route and status, latency, rows and
  bytes served per report and format, CSV downloads active and refused). With several
  gunicorn worker processes, ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` and each worker
  writes its samples there; a scrape of any worker sums them all.
* **Read at scrape time**: the archive's figures from the ledger (rows archived, batches,
  runs by status including ``lock_busy``, last run duration and status, last successful
  run), the backlog of aged rows (see :mod:`reporting.operations`) and the connection
  pools' checked-out connections (of the process that answers the scrape). The ledger is
  the archiver's own record, so these are right whichever process ran the policies.

``/metrics`` needs no token unless ``auth.metrics_public`` is false; then the ``metrics``
scope.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from reporting.access_log import started_at
from reporting.auth import require
from reporting.operations import SUCCESSFUL, PolicyOverview, policy_overviews
from reporting.state import AppState, current_state
from sediment.core.error_text import first_line

logger = logging.getLogger(__name__)

blueprint = Blueprint("metrics", __name__)

# A ``_created`` series beside every counter doubles the page for nothing an alert uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Set (by ``serve --workers N``) when several processes serve: samples go to files there.
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter("sediment_http_requests", "HTTP requests answered, by route and status",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("sediment_http_request_duration_seconds",
                         "Time to the first byte of each response, by route", ["route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                  2.5, 5, 10, 30))
ROWS_SERVED = Counter("sediment_report_rows", "Rows served, by report and format",
                      ["report", "format"])
BYTES_SERVED = Counter("sediment_report_bytes", "Response bytes served, by report and format",
                       ["report", "format"])
CSV_ACTIVE = Gauge("sediment_csv_downloads_active", "CSV downloads streaming now",
                   multiprocess_mode="livesum")
CSV_REFUSED = Counter("sediment_csv_downloads_refused",
                      "CSV downloads refused before the first byte, by reason", ["reason"])


_CHILDREN: dict[tuple[object, ...], Any] = {}
#: Methods counted by name; any other (a client can send any word) is "other", so that no
#: client can grow the series without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: ``labels`` takes a lock and builds its key on
    every call, a share of a page's time worth keeping (the children never change)."""
    key = (id(metric), *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def install_metrics(app: Flask) -> None:
    """Count every request of ``app`` and serve ``/metrics``."""

    @app.after_request
    def _count(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else "<unmatched>"
        method = request.method if request.method in _METHODS else "other"
        _child(HTTP_REQUESTS, method, route, str(response.status_code)).inc()
        _child(HTTP_LATENCY, route).observe(_elapsed())
        return response

    app.register_blueprint(blueprint)


def _elapsed() -> float:
    return max(0.0, time.perf_counter() - started_at())


def count_served(report: str, fmt: str, rows: int, size: int) -> None:
    """Add a response's rows and bytes to the report's counters."""
    _child(ROWS_SERVED, report, fmt).inc(rows)
    _child(BYTES_SERVED, report, fmt).inc(size)


def metered(body: Iterable[bytes], report: str, rows: int) -> Iterator[bytes]:
    """``body`` (a CSV download), counting its bytes as they go and its rows at the end."""
    size = 0
    try:
        for chunk in body:
            size += len(chunk)
            yield chunk
    finally:
        count_served(report, "csv", rows, size)


@blueprint.get("/metrics")
def metrics() -> Response:
    state = current_state()
    if not state.settings.auth.metrics_public:
        require("metrics")
    registry = CollectorRegistry()
    registry.register(_Joined(_process_collector(), StateCollector(state)))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _process_collector() -> Collector:
    """This process's metrics, or every worker's when several processes serve."""
    if os.environ.get(MULTIPROCESS_VARIABLE):
        return MultiProcessCollector(CollectorRegistry())  # type: ignore[no-untyped-call]
    return REGISTRY


class _Joined(Collector):
    def __init__(self, *parts: Collector) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.collect()


class StateCollector(Collector):
    """The figures read at scrape time: the ledger, the backlog and the pools."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._pools()
        try:
            overviews = policy_overviews(self._state.settings,
                                         self._state.report_databases.engines["archive"],
                                         self._state.backlog)
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("metrics: the ledger could not be read: %s", first_line(exc))
            overviews = None
        up = GaugeMetricFamily("sediment_ledger_up", "Whether the ledger could be read")
        up.add_metric([], 0 if overviews is None else 1)
        yield up
        if overviews is not None:
            yield from _archive_families(overviews)

    def _pools(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("sediment_db_pool_checked_out",
                                   "Connections checked out of each pool of this process",
                                   labels=["database", "pool"])
        state = self._state
        pools = [(name, "readwrite", engine) for name, engine in state.engines.items()]
        pools += [(name, "reports", engine)
                  for name, engine in state.report_databases.engines.items()]
        for database, kind, engine in pools:
            checked_out = getattr(engine.pool, "checkedout", None)
            if callable(checked_out):
                family.add_metric([database, kind], checked_out())
        yield family


def _archive_families(overviews: Iterable[PolicyOverview]) -> Iterator[Metric]:
    rows = CounterMetricFamily("sediment_archive_rows", "Rows archived (moved to ARCHIVE and "
                               "deleted from PRIMARY), by policy and table",
                               labels=["policy", "table"])
    swept = CounterMetricFamily("sediment_archive_swept_rows", "Rows deleted without "
                                "archiving: purged from PRIMARY (kind purge) or expired from "
                                "ARCHIVE (kind expire), by policy and table",
                                labels=["policy", "kind", "table"])
    batches = CounterMetricFamily("sediment_archive_batches", "Batches archived, by policy",
                                  labels=["policy"])
    runs = CounterMetricFamily("sediment_archive_runs", "Archive runs by policy and how "
                               "they ended (lock_busy: another runner held the lock)",
                               labels=["policy", "status"])
    lock_busy = CounterMetricFamily("sediment_archive_lock_busy", "Runs that found another "
                                    "runner holding the policy's lock", labels=["policy"])
    duration = GaugeMetricFamily("sediment_archive_last_run_duration_seconds",
                                 "Duration of the policy's last finished run",
                                 labels=["policy"])
    last_success = GaugeMetricFamily("sediment_archive_last_success_timestamp_seconds",
                                     "When the policy's last successful run ended (Unix "
                                     f"time; successful: {', '.join(SUCCESSFUL)})",
                                     labels=["policy"])
    status = GaugeMetricFamily("sediment_archive_last_run_status", "1 for the status the "
                               "policy's last run ended with (or is running in)",
                               labels=["policy", "status"])
    backlog = GaugeMetricFamily("sediment_archive_backlog_rows", "Aged rows in PRIMARY that "
                                "a run would move now, by policy and table (estimated, "
                                "counted at most once a minute)", labels=["policy", "table"])
    for overview in overviews:
        name = overview.name
        for table, count in overview.rows_by_table.items():
            rows.add_metric([name, table], count)
        for (kind, table), count in overview.swept_by_table.items():
            swept.add_metric([name, kind, table], count)
        batches.add_metric([name], overview.batches)
        for run_status, count in overview.runs_by_status.items():
            runs.add_metric([name, run_status], count)
        lock_busy.add_metric([name], overview.runs_by_status.get(
            "lock_busy", 0))
        last = overview.last_run
        if last is not None:
            status.add_metric([name, last.status], 1)
            if last.seconds is not None:
                duration.add_metric([name], last.seconds)
        if overview.last_success is not None:
            last_success.add_metric([name], overview.last_success.timestamp())
        for table, count in (overview.backlog or {}).items():
            backlog.add_metric([name, table], count)
    yield from (rows, swept, batches, runs, lock_busy, duration, last_success, status, backlog)
