"""The WSGI entry of gunicorn workers (``serve --workers N``).

Each worker process builds its own app, engines and pools after gunicorn forked it: nothing
that holds a connection crosses a fork. It is built as ``serve`` builds its own (both
databases checked, the served tables resolved), so every worker serves the same API. The
settings file comes from ``SEDIMENT_SETTINGS_FILE``
(set by ``serve``), ``SEDIMENT_*`` overrides from the inherited environment as usual.
"""

from __future__ import annotations

import os

from flask import Flask

from reporting.server import SETTINGS_FILE_VARIABLE
from sediment.core.logs import configure_logging
from sediment.core.settings import load_settings
from sediment.service import build_service


def create_worker_app() -> Flask:
    """Build one gunicorn worker's app (``sediment.wsgi:create_worker_app()``)."""
    settings = load_settings(os.environ.get(SETTINGS_FILE_VARIABLE) or None)
    configure_logging(settings.service.log_level)
    return build_service(settings).app
