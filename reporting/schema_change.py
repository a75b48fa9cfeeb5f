"""A table or column gone or retyped in the database while served: a 503, and a reload.

The served tables are read from PRIMARY's schema at startup (and on a reload). An
application migration that drops, renames or retypes a served column or table made every page,
download and UI view of it an "internal error" (a 500) until an operator thought of sending
SIGHUP. Such a query error now answers 503 ``schema_changed``, and starts the same reload
SIGHUP does, in the background, at most one at a time and once per
:data:`RELOAD_INTERVAL_SECONDS`: the next request after it finishes is served from the new
schema (or, when the reload is refused, the log says why, as for SIGHUP).
"""

from __future__ import annotations

import logging
import threading
import time

import sqlalchemy as sa
from flask import Flask

from reporting.state import state_of
from sediment.core.error_text import first_line, sqlstate

logger = logging.getLogger(__name__)

#: The least time between two reloads a schema change starts.
RELOAD_INTERVAL_SECONDS = 10.0

#: PostgreSQL's SQLSTATEs for a column, and a table, that does not exist, and for an
#: operator or a type that does not fit (a column's type changed: the statement compares
#: it with a value typed as the catalog says, "operator does not exist: text > integer").
_UNDEFINED = {"42703", "42P01", "42883", "42804"}

#: SQLite's messages for the same.
_SQLITE_UNDEFINED = ("no such table", "no such column")

_EXTENSION = "sediment.schema_reload"


def is_schema_changed(error: sa.exc.DBAPIError) -> bool:
    """Whether ``error`` says a table or column the statement reads does not exist, or no
    longer has the type the statement was built for."""
    if sqlstate(error) in _UNDEFINED:
        return True
    return first_line(error).lower().startswith(_SQLITE_UNDEFINED)


class _Reloads:
    """One app's reloads started by schema changes: one at a time, spaced out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = False
        self._last = float("-inf")

    def start(self, app: Flask) -> bool:
        """Start a reload unless one runs or ran within the interval; whether it started."""
        reload = state_of(app).reload
        if reload is None:
            return False
        with self._lock:
            now = time.monotonic()
            if self._running or now - self._last < RELOAD_INTERVAL_SECONDS:
                return False
            self._running, self._last = True, now

        def run() -> None:
            try:
                outcome = reload()
                if outcome.ok:
                    logger.info("schema re-read after a change in the database: %s",
                                outcome.detail)
            finally:
                with self._lock:
                    self._running = False

        threading.Thread(target=run, name="schema-reload", daemon=True).start()
        return True


def reload_after_change(app: Flask, error: sa.exc.DBAPIError) -> None:
    """Log ``error`` as a schema change and start a reload (if none is due already)."""
    reloads: _Reloads = app.extensions.setdefault(_EXTENSION, _Reloads())
    started = reloads.start(app)
    logger.warning("a served table changed in the database (%s)%s", first_line(error),
                   ": re-reading the schema, as SIGHUP does" if started else "")
