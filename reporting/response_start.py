"""One WSGI layer around the Flask app for work done as each response starts.

Security headers, the request id and the access log line are added where the response
starts, not by Flask request hooks: every response passes there (error pages and
unhandled errors included), the WSGI environ holds all they read, and headers are appended
to the plain list the server receives. As hooks, context look-ups and werkzeug's header
checks cost a report page a few percent of its time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: A hook: the request's environ, the status line and the response's headers (to append to).
StartHook = Callable[["WSGIEnvironment", str, list[tuple[str, str]]], None]
#: Where the layer keeps when the request arrived (``time.perf_counter``).
STARTED = "sediment.started"


def on_response_start(app: Flask, hook: StartHook) -> None:
    """Call ``hook`` as each response of ``app`` starts, after the hooks added before it."""
    layer = app.wsgi_app
    if not isinstance(layer, ResponseStart):
        layer = app.wsgi_app = ResponseStart(app.wsgi_app)  # type: ignore[method-assign]
    layer.hooks.append(hook)


class ResponseStart:
    """WSGI middleware: the request's arrival time in its environ (:data:`STARTED`), and
    each hook called with the status and headers as the response starts."""

    def __init__(self, wsgi_app: WSGIApplication) -> None:
        self.wsgi_app = wsgi_app
        self.hooks: list[StartHook] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        environ[STARTED] = time.perf_counter()

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            for hook in self.hooks:
                hook(environ, status, headers)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)
