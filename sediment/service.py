"""Wiring: one Flask app and one archiver over the same engines, from one set of settings.

With :mod:`sediment.cli`, the only code that imports both :mod:`reporting` and
:mod:`archive`. Flask-SQLAlchemy (inside :func:`reporting.app.create_app`) stays the one
place read-write engines are configured; the archiver is handed them from the app's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flask import Flask

from archive.archiver import Archiver
from archive.compat import check_engines_hold
from archive.existing import resolve_existing
from archive.policy import ArchivePolicy, resolve_policies
from archive.preflight import check_conditions
from reporting.app import create_checked_app, install_tables
from reporting.state import state_of
from sediment.core.databases import PRIMARY, Engines
from sediment.core.schema import metadata_of
from sediment.core.schema.archive import archived_tables
from sediment.core.settings import Settings
from sediment.exposure import exposed_tables


@dataclass(frozen=True)
class Service:
    """The web app and the archiver of one process, sharing its engines."""

    app: Flask
    archiver: Archiver

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
    serve_tables(app, archiver.policies)
    return Service(app=app, archiver=archiver)


def serve_tables(app: Flask, policies: Sequence[ArchivePolicy]) -> None:
    """Serve the tables the settings expose, with these policies' archived rows, at
    ``/api/v1/tables`` (see :mod:`sediment.exposure`)."""
    state = state_of(app)
    settings = state.settings
    known = metadata_of(PRIMARY).tables if settings.database.primary_schema == "demo" else None
    install_tables(app, exposed_tables(settings.reports, policies, state.engines.primary,
                                       known))


def build_archiver(settings: Settings) -> Archiver:
    """The archiver of ``settings``, for the archive commands, its policies' conditions
    checked against PRIMARY (which they need migrated)."""
    archiver = build_service(settings).archiver
    check_conditions(archiver.engines.primary, archiver.policies)
    return archiver
