"""RFC 9457 problem details for every error the HTTP API returns.

One shape for every failure: ``type``, ``title``, ``status``, ``detail``, a stable ``code``
and, where a parameter is at fault, ``param``. Unexpected exceptions are logged with their
traceback and answered with a problem body; a client never sees a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

from reporting.access_log import request_id as current_request_id
from reporting.report_error import ReportError
from reporting.schema_change import (
    RELOAD_INTERVAL_SECONDS,
    is_schema_changed,
    reload_after_change,
)
from sediment.core.error_text import first_line, is_permission_denied

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


#: Titles a code's words do not make: "Csrf failed" says nothing to a person at the form.
TITLES = {"csrf_failed": "Form expired"}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Build a problem-details response; ``extra`` adds members (RFC 9457 allows them)."""
    body: dict[str, Any] = {
        "type": f"https://sediment.invalid/problems/{code}",
        "title": title or TITLES.get(code) or code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if param is not None:
        body["param"] = param
    body.update(extra or {})
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MEDIA_TYPE)
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error, expected or not, with problem details."""

    @app.errorhandler(ReportError)
    def _report_error(error: ReportError) -> Response:
        return problem(
            error.status, error.code, error.detail, param=error.param, headers=error.headers
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = (error.name or "error").lower().replace(" ", "_")
        headers = dict(error.get_headers()) if status == 405 else {}
        headers.pop("Content-Type", None)
        return problem(status, code, error.description or error.name, headers=headers)

    @app.errorhandler(sa.exc.DBAPIError)
    def _database_error(error: sa.exc.DBAPIError) -> Response:
        if is_outage(error):
            logger.warning("report query failed: %s", first_line(error))
            return problem(503, "database_unavailable", "A database did not answer in time or "
                           "is unreachable; retry shortly.", headers={"Retry-After": "5"})
        if is_permission_denied(error):
            # A grant revoked since startup (which leaves out tables the role cannot read).
            logger.error("report query refused: %s; grant the reports' role SELECT on it",
                         first_line(error))
            return problem(503, "database_refused", "The database refused this service "
                           "access to the data; the service's log says which grant it needs.")
        if is_schema_changed(error):
            reload_after_change(app, error)
            return problem(503, "schema_changed", "A table or column this reads has changed in "
                           "the database since the service read its schema, which it re-reads "
                           f"(at most every {RELOAD_INTERVAL_SECONDS:g} s): retry shortly; if "
                           "this lasts, the service's "
                           "log says why.", headers={"Retry-After": "5"})
        if isinstance(error, sa.exc.DataError):
            logger.info("report query refused a value: %s", first_line(error))
            return problem(400, "invalid_value", "A value in the request is out of range or "
                           f"not valid for its column: {first_line(error)}")
        return _unexpected(error)

    @app.errorhandler(sa.exc.TimeoutError)
    def _pool_exhausted(error: sa.exc.TimeoutError) -> Response:
        logger.warning("no database connection free in time: %s", first_line(error))
        return problem(503, "database_unavailable", "Every database connection is busy; retry "
                       "shortly.", headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        request_id = current_request_id()
        logger.error("unhandled error while serving a request (request id %s)", request_id,
                     exc_info=error)
        return problem(500, "internal_error", "The server failed; the error has been logged "
                       f"with request id {request_id}.", extra={"request_id": request_id})


#: SQLite reports a missing table or column, and a syntax error, as OperationalError too:
#: those are the server's bugs, not outages a retry would cure.
_SQLITE_STATEMENT_ERRORS = ("no such table", "no such column", "syntax error")


def is_outage(error: sa.exc.DBAPIError) -> bool:
    """Whether ``error`` is a connection failure or a timeout, which a retry may cure.

    PostgreSQL's statement timeout and a dropped connection both arrive as
    ``OperationalError`` (psycopg2's ``QueryCanceled`` is one), SQLite's interrupted
    statement and busy database too; an invalidated connection is an outage whatever its
    class.
    """
    if error.connection_invalidated or isinstance(error, sa.exc.InterfaceError):
        return True
    if not isinstance(error, sa.exc.OperationalError):
        return False
    message = first_line(error).lower()
    return not message.startswith(_SQLITE_STATEMENT_ERRORS)


