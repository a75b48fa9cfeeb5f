"""The application factory: settings in, a configured Flask app with both binds out."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Flask

import reporting.models  # noqa: F401  (registers the PRIMARY tables)
from archive import models as archive_models
from archive.policy import ArchivePolicy, resolve_policies
from reporting import health, views
from reporting.csv_export import ExportLimiter
from reporting.db import (
    ARCHIVE,
    PRIMARY,
    db,
    engine_options,
    ensure_sqlite_folder,
    prepare_engine,
)
from reporting.errors import register_error_handlers
from reporting.json_provider import OrjsonProvider
from reporting.preflight import check_databases
from reporting.readonly import create_readonly_engine
from reporting.reports.base import SourceTables
from reporting.settings import Settings, load_settings
from reporting.sources import ReportSources

logger = logging.getLogger(__name__)

SETTINGS_EXTENSION = "sediment.settings"
POLICIES_EXTENSION = "sediment.policies"


def create_app(settings: Settings | None = None) -> Flask:
    """Create the Sediment app.

    :param settings: validated settings; by default ``settings.toml`` and ``SEDIMENT_*``.
    :raises reporting.settings.SettingsError: for bad settings, including archival policies
        that name unknown tables or columns.
    """
    settings = settings if settings is not None else load_settings()
    policies = resolve_policies(
        settings.policies, db.metadatas[None].tables, archive_models.archived_tables
    )
    database = settings.database
    busy_ms = database.lock_timeout_ms
    for url in (database.primary_url, database.archive_url):
        ensure_sqlite_folder(url)
    app = Flask("reporting")
    app.config.update(
        SECRET_KEY=settings.service.secret_key,
        SQLALCHEMY_DATABASE_URI=database.primary_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(
            database.primary_url, pool_size=database.pool_size, busy_timeout_ms=busy_ms
        ),
        SQLALCHEMY_BINDS={
            ARCHIVE: {
                "url": database.archive_url,
                **engine_options(
                    database.archive_url, pool_size=database.pool_size, busy_timeout_ms=busy_ms
                ),
            }
        },
    )
    app.json = OrjsonProvider(app)
    app.extensions[SETTINGS_EXTENSION] = settings
    app.extensions[POLICIES_EXTENSION] = policies
    db.init_app(app)
    with app.app_context():
        for engine in db.engines.values():
            prepare_engine(engine)
    app.extensions[views.SOURCES_EXTENSION] = report_sources(settings)
    app.extensions[views.EXPORTS_EXTENSION] = ExportLimiter(settings.reports.csv_max_concurrent)
    register_error_handlers(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(views.blueprint)
    return app


def create_checked_app(settings: Settings) -> Flask:
    """Create the app for a command, then make sure both databases answer and are two
    different databases (see :func:`reporting.preflight.check_databases`)."""
    app = create_app(settings)
    with app.app_context():
        check_databases(db.engines[PRIMARY], db.engines[ARCHIVE])
    return app


def report_sources(settings: Settings) -> ReportSources:
    """Read-only engines and per-database tables for the reports (no connection is opened)."""
    database = settings.database
    timeout_ms = settings.reports.statement_timeout_ms
    engines = {
        name: create_readonly_engine(url, statement_timeout_ms=timeout_ms,
                                     pool_size=database.pool_size)
        for name, url in (("primary", database.primary_url), ("archive", database.archive_url))
    }
    archive_tables: dict[str, sa.FromClause] = {
        **archive_models.archived_tables,
        **{model.__tablename__: model.__table__
           for model in (archive_models.ArchiveRun, archive_models.ArchiveRunTable)},
    }
    tables = {
        "primary": SourceTables("primary", dict(db.metadatas[None].tables),
                                engines["primary"].dialect.name),
        "archive": SourceTables("archive", archive_tables, engines["archive"].dialect.name),
    }
    return ReportSources(engines=engines, tables=tables,
                         aggregate_ttl=settings.reports.aggregate_cache.total_seconds())


def settings_of(app: Flask) -> Settings:
    """Return the settings an app was created with."""
    settings: Settings = app.extensions[SETTINGS_EXTENSION]
    return settings


def policies_of(app: Flask) -> tuple[ArchivePolicy, ...]:
    """Return the resolved archival policies of an app."""
    policies: tuple[ArchivePolicy, ...] = app.extensions[POLICIES_EXTENSION]
    return policies
