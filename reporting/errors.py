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

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ReportError(Exception):
    """A request the API refuses, with the HTTP status and stable code to answer with."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.param = param
        self.headers = headers or {}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build a problem-details response."""
    body: dict[str, Any] = {
        "type": f"https://sediment.invalid/problems/{code}",
        "title": title or code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if param is not None:
        body["param"] = param
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
        logger.warning("report query failed: %s", str(error.orig).strip().splitlines()[0])
        return problem(503, "database_unavailable", "A database did not answer in time or is "
                       "unreachable; retry shortly.", headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        logger.exception("unhandled error while serving a request")
        return problem(500, "internal_error", "The server failed; the error has been logged.")
