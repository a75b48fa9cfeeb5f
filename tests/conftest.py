"""Fixtures shared by the suite: every database test runs on SQLite and on PostgreSQL.

``backend`` is parametrised over the backends chosen with ``--backend`` (default: both).
PostgreSQL databases are created for the session from the admin URL in
``SEDIMENT_TEST_POSTGRES_URL`` (default: the local server's ``test`` database) and
dropped at the end. When PostgreSQL is unreachable the PostgreSQL half is skipped, loudly,
except under ``CI=true``, where it fails: CI must never pass by skipping a backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from reporting.app import create_app
from reporting.db import ARCHIVE, PRIMARY, db
from reporting.migrations import upgrade_all
from reporting.settings import Settings, load_settings

BACKENDS = ("sqlite", "postgres")
POSTGRES_ADMIN_URL = os.environ.get(
    "SEDIMENT_TEST_POSTGRES_URL", "postgresql+psycopg2://root@127.0.0.1:5432/test"
)
REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend", choices=("all", *BACKENDS), default="all",
        help="run database tests on sqlite, postgres or all (default)",
    )
    parser.addoption(
        "--full", action="store_true",
        help="full mode: long crash loops (at least 25 crashes per point and backend)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        backends = BACKENDS if chosen == "all" else (chosen,)
        if metafunc.definition.get_closest_marker("postgres"):
            backends = tuple(b for b in backends if b == "postgres")
        metafunc.parametrize("backend", backends, scope="session")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@dataclass
class DatabaseFactory:
    """Creates pairs of throw-away databases on one backend and drops them afterwards."""

    backend: str
    root: Path
    created: list[str]

    def pair(self, label: str) -> tuple[str, str]:
        """Return fresh, empty (primary_url, archive_url)."""
        suffix = f"{label}_{uuid.uuid4().hex[:8]}"
        if self.backend == "sqlite":
            return (f"sqlite:///{self.root / f'p_{suffix}.sqlite3'}",
                    f"sqlite:///{self.root / f'a_{suffix}.sqlite3'}")
        urls = []
        for side in ("p", "a"):
            name = f"sediment_test_{side}_{suffix}"
            with admin_engine().connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
            self.created.append(name)
            urls.append(sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name)
                        .render_as_string(hide_password=False))
        return urls[0], urls[1]

    def drop_all(self) -> None:
        for name in self.created:
            with admin_engine().connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.clear()


_admin: sa.Engine | None = None


def admin_engine() -> sa.Engine:
    global _admin
    if _admin is None:
        _admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT",
                                  poolclass=sa.pool.NullPool)
    return _admin


def postgres_unavailable_reason() -> str | None:
    try:
        with admin_engine().connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        return f"PostgreSQL at {POSTGRES_ADMIN_URL} unreachable: {str(exc).splitlines()[0]}"
    return None


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


def make_settings(primary_url: str, archive_url: str, **overrides: str) -> Settings:
    """Settings from the repository's settings.toml with the given URLs and overrides.

    ``overrides`` maps ``SEDIMENT_*`` variable names to values, exactly as an operator
    would set them; the real environment is not read.
    """
    environ = {
        "SEDIMENT_DATABASE__PRIMARY_URL": primary_url,
        "SEDIMENT_DATABASE__ARCHIVE_URL": archive_url,
        "SEDIMENT_SERVICE__SEED_WHEN_EMPTY": "false",
        # Tests change data between requests on one app: every aggregate computed afresh,
        # except in the tests of the cache itself.
        "SEDIMENT_REPORTS__AGGREGATE_CACHE": "0s",
        **overrides,
    }
    return load_settings(REPO / "settings.toml", environ=environ)


@pytest.fixture(scope="session")
def urls(databases: DatabaseFactory) -> tuple[str, str]:
    """The session's migrated database pair on this backend."""
    return databases.pair("session")


@pytest.fixture(scope="session")
def migrated_app(urls: tuple[str, str]) -> Iterator[Flask]:
    app = create_app(make_settings(*urls))
    with app.app_context():
        upgrade_all()
    yield app
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def app(migrated_app: Flask) -> Iterator[Flask]:
    """The migrated app, inside an app context; every table is emptied after the test."""
    with migrated_app.app_context():
        yield migrated_app
        db.session.remove()
        empty_all_tables()


def empty_all_tables() -> None:
    for bind in (PRIMARY, ARCHIVE):
        engine = db.engines[bind]
        tables = list(reversed(db.metadatas[bind].sorted_tables))
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                names = ", ".join(f'"{t.name}"' for t in tables)
                connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            else:
                for table in tables:
                    connection.execute(table.delete())


@pytest.fixture
def primary(app: Flask) -> sa.Engine:
    return db.engines[PRIMARY]


@pytest.fixture
def archive(app: Flask) -> sa.Engine:
    return db.engines[ARCHIVE]
