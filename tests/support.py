"""Helpers shared by the test modules (fixtures live in ``conftest.py``).

Throw-away database pairs on either backend, settings built as an operator would set them,
the app's engines and archiver, the command line as a subprocess, and bulk demo rows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from archive.archiver import Archiver
from archive.policy import ArchivePolicy, resolve_policy
from archive.runner import RunLimits, RunOutcome, run_policy
from reporting.state import state_of
from sediment.core.databases import ARCHIVE, Engines, engine_options, prepare_engine
from sediment.core.schema import metadata_of
from sediment.core.schema.archive import LEDGER_TABLES, twin_of
from sediment.core.settings import ArchiveSettings, PolicySettings, Settings, load_settings
from sediment.service import resolve_policies_of

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("sqlite", "postgres")
POSTGRES_ADMIN_URL = os.environ.get(
    "SEDIMENT_TEST_POSTGRES_URL", "postgresql+psycopg2://root@127.0.0.1:5432/test"
)


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


@contextmanager
def on_statements(engine: sa.Engine, listener: Callable[..., None]) -> Iterator[None]:
    """``listener`` sees every statement ``engine`` runs inside the block
    (``before_cursor_execute``: connection, cursor, statement, parameters, context,
    executemany)."""
    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)


def settings_of(app: Flask) -> Settings:
    """The settings a test app was created with."""
    return state_of(app).settings


def engines_of(app: Flask) -> Engines:
    """The read-write engines of a test app."""
    return state_of(app).engines


def policies_of(app: Flask) -> tuple[ArchivePolicy, ...]:
    """The app's settings' archival policies, resolved as the composition root does."""
    return resolve_policies_of(settings_of(app))


def archiver_of(app: Flask) -> Archiver:
    """The archiver the composition root would build over a test app's engines."""
    return Archiver(settings=settings_of(app), engines=engines_of(app),
                    policies=policies_of(app))


def empty_all_tables(engines: Engines) -> None:
    """Delete every row of both databases (the schema stays)."""
    for database, engine in engines.items():
        tables = list(reversed(metadata_of(database).sorted_tables))
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                names = ", ".join(f'"{t.name}"' for t in tables)
                connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            else:
                for table in tables:
                    connection.execute(table.delete())


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "run_service.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def env_for(primary_url: str, archive_url: str) -> dict[str, str]:
    return {"SEDIMENT_DATABASE__PRIMARY_URL": primary_url,
            "SEDIMENT_DATABASE__ARCHIVE_URL": archive_url}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bulk_events(primary: sa.Engine, count: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with primary.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO customers (id, name, email, country, created_at) "
            "VALUES (1, 'Bulk', 'bulk@x', 'DE', :now)"), {"now": start})
        rows = [{"id": i, "at": start.replace(microsecond=i % 1_000_000), "detail": f"e{i}" * 8}
                for i in range(1, count + 1)]
        connection.execute(sa.text(
            "INSERT INTO events (id, occurred_at, kind, customer_id, order_id, detail) "
            "VALUES (:id, :at, 'login', 1, NULL, :detail)"), rows)


@dataclass
class OwnSchema:
    """A PRIMARY schema written for a test (not the demo's), its ARCHIVE twins and the
    ledger, created in a fresh database pair: what an application's database looks like to
    the archiver."""

    engines: Engines
    settings: Settings
    primary: sa.MetaData
    twins: dict[str, sa.Table]

    def policy(self, settings: PolicySettings) -> ArchivePolicy:
        return resolve_policy(settings, self.primary.tables, self.twins)

    def run(self, policy: ArchivePolicy, now: datetime, *,
            archive_settings: ArchiveSettings | None = None,
            limits: RunLimits | None = None) -> RunOutcome:
        return run_policy(self.engines.primary, self.engines.archive, policy, now=now,
                          database=self.settings.database,
                          settings=archive_settings or self.settings.archive, limits=limits)

    def dispose(self) -> None:
        self.engines.dispose()


def own_schema(databases: DatabaseFactory, primary: sa.MetaData,
               archived: Sequence[str]) -> OwnSchema:
    """Create ``primary``'s tables, the twins of ``archived`` and the ledger."""
    settings = make_settings(*databases.pair("own"))
    urls = (settings.database.primary_url, settings.database.archive_url)
    engines = Engines(*(sa.create_engine(url, **engine_options(
        url, pool_size=5, busy_timeout_ms=5000)) for url in urls))
    for _, engine in engines.items():
        prepare_engine(engine)
    twins_metadata = sa.MetaData()
    twins = {name: twin_of(primary.tables[name], twins_metadata) for name in archived}
    primary.create_all(engines.primary)
    twins_metadata.create_all(engines.archive)
    ledger = metadata_of(ARCHIVE)
    ledger.create_all(engines.archive, tables=[ledger.tables[name] for name in LEDGER_TABLES])
    return OwnSchema(engines, settings, primary, twins)


def walk_pages(client: FlaskClient, path: str, query: str = "", limit: int = 50
               ) -> list[dict[str, Any]]:
    """Every row of every page of ``path?query``, following the cursors."""
    rows: list[dict[str, Any]] = []
    args = f"{query}&limit={limit}"
    for _ in range(10_000):
        response = client.get(f"{path}?{args}")
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        rows += body["rows"]
        if body["page"]["next_cursor"] is None:
            return rows
        args = f"{query}&{urlencode({'limit': limit, 'cursor': body['page']['next_cursor']})}"
    raise AssertionError(f"the pages of {path} never ended")
