"""Everything the app builds once and its requests share, as one typed object.

The app factory stores an :class:`AppState` under one extension key; views and probes read
it through :func:`state_of` / :func:`current_state` and never look up loose string keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, current_app

from sediment.core.databases import Engines
from sediment.core.settings import Settings

if TYPE_CHECKING:
    from reporting.auth import Tokens
    from reporting.csv_export import ExportLimiter
    from reporting.health import RecentHealth
    from reporting.operations import BacklogEstimates
    from reporting.report_databases import ReportDatabases
    from reporting.reports import Report, RowReport

_EXTENSION = "sediment"


@dataclass(frozen=True)
class Reloaded:
    """How a reload of the reports and tables went: served, or refused and why."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class AppState:
    """What one Sediment app was built with."""

    settings: Settings
    #: The read-write engines Flask-SQLAlchemy configured (migrations, seeding, archiving).
    engines: Engines
    #: The read-only engines and tables the reports run on, with their caches.
    report_databases: ReportDatabases
    #: Bounds concurrent CSV downloads.
    exports: ExportLimiter
    #: The last health check, shared by the probes of the next second.
    health: RecentHealth
    #: The configured API tokens (and whether authentication is on).
    tokens: Tokens
    #: Aged rows waiting in PRIMARY per policy (counted by the composition root's counter).
    backlog: BacklogEstimates
    #: The reports this app serves, by name: the built-in ones over the demo schema, then
    #: those declared as SQL files (reporting.sql_reports).
    reports: Mapping[str, Report]
    #: The tables this app serves at ``/api/v1/tables``, by name (see reporting.tables).
    tables: Mapping[str, RowReport] = field(default_factory=dict)
    #: Re-reads the SQL report files and the schema (``POST /api/v1/admin/reload``); the
    #: composition root provides it, an app without one answers that endpoint with a 404.
    reload: Callable[[], Reloaded] | None = None

    def install(self, app: Flask) -> None:
        """Attach this state to ``app``."""
        app.extensions[_EXTENSION] = self


def state_of(app: Flask) -> AppState:
    """The state an app was created with."""
    state: AppState = app.extensions[_EXTENSION]
    return state


def current_state() -> AppState:
    """The state of the app handling the current request."""
    return state_of(current_app)
