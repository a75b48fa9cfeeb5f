"""Logging set-up for every process Sediment starts (the CLI, and each gunicorn worker).

Two formats: ``text``, one readable line per record, and ``json``, one JSON object per line
for a log collector, carrying the structured fields a record was given (``extra=``: the
request id, method, path, status and duration of each HTTP request) as members of its own.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

#: The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, pid, message, the
    record's extra fields, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        body.update({key: value for key, value in vars(record).items()
                     if key not in _STANDARD and not key.startswith("_")})
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(level: str, log_format: Literal["text", "json"] = "text") -> None:
    """Log to stderr with timestamps: the service's operational record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("alembic.runtime.migration").addFilter(_quiet_alembic_context)
    # The twins' comparison (archive.twins) reports its own plan; Alembic's running
    # commentary of it would repeat each line before every run.
    for name in ("alembic.runtime.plugins", "alembic.autogenerate"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _quiet_alembic_context(record: logging.LogRecord) -> bool:
    """Drop Alembic's per-connection preamble (logged on every /healthz); keep upgrades."""
    return not record.getMessage().startswith(("Context impl", "Will assume"))
