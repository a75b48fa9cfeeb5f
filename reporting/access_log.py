"""Each HTTP request logged once, with an id that the response carries as ``X-Request-Id``.

A client's own ``X-Request-Id`` (from a proxy or a load balancer) is kept when it is a
plain token, so one id follows a request through every hop; otherwise one is made here.
The line is written when the response starts: for a streamed CSV download, ``duration_ms``
is the time to its first byte (see :mod:`reporting.response_start`).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from flask import Flask, request
from werkzeug.wsgi import get_path_info

from reporting.response_start import STARTED, on_response_start

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

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
_ID = "sediment.request_id"


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
    started: float = request.environ.get(STARTED, time.perf_counter())
    return started


def install_access_log(app: Flask) -> None:
    """Give every request of ``app`` an id and log it once when it is answered."""
    on_response_start(app, _answered)


def _answered(environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]) -> None:
    """The id on the response, and the request's line at ``INFO``."""
    identifier = _id_of(environ)
    headers.append((REQUEST_ID_HEADER, identifier))
    if not logger.isEnabledFor(logging.INFO):
        return
    duration_ms = round((time.perf_counter() - environ[STARTED]) * 1000, 2)
    method, path = environ.get("REQUEST_METHOD", ""), "/" + get_path_info(environ).lstrip("/")
    code = int(status[:3])
    logger.info("%s %s %d %.1fms id=%s", method, path, code, duration_ms, identifier,
                extra={"request_id": identifier, "method": method, "path": path,
                       "status": code, "duration_ms": duration_ms})
