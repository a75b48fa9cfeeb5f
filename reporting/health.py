"""The probes: ``/livez`` (the process answers), ``/readyz`` and ``/healthz`` (each database
reachable, at the newest revision, with every table).

A liveness probe that touched the databases would have an orchestrator restart every
replica during a database outage, which cures nothing; so ``/livez`` does no I/O at all,
and only readiness (``/readyz``, and ``/healthz`` as before) depends on the databases.
None of them needs a token.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify

from reporting.state import current_state
from sediment.core.databases import PRIMARY, Database, Engines
from sediment.core.migrations import head_revision, schema_state
from sediment.core.schema import PrimarySchema, metadata_of

logger = logging.getLogger(__name__)

blueprint = Blueprint("health", __name__)


def database_health(database: Database, engine: sa.Engine,
                    primary_schema: PrimarySchema = "demo") -> dict[str, Any]:
    """Report one database: backend, reachability, current and head revision (an existing
    application's PRIMARY has neither: Sediment does not migrate it)."""
    migrated = primary_schema == "demo" or database != PRIMARY
    head = head_revision(database) if migrated else None
    report: dict[str, Any] = {"backend": engine.dialect.name, "head": head}
    try:
        current, missing = schema_state(engine, metadata_of(database, primary_schema))
        current = current if migrated else None
    except sa.exc.SQLAlchemyError as exc:
        logger.warning("health: %s database unreachable: %s", database, exc)
        report.update(reachable=False, revision=None, at_head=False, missing_tables=[],
                      error=type(exc).__name__)
        return report
    report.update(reachable=True, revision=current, at_head=current == head,
                  missing_tables=missing)
    return report


@blueprint.get("/readyz")
@blueprint.get("/healthz")  # the first rule registered (the lower): url_for gives /healthz
def healthz() -> tuple[Response, int]:
    """Return 200 when both databases are reachable and migrated, else 503."""
    databases, healthy = current_state().health.get()
    body = jsonify(status="ok" if healthy else "unavailable", databases=databases)
    return body, 200 if healthy else 503


@blueprint.get("/livez")
def livez() -> Response:
    """Return 200 while this process answers requests; no database is asked."""
    return jsonify(status="ok")


#: Probes within this many seconds share one check of the databases.
HEALTH_REUSE_SECONDS = 1.0


class RecentHealth:
    """The last check of an app's databases, shared by the probes of the next second.

    A load balancer probing every few seconds gets a fresh check each time; a burst of
    probes (several balancers, or a busy one) costs one check a second, not one per probe,
    and each answer is then a few microseconds of work instead of four database round
    trips that wait behind busy report threads for the interpreter.
    """

    def __init__(self, engines: Engines, primary_schema: PrimarySchema = "demo") -> None:
        self._engines = engines
        self._primary_schema = primary_schema
        self._lock = threading.Lock()
        self._checked: tuple[float, dict[Database, dict[str, Any]], bool] | None = None

    def get(self) -> tuple[dict[Database, dict[str, Any]], bool]:
        with self._lock:
            checked = self._checked
        if checked is not None and time.monotonic() - checked[0] < HEALTH_REUSE_SECONDS:
            return checked[1], checked[2]
        databases = {name: database_health(name, engine, self._primary_schema)
                     for name, engine in self._engines.items()}
        healthy = all(d["reachable"] and d["at_head"] and not d["missing_tables"]
                      for d in databases.values())
        with self._lock:
            self._checked = (time.monotonic(), databases, healthy)
        return databases, healthy
