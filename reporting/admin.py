"""``POST /api/v1/admin/reload``: re-read the SQL report files and the schema.

The same reload as ``SIGHUP`` (see :func:`sediment.service.reload_catalog`), for operators
who reach the service over HTTP only. It needs a bearer token with the ``admin`` scope;
a UI session cookie never authorises a POST (see :mod:`reporting.auth`).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from reporting.auth import require
from reporting.report_error import ReportError
from reporting.state import current_state

logger = logging.getLogger(__name__)

blueprint = Blueprint("admin", __name__, url_prefix="/api/v1/admin")


@blueprint.post("/reload")
def reload() -> Response:
    principal = require("admin")
    state = current_state()
    if state.reload is None:
        raise ReportError(404, "not_found", "this process cannot reload its reports")
    logger.info("reload requested over HTTP by token %r", principal.name)
    outcome = state.reload()
    if not outcome.ok:
        raise ReportError(422, "reload_refused", f"{outcome.detail}; the previous reports "
                          "and tables stay served")
    served = current_state()
    return jsonify(reloaded=True, detail=outcome.detail, reports=list(served.reports),
                   tables=list(served.tables))
