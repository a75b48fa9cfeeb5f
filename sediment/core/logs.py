"""Logging set-up for every process Sediment starts (the CLI, and each gunicorn worker)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps: the service's operational record."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("alembic.runtime.migration").addFilter(_quiet_alembic_context)
    # The twins' comparison (archive.twins) reports its own plan; Alembic's running
    # commentary of it would repeat each line before every run.
    for name in ("alembic.runtime.plugins", "alembic.autogenerate"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _quiet_alembic_context(record: logging.LogRecord) -> bool:
    """Drop Alembic's per-connection preamble (logged on every /healthz); keep upgrades."""
    return not record.getMessage().startswith(("Context impl", "Will assume"))
