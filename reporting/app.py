"""The application factory: settings in, a configured Flask app with both databases out.

Flask-SQLAlchemy is the one place read-write engines are configured: one bind per
database, named as everywhere else (``primary``, ``archive``). The app hands them on as
:class:`~sediment.core.databases.Engines` in its :class:`~reporting.state.AppState`; the
composition root (:mod:`sediment.cli`) passes them to the archiver from there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from reporting import admin, health, ui, views
from reporting.access_log import install_access_log
from reporting.auth import SessionCookies, Tokens
from reporting.csv_export import ExportLimiter
from reporting.errors import register_error_handlers
from reporting.json_provider import OrjsonProvider
from reporting.metrics import install_metrics
from reporting.operations import BacklogEstimates
from reporting.readonly import create_readonly_engine
from reporting.report_databases import ReportDatabases
from reporting.reports import REPORTS, Report
from reporting.reports.base import DatabaseTables
from reporting.security import install_security_headers
from reporting.state import AppState, state_of
from reporting.tables import ExposedTable, table_reports, with_tables
from sediment.core.databases import (
    ARCHIVE,
    PRIMARY,
    Database,
    Engines,
    engine_options,
    ensure_sqlite_folder,
    prepare_engine,
)
from sediment.core.preflight import check_databases
from sediment.core.schema import metadata_of
from sediment.core.schema.archive import archived_tables
from sediment.core.settings import Settings, load_settings

logger = logging.getLogger(__name__)

#: Flask-SQLAlchemy, used for what it is good at: engines from app config, per bind. The
#: schema's tables carry their bind in ``MetaData.info``, so its session finds them too.
db = SQLAlchemy(disable_autonaming=True)


def create_app(settings: Settings | None = None) -> Flask:
    """Create the Sediment app; no connection is opened.

    :param settings: validated settings; by default ``settings.toml`` and ``SEDIMENT_*``.
    """
    settings = settings if settings is not None else load_settings()
    database = settings.database
    urls: dict[Database, str] = {PRIMARY: database.primary_url, ARCHIVE: database.archive_url}
    for url in urls.values():
        ensure_sqlite_folder(url)
    app = Flask("reporting", static_folder=None)  # the UI blueprint serves /static
    app.config.update(
        SECRET_KEY=settings.service.secret_key,
        # The web UI's session: signed (itsdangerous), never readable by scripts, never
        # sent with another site's requests.
        SESSION_COOKIE_NAME="sediment_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.auth.secure_cookies,
        PERMANENT_SESSION_LIFETIME=settings.auth.session_lifetime,
        SQLALCHEMY_BINDS={
            name: {"url": url, **engine_options(url, pool_size=database.pool_size,
                                                busy_timeout_ms=database.lock_timeout_ms)}
            for name, url in urls.items()
        },
    )
    app.json = OrjsonProvider(app)
    app.session_interface = SessionCookies()
    db.init_app(app)
    with app.app_context():
        engines = Engines(primary=db.engines[PRIMARY], archive=db.engines[ARCHIVE])
    for name, engine in engines.items():
        prepare_engine(engine, owned=name == ARCHIVE or database.primary_schema == "demo",
                       durable=name == ARCHIVE)
    AppState(
        settings=settings,
        engines=engines,
        report_databases=report_databases(settings),
        exports=ExportLimiter(settings.reports.csv_max_concurrent),
        health=health.RecentHealth(engines, settings.database.primary_schema),
        tokens=Tokens(settings.auth),
        backlog=BacklogEstimates(None),
        reports=REPORTS if settings.database.primary_schema == "demo" else {},
    ).install(app)
    register_error_handlers(app)
    install_access_log(app)
    install_metrics(app)
    install_security_headers(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(views.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(ui.blueprint)
    ui.install_problem_pages(app)
    return app


def install_catalog(app: Flask, reports: Mapping[str, Report],
                    exposed: Sequence[ExposedTable]) -> None:
    """Serve ``reports`` at ``/api/v1/reports`` and ``exposed`` at ``/api/v1/tables``,
    replacing what the app served before in one step: a request in flight keeps the state
    it started with. The statement and aggregate caches start afresh (a reloaded report
    may keep its name and change its SQL)."""
    state = state_of(app)
    databases = state.report_databases
    tables = {name: with_tables(database_tables, exposed)
              for name, database_tables in databases.tables.items()}
    fresh = ReportDatabases(engines=databases.engines, tables=tables,
                            aggregate_ttl=databases.aggregate_ttl)
    replace(state, reports=dict(reports), report_databases=fresh,
            tables=table_reports(exposed, state.settings.reports.hide_columns)).install(app)
    logger.debug("serving %d reports and %d tables", len(reports), len(exposed))


def create_checked_app(settings: Settings) -> Flask:
    """Create the app for a command, then make sure both databases answer and are two
    different databases (see :func:`sediment.core.preflight.check_databases`)."""
    app = create_app(settings)
    engines = state_of(app).engines
    check_databases(engines.primary, engines.archive)
    return app


def report_databases(settings: Settings) -> ReportDatabases:
    """Read-only engines and per-database tables for the reports (no connection is opened)."""
    database = settings.database
    timeout_ms = settings.reports.statement_timeout_ms
    engines = {
        name: create_readonly_engine(url, statement_timeout_ms=timeout_ms,
                                     pool_size=database.pool_size)
        for name, url in ((PRIMARY, database.primary_url), (ARCHIVE, database.archive_url))
    }
    ledger = metadata_of(ARCHIVE).tables
    archive_tables: dict[str, sa.FromClause] = {
        **archived_tables,
        **{name: ledger[name] for name in ("archive_runs", "archive_run_tables")},
    }
    tables = {
        PRIMARY: DatabaseTables(PRIMARY, dict(metadata_of(PRIMARY).tables),
                                engines[PRIMARY].dialect.name),
        ARCHIVE: DatabaseTables(ARCHIVE, archive_tables, engines[ARCHIVE].dialect.name),
    }
    return ReportDatabases(engines=engines, tables=tables,
                           aggregate_ttl=settings.reports.aggregate_cache.total_seconds())
