"""Wiring: one Flask app and one archiver over the same engines, from one set of settings.

With :mod:`sediment.cli`, the only code that imports both :mod:`reporting` and
:mod:`archive`. Flask-SQLAlchemy (inside :func:`reporting.app.create_app`) stays the one
place read-write engines are configured; the archiver is handed them from the app's state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from archive.archiver import Archiver
from archive.compat import check_engines_hold
from archive.existing import resolve_existing
from archive.policy import ArchivePolicy, resolve_policies
from archive.preflight import check_conditions
from archive.runner import plan_run
from reporting.app import create_checked_app, install_catalog
from reporting.operations import BacklogEstimates
from reporting.reports import DEMO_SQL_REPORTS, REPORTS, Report
from reporting.sql_reports import ReportFileError, SqlReportFile, check_against, load_folder
from reporting.state import Reloaded, state_of
from sediment.core.databases import PRIMARY, Engines
from sediment.core.error_text import first_line
from sediment.core.migrations import ensure_complete
from sediment.core.schema import metadata_of
from sediment.core.schema.archive import archived_tables
from sediment.core.settings import Settings, SettingsError
from sediment.exposure import exposed_tables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """The web app and the archiver of one process, sharing its engines, and the SQL report
    files the app serves (parsed; :func:`check_reports` prepares them on the databases)."""

    app: Flask
    archiver: Archiver
    report_files: tuple[SqlReportFile, ...] = ()

    @property
    def engines(self) -> Engines:
        return self.archiver.engines


def resolve_policies_of(settings: Settings) -> tuple[ArchivePolicy, ...]:
    """The settings' archival policies resolved against the demo schema (no connection).

    :raises sediment.core.settings.SettingsError: naming a policy's unknown table, column
        or value.
    """
    return resolve_policies(settings.policies, metadata_of(PRIMARY).tables, archived_tables)


def build_service(settings: Settings) -> Service:
    """Create the app, check both databases (reachable, and really two, and able to hold
    each other's columns when they run different engines), and build the archiver over the
    app's engines: its policies resolved against the demo schema, or against an existing
    PRIMARY's reflected tables and their twins."""
    app = create_checked_app(settings)
    engines = state_of(app).engines
    if settings.database.primary_schema == "existing":
        existing = resolve_existing(settings.policies, engines)
        archiver = Archiver(settings=settings, engines=engines, policies=existing.policies,
                            twins=existing.twins)
    else:
        archiver = Archiver(settings=settings, engines=engines,
                            policies=resolve_policies_of(settings))
    check_engines_hold(engines.primary, engines.archive, archiver.policies)
    files = serve_catalog(app, archiver.policies)
    service = Service(app=app, archiver=archiver, report_files=tuple(files))
    replace(state_of(app), reload=lambda: reload_catalog(service),
            backlog=BacklogEstimates(lambda: count_backlog(archiver))).install(app)
    return service


def count_backlog(archiver: Archiver) -> dict[str, dict[str, int]]:
    """Per enabled policy and table, the aged rows a run would move now."""
    now = datetime.now(UTC)
    return {name: plan_run(archiver.engines.primary, archiver.as_of(name, now), now).counts
            for name in archiver.enabled}


def report_files(settings: Settings) -> list[SqlReportFile]:
    """The SQL report files to serve, parsed: the demo's beside the demo schema, then
    those of ``reports.sql_folder``.

    :raises ReportFileError: naming the first file that cannot be served.
    """
    taken = list(REPORTS) if settings.database.primary_schema == "demo" else []
    files: list[SqlReportFile] = []
    folders = [DEMO_SQL_REPORTS] if taken else []
    if settings.reports.sql_folder:
        folders.append(Path(settings.reports.sql_folder))
    for folder in folders:
        files += load_folder(folder, taken=[*taken, *(f.report.name for f in files)])
    return files


def serve_catalog(app: Flask, policies: Sequence[ArchivePolicy]) -> list[SqlReportFile]:
    """Serve the reports (built-in and SQL files, parsed) and the tables the settings
    expose, with these policies' archived rows (see :mod:`sediment.exposure`)."""
    state = state_of(app)
    settings = state.settings
    demo = settings.database.primary_schema == "demo"
    files = report_files(settings)
    reports: dict[str, Report] = {**(REPORTS if demo else {}),
                                  **{found.report.name: found.report for found in files}}
    known = metadata_of(PRIMARY).tables if demo else None
    install_catalog(app, reports, exposed_tables(settings.reports, policies,
                                                 state.engines.primary, known))
    return files


def check_reports(app: Flask, files: Sequence[SqlReportFile]) -> None:
    """Prepare every SQL report on the databases it reads (after migrations).

    :raises ReportFileError: with the file, the line and the database's message.
    """
    for found in files:
        check_against(found, state_of(app).report_databases)


def warn_unknown_allowed(app: Flask) -> list[str]:
    """Log, and return, a line per token allow-list naming what is served under no such name.

    ``token create --reports`` takes any names (it reads neither database), and an
    allow-list with a typo, or naming a table hidden or gone since, admitted nothing by that
    name while startup said nothing; a client's 403 was the first sign.
    """
    served = state_of(app)
    known = served.reports.keys() | served.tables.keys()
    problems = []
    for token in served.settings.auth.tokens:
        unknown = [name for name in token.reports if name not in known]
        if unknown:
            problems.append(
                f"auth.tokens.{token.name}.reports: {', '.join(map(repr, unknown))} is neither "
                "a report nor a served table, so the token reads nothing by that name (see "
                "'reports-check' for what is served)")
    for problem in problems:
        logger.warning("%s", problem)
    return problems


def reload_catalog(service: Service) -> Reloaded:
    """Re-read the SQL report files and PRIMARY's tables and serve them, or keep serving
    what was served when anything is wrong (logged). Requests in flight are not dropped."""
    settings = service.archiver.settings
    try:
        policies = (resolve_existing(settings.policies, service.engines).policies
                    if settings.database.primary_schema == "existing"
                    else service.archiver.policies)
        state = state_of(service.app)
        files = serve_catalog(service.app, policies)
        try:
            check_reports(service.app, files)
        except BaseException:
            state.install(service.app)  # the previous catalog, untouched
            raise
    except (ReportFileError, SettingsError, sa.exc.SQLAlchemyError) as exc:
        logger.error("reload refused, the previous reports and tables stay served: %s", exc)
        return Reloaded(ok=False, detail=first_line(exc))
    warn_unknown_allowed(service.app)
    served = state_of(service.app)
    detail = (f"{len(served.reports)} reports ({len(files)} from SQL files), "
              f"{len(served.tables)} tables")
    logger.info("reloaded: %s", detail)
    return Reloaded(ok=True, detail=detail)


def build_archiver(settings: Settings) -> Archiver:
    """The archiver of ``settings``, for the archive commands: a demo PRIMARY checked to be
    at its head, then the policies' conditions checked against PRIMARY's tables (ARCHIVE's
    schema is checked by the commands that need its ledger: :mod:`archive.cli`)."""
    archiver = build_service(settings).archiver
    ensure_complete(archiver.engines, primary_schema=settings.database.primary_schema,
                    databases=[PRIMARY])
    check_conditions(archiver.engines.primary, archiver.policies)
    return archiver
