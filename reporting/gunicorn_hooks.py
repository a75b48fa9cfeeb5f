"""gunicorn hooks of ``serve --workers N`` (``-c python:reporting.gunicorn_hooks``).

With several worker processes, each writes its Prometheus samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by ``serve``); a worker that exits must be marked dead, or
its live gauges (CSV downloads active) would be summed forever.
"""

from __future__ import annotations

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
