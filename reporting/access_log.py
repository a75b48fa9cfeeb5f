"""Each HTTP request logged once, with an id that the response carries as ``X-Request-Id``.

A client's own ``X-Request-Id`` (from a proxy or a load balancer) is kept when it is a
plain token, so one id follows a request through every hop; otherwise one is made here.
The line is written when the response starts: for a streamed CSV download, ``duration_ms``
is the time to its first byte.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

logger = logging.getLogger("sediment.access")

REQUEST_ID_HEADER = "X-Request-Id"
_ACCEPTED_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id() -> str:
    """The current request's id (made if the request has none yet)."""
    if "request_id" not in g:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = offered if _ACCEPTED_ID.match(offered) else uuid.uuid4().hex
    found: str = g.request_id
    return found


def started_at() -> float:
    """When the current request started (``time.perf_counter``)."""
    started: float = g.get("request_started", time.perf_counter())
    return started


def install_access_log(app: Flask) -> None:
    """Give every request of ``app`` an id and log it once when it is answered."""

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()
        request_id()

    @app.after_request
    def _log(response: Response) -> Response:
        identifier = request_id()
        response.headers[REQUEST_ID_HEADER] = identifier
        if not logger.isEnabledFor(logging.INFO):
            return response
        duration_ms = round((time.perf_counter() - started_at()) * 1000, 2)
        logger.info("%s %s %d %.1fms id=%s", request.method, request.path,
                    response.status_code, duration_ms, identifier,
                    extra={"request_id": identifier, "method": request.method,
                           "path": request.path, "status": response.status_code,
                           "duration_ms": duration_ms})
        return response
