"""``GET /healthz``: is each database reachable, at the newest revision, with every table?"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify

from reporting.db import db
from reporting.migrations import HISTORIES, bind_label, current_revision, head_revision
from reporting.preflight import missing_tables

logger = logging.getLogger(__name__)

blueprint = Blueprint("health", __name__)


def database_health(bind_key: str | None) -> dict[str, Any]:
    """Report one bind: backend, reachability, current and head revision."""
    engine = db.engines[bind_key]
    head = head_revision(bind_key)
    report: dict[str, Any] = {"backend": engine.dialect.name, "head": head}
    try:
        current = current_revision(engine)
    except sa.exc.SQLAlchemyError as exc:
        logger.warning("health: %s database unreachable: %s", bind_label(bind_key), exc)
        report.update(reachable=False, revision=None, at_head=False, missing_tables=[],
                      error=type(exc).__name__)
        return report
    try:
        missing = missing_tables(engine, db.metadatas[bind_key])
    except sa.exc.SQLAlchemyError as exc:
        logger.warning("health: %s database: %s", bind_label(bind_key), exc)
        missing = []
    report.update(reachable=True, revision=current, at_head=current == head,
                  missing_tables=missing)
    return report


@blueprint.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Return 200 when both databases are reachable and migrated, else 503."""
    databases = {bind_label(key): database_health(key) for key in HISTORIES}
    healthy = all(d["reachable"] and d["at_head"] and not d["missing_tables"]
                  for d in databases.values())
    body = jsonify(status="ok" if healthy else "unavailable", databases=databases)
    return body, 200 if healthy else 503
