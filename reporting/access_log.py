"""Each HTTP request logged once, with an id that the response carries as ``X-Request-Id``.

A client's own ``X-Request-Id`` (from a proxy or a load balancer) is kept when it is a
plain token, so one id follows a request through every hop; otherwise one is made here.
The line is written when the response starts: for a streamed CSV download, ``duration_ms``
is the time to its first byte.

This is WSGI middleware around the Flask app, not a pair of request hooks: every response
passes where it starts (error pages and unhandled errors included), and the request's WSGI
environ holds all a line needs. As hooks, context look-ups and werkzeug's header checks
cost a report page a few percent of its time.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, request
from werkzeug.wsgi import get_path_info

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger("sediment.access")

REQUEST_ID_HEADER = "X-Request-Id"
_OFFERED_ID = "HTTP_X_REQUEST_ID"
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
    return _id_of(request.environ)


def _id_of(environ: WSGIEnvironment) -> str:
    if _ID not in environ:
        offered = environ.get(_OFFERED_ID, "")
        environ[_ID] = offered if _ACCEPTED_ID.match(offered) else f"{_PREFIX}{next(_NEXT):08x}"
    found: str = environ[_ID]
    return found


def started_at() -> float:
    """When the current request started (``time.perf_counter``)."""
    started: float = request.environ.get(_STARTED, time.perf_counter())
    return started


def install_access_log(app: Flask) -> None:
    """Give every request of ``app`` an id and log it once when it is answered."""
    app.wsgi_app = AccessLog(app.wsgi_app)  # type: ignore[method-assign]


class AccessLog:
    """WSGI middleware: the request's id and start time in its environ, the id on the
    response, and one log line at ``INFO`` when the response starts."""

    def __init__(self, wsgi_app: WSGIApplication) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        environ[_STARTED] = started = time.perf_counter()
        identifier = _id_of(environ)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append((REQUEST_ID_HEADER, identifier))
            if logger.isEnabledFor(logging.INFO):
                _log(environ, int(status[:3]), identifier, started)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


def _log(environ: WSGIEnvironment, status: int, identifier: str, started: float) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    method, path = environ.get("REQUEST_METHOD", ""), "/" + get_path_info(environ).lstrip("/")
    logger.info("%s %s %d %.1fms id=%s", method, path, status, duration_ms, identifier,
                extra={"request_id": identifier, "method": method, "path": path,
                       "status": status, "duration_ms": duration_ms})
