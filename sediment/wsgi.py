"""The WSGI entry of gunicorn workers (``serve --workers N``).

Each worker process builds its own app, engines and pools after gunicorn forked it: nothing
that holds a connection crosses a fork. It is built as ``serve`` builds its own (both
databases checked, the served tables resolved), so every worker serves the same API. The
settings file comes from ``SEDIMENT_SETTINGS_FILE``
(set by ``serve``), ``SEDIMENT_*`` overrides from the inherited environment as usual.

A reload asked of one worker (``POST /api/v1/admin/reload``) must reach them all: the
worker checks the files by reloading itself, then sends gunicorn's arbiter ``SIGHUP``,
which replaces every worker gracefully (in-flight requests finish on the old ones).
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace

from flask import Flask

from reporting.server import SETTINGS_FILE_VARIABLE
from reporting.state import Reloaded, state_of
from sediment.core.logs import configure_logging
from sediment.core.settings import load_settings
from sediment.service import Service, build_service, reload_catalog

logger = logging.getLogger(__name__)


def create_worker_app() -> Flask:
    """Build one gunicorn worker's app (``sediment.wsgi:create_worker_app()``)."""
    settings = load_settings(os.environ.get(SETTINGS_FILE_VARIABLE) or None)
    configure_logging(settings.service.log_level, settings.service.log_format)
    service = build_service(settings)
    replace(state_of(service.app), reload=lambda: reload_every_worker(service)).install(
        service.app)
    return service.app


def reload_every_worker(service: Service) -> Reloaded:
    """Reload this worker; if that worked, have gunicorn replace every worker."""
    outcome = reload_catalog(service)
    if outcome.ok:
        logger.info("asking gunicorn (pid %d) to replace every worker", os.getppid())
        os.kill(os.getppid(), signal.SIGHUP)
    return outcome
