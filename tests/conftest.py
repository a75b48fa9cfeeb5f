"""Fixtures shared by the suite: every database test runs on SQLite and on PostgreSQL.

``backend`` is parametrised over the backends chosen with ``--backend`` (default: both).
PostgreSQL databases are created for the session from the admin URL in
``SEDIMENT_TEST_POSTGRES_URL`` (default: the local server's ``test`` database) and
dropped at the end. When PostgreSQL is unreachable the PostgreSQL half is skipped, loudly,
except under ``CI=true``, where it fails: CI must never pass by skipping a backend.

Helpers that tests import live in :mod:`tests.support`, never here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from archive.archiver import Archiver
from reporting.app import create_app, db
from sediment.core.databases import Engines
from sediment.core.migrations import upgrade_all
from sediment.service import check_reports, resolve_policies_of, serve_catalog
from tests import app_schema
from tests.app_schema import AppDatabase
from tests.archiving import run, seed_shop, small_batches
from tests.support import (
    BACKENDS,
    DatabaseFactory,
    archiver_of,
    empty_all_tables,
    engines_of,
    in_ci,
    make_settings,
    postgres_unavailable_reason,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend", choices=("all", *BACKENDS), default="all",
        help="run database tests on sqlite, postgres or all (default)",
    )
    parser.addoption(
        "--full", action="store_true",
        help="full mode: long crash loops (at least 25 crashes per point and backend)",
    )
    parser.addoption(
        "--database-tests-only", action="store_true",
        help="leave out the tests that use no database (scripts/dev.py runs them once, in "
             "the SQLite half, while the PostgreSQL half runs beside it)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        backends = BACKENDS if chosen == "all" else (chosen,)
        for only in ("postgres", "sqlite"):
            if metafunc.definition.get_closest_marker(only):
                backends = tuple(b for b in backends if b == only)
        metafunc.parametrize("backend", backends, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--database-tests-only"):
        return
    kept = [item for item in items if "backend" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(scope="session")
def databases(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    if backend == "postgres":
        reason = postgres_unavailable_reason()
        if reason:
            if in_ci():
                pytest.fail(f"CI=true and {reason}: PostgreSQL tests must not be skipped")
            pytest.skip(reason)
    factory = DatabaseFactory(backend, tmp_path_factory.mktemp(f"db_{backend}"), [])
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def urls(databases: DatabaseFactory) -> tuple[str, str]:
    """The session's migrated database pair on this backend."""
    return databases.pair("session")


@pytest.fixture(scope="session")
def migrated_app(urls: tuple[str, str]) -> Iterator[Flask]:
    settings = make_settings(*urls)
    app = create_app(settings)
    upgrade_all(engines_of(app))
    check_reports(app, serve_catalog(app, resolve_policies_of(settings)))
    yield app
    engines_of(app).dispose()


@pytest.fixture
def app(migrated_app: Flask) -> Iterator[Flask]:
    """The migrated app, inside an app context; every table is emptied after the test."""
    with migrated_app.app_context():
        yield migrated_app
        db.session.remove()
        empty_all_tables(engines_of(migrated_app))


@pytest.fixture
def engines(app: Flask) -> Engines:
    return engines_of(app)


@pytest.fixture
def primary(engines: Engines) -> sa.Engine:
    return engines.primary


@pytest.fixture
def archive(engines: Engines) -> sa.Engine:
    return engines.archive


@pytest.fixture
def archiver(app: Flask) -> Archiver:
    """The archiver over the test app's engines, as the composition root builds it."""
    return archiver_of(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the migrated app (tables empty unless the test seeds them)."""
    return app.test_client()


@pytest.fixture
def app_db(databases: DatabaseFactory, tmp_path: Path) -> Iterator[AppDatabase]:
    """An application's database (tests/app_schema.py) as PRIMARY, and an empty ARCHIVE."""
    primary_url, archive_url = databases.pair("app")
    with app_schema.engine_for(primary_url) as primary, \
            app_schema.engine_for(archive_url) as archive:
        app_schema.create_app_schema(primary)
        yield AppDatabase(app_schema.backend_of(primary), primary_url, archive_url, primary,
                          archive, tmp_path)


@pytest.fixture
def shop(app: Flask, primary: sa.Engine, archive: sa.Engine) -> Flask:
    """The test app over the small demo shop, each policy run once (rows in both databases'
    tables, and two runs in the ledger)."""
    seed_shop(primary, archive)
    orders, events = small_batches(app)
    run(app, primary, archive, orders)
    run(app, primary, archive, events)
    return app
