"""Problem documents shown as pages to a browser on a UI page.

Every error handler of :mod:`reporting.errors` answers with problem+json; this hook, run
after them, turns that body into a readable page when the request is a page's (not the
API's, not a probe's) and the client prefers HTML. Status and headers stay as they were.
"""

from __future__ import annotations

import json

from flask import Flask, Response, render_template, request

from reporting.errors import PROBLEM_MEDIA_TYPE

#: Paths whose errors stay problem+json whoever asks: the API and the probes.
MACHINE_PATHS = ("/api/", "/healthz", "/livez", "/readyz", "/metrics")


def wants_a_page() -> bool:
    if request.path.startswith(MACHINE_PATHS):
        return False
    best = request.accept_mimetypes.best_match(
        ["application/json", PROBLEM_MEDIA_TYPE, "text/html"])
    return best == "text/html"


def install_problem_pages(app: Flask) -> None:
    @app.after_request
    def _as_page(response: Response) -> Response:
        # Problems are errors: a success is passed on before its media type is parsed.
        if response.status_code < 400 or response.mimetype != PROBLEM_MEDIA_TYPE \
                or not wants_a_page():
            return response
        problem = json.loads(response.get_data())
        page = Response(render_template("ui/error.html", problem=problem),
                        status=response.status_code, mimetype="text/html")
        for name, value in response.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                page.headers[name] = value
        return page
