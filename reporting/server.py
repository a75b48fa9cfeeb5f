"""Serve the WSGI app: waitress in this process, or gunicorn worker processes.

Probes must answer while every report thread is busy (a load balancer that sees ``/healthz``
time out takes a healthy instance out of service). Waitress queues every request for one
thread pool; :class:`ProbeFirstDispatcher` sends probe requests to a small pool of their
own instead, so they never wait behind reports or CSV downloads.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher

from reporting.listen import cannot_listen
from reporting.metrics import MULTIPROCESS_VARIABLE
from sediment.core.commandline import on_stop_signals
from sediment.core.settings import ServiceSettings

logger = logging.getLogger(__name__)

#: Where ``serve`` tells its gunicorn workers which settings file to load.
SETTINGS_FILE_VARIABLE = "SEDIMENT_SETTINGS_FILE"

#: Paths answered by the probe pool: no report query behind any of them.
PROBE_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/api/v1/",
                         "/api/v1/reports", "/api/v1/openapi.json"})
PROBE_THREADS = 2


class ProbeFirstDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """Waitress's dispatcher with a second, small pool for probe requests.

    A waitress task is a channel with its next request first in ``requests``; a channel is
    serviced by one task at a time, so sending each task to either pool is safe.
    """

    def __init__(self, probe_threads: int = PROBE_THREADS) -> None:
        super().__init__()
        self.probes = ThreadedTaskDispatcher()
        self.probes.set_thread_count(probe_threads)

    def add_task(self, task: Any) -> None:
        requests = getattr(task, "requests", None)
        if requests and getattr(requests[0], "path", None) in PROBE_PATHS:
            self.probes.add_task(task)
        else:
            super().add_task(task)

    def shutdown(self, cancel_pending: bool = True, timeout: int = 5) -> bool:
        self.probes.shutdown(cancel_pending, timeout)
        return bool(super().shutdown(cancel_pending, timeout))


def serve_in_process(app: Flask, host: str, port: int, service: ServiceSettings,
                     on_listening: Callable[[], None],
                     on_reload: Callable[[], object] | None = None) -> None:
    """Serve with waitress until SIGTERM or SIGINT; on SIGHUP, run ``on_reload`` in a
    thread of its own (requests keep being served meanwhile)."""
    def stop(received: signal.Signals) -> None:
        # Leaves waitress's loop: it shuts down cleanly on SystemExit only.
        logger.info("%s received: shutting down", received.name)
        raise SystemExit(0)

    dispatcher = ProbeFirstDispatcher()
    dispatcher.set_thread_count(service.threads)
    # ``_dispatcher`` is waitress's documented-as-test hook for exactly this; the test of
    # probes under load fails if a waitress release stops honouring it.
    try:
        server = create_server(app, _dispatcher=dispatcher, host=host, port=port,
                               threads=service.threads, connection_limit=service.connection_limit,
                               backlog=service.backlog, ident="sediment")
    except (OSError, ValueError) as exc:  # taken since check_address, or unresolvable now
        dispatcher.shutdown()
        raise cannot_listen(host, port, exc) from None
    if on_reload is not None:
        reload = on_reload

        def hang_up(_signum: int, _frame: object) -> None:
            logger.info("SIGHUP received: re-reading the SQL reports and the schema")
            threading.Thread(target=reload, name="reload", daemon=True).start()

        signal.signal(signal.SIGHUP, hang_up)
    on_listening()
    try:
        with on_stop_signals(stop):
            server.run()
    except SystemExit:
        pass  # the sockets close below
    finally:
        server.close()
        dispatcher.shutdown()


def serve_with_workers(host: str, port: int, service: ServiceSettings,
                       settings_file: Path | None, on_listening: Callable[[], None]) -> int:
    """Run gunicorn with ``service.workers`` processes until SIGTERM/SIGINT; return its exit
    code. This process keeps no listening socket and serves nothing itself; SIGHUP is passed
    on to gunicorn, which replaces its workers gracefully (each re-reads the reports)."""
    command = [
        sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
        "--workers", str(service.workers), "--threads", str(service.threads),
        "--bind", f"{host}:{port}", "--backlog", str(service.backlog),
        "--worker-connections", str(service.connection_limit),
        "--graceful-timeout", "30", "--log-level", service.log_level.lower(),
        "--config", "python:reporting.gunicorn_hooks",
        "sediment.wsgi:create_worker_app()",
    ]
    with tempfile.TemporaryDirectory(prefix="sediment-metrics-") as samples:
        # Each worker writes its metrics here; a scrape of any one sums them all.
        environment = {**os.environ, MULTIPROCESS_VARIABLE: samples}
        if settings_file is not None:
            environment[SETTINGS_FILE_VARIABLE] = str(settings_file)
        process = subprocess.Popen(command, env=environment)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: process.send_signal(signal.SIGHUP))
        on_listening()

        def forward(received: signal.Signals) -> None:
            logger.info("%s received: stopping the workers", received.name)
            process.send_signal(signal.SIGTERM)

        with on_stop_signals(forward):
            return process.wait()
