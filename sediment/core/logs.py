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


def _quiet_alembic_context(record: logging.LogRecord) -> bool:
    """Drop Alembic's per-connection preamble (logged on every /healthz); keep upgrades."""
    return not record.getMessage().startswith(("Context impl", "Will assume"))
