"""Migrations: both histories upgrade, match the models, downgrade and upgrade again; the
plain ``alembic`` command reaches the databases the settings name."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from flask import Flask

from reporting.app import create_app
from sediment.core.migrations import (
    alembic_config,
    current_revision,
    downgrade_all,
    head_revision,
    upgrade_all,
)
from tests.support import REPO, DatabaseFactory, engines_of, env_for, make_settings, run_cli


def test_upgrade_check_downgrade_upgrade(databases: DatabaseFactory) -> None:
    engines = engines_of(create_app(make_settings(*databases.pair("migrations"))))
    upgrade_all(engines)
    for database, engine in engines.items():
        assert current_revision(engine) == head_revision(database)
        command.check(alembic_config(database, engine))  # raises when models and migrations drift
    downgrade_all(engines)
    for _, engine in engines.items():
        assert current_revision(engine) is None
    upgrade_all(engines)
    for database, engine in engines.items():
        assert current_revision(engine) == head_revision(database)
    engines.dispose()


def test_plain_alembic_command_migrates_the_configured_database(
    databases: DatabaseFactory,
) -> None:
    urls = databases.pair("alembic")
    alembic = [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini")]
    environment = {**os.environ, **env_for(*urls)}
    for database in ("primary", "archive"):
        result = subprocess.run([*alembic, "-n", database, "upgrade", "head"], cwd=REPO,
                                env=environment, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    engines = engines_of(create_app(make_settings(*urls)))
    for database, engine in engines.items():
        assert current_revision(engine) == head_revision(database)
    engines.dispose()
    unnamed = subprocess.run([*alembic, "upgrade", "head"], cwd=REPO, env=environment,
                             capture_output=True, text=True, timeout=120)
    assert unnamed.returncode != 0
    said = (unnamed.stdout + unnamed.stderr).strip()  # Alembic prints FAILED to stdout
    assert said == ("FAILED: alembic section 'alembic' names no database: "
                    "run 'alembic -n primary ...' or 'alembic -n archive ...'")


@pytest.mark.parametrize("database", ["primary", "archive"])
def test_the_head_read_from_the_scripts_is_alembics(database: str) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from sediment.core.migrations import MIGRATIONS_ROOT, head_revision

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_ROOT / database))
    assert head_revision(database) == ScriptDirectory.from_config(config).get_current_head()
    assert head_revision(database) is not None


def test_serving_databases_at_their_head_never_loads_alembic(urls: tuple[str, str],
                                                           migrated_app: Flask) -> None:
    """Alembic is 11 MB resident: a restart of a migrated service must not load it."""
    script = (
        "import sys\n"
        "from sediment.core.settings import load_settings\n"
        "from sediment.service import build_service\n"
        "from sediment.core.migrations import ensure_complete, upgrade_all\n"
        "from tests.support import make_settings\n"
        f"service = build_service(make_settings({urls[0]!r}, {urls[1]!r}))\n"
        "upgrade_all(service.engines)\n"
        "ensure_complete(service.engines)\n"
        "client = service.app.test_client()\n"
        "assert client.get('/healthz').status_code == 200\n"
        "assert client.get('/api/v1/reports/orders').status_code == 200\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.postgres
def test_a_role_that_may_not_create_tables_is_told_the_grant(databases: DatabaseFactory) -> None:
    """PostgreSQL 15 lets no role create in the ``public`` schema of a database it does not
    own: ``migrate`` stopped on a bare "permission denied for schema public". It now says
    which database refused and the statements that let the role in; with one, it works."""
    primary_url, archive_url = databases.pair("create_grant")
    role = f"archiver_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(archive_url, poolclass=sa.pool.NullPool)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    as_role = sa.engine.make_url(archive_url).set(username=role).render_as_string(
        hide_password=False)
    try:
        refused = run_cli("migrate", env=env_for(primary_url, as_role))
        assert refused.returncode == 1, refused.stderr
        line = refused.stderr.strip().splitlines()[-1]  # after the log's lines
        grant = f"GRANT CREATE ON SCHEMA public TO {role}"
        assert line.startswith("sediment: the archive database refused the migration "
                               "(permission denied for schema public)") and grant in line
        with admin.begin() as connection:
            connection.exec_driver_sql(grant)
        migrated = run_cli("migrate", env=env_for(primary_url, as_role))
        assert migrated.returncode == 0, migrated.stderr
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


@pytest.mark.parametrize(("database", "statements", "says"), [
    ("primary", ["CREATE TABLE invoices (id integer PRIMARY KEY)"],
     "the primary database holds tables Sediment did not make (invoices): it is another "
     'application\'s; set database.primary_schema = "existing"'),
    ("archive", ["CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
                 "INSERT INTO alembic_version VALUES ('ae1027a6acf')"],
     "the archive database's alembic_version is at revision 'ae1027a6acf', which is not one "
     "of Sediment's: another application migrates it; "
     'set database.primary_schema = "existing"'),
    ("archive", ["CREATE TABLE orders (id integer PRIMARY KEY, note text)"],
     "the archive database already holds tables named as Sediment's own (orders) but no "
     "Sediment revision: they are another application's; point database.archive_url at an "
     "empty database or one Sediment migrated;"),
    ("primary", ["CREATE TABLE events (id integer PRIMARY KEY, note text)"],
     "the primary database already holds tables named as Sediment's own (events) but no "
     "Sediment revision: they are another application's; point database.primary_url at an "
     "empty database or one Sediment migrated;"),
])
def test_another_applications_database_is_never_migrated(
        databases: DatabaseFactory, database: str, statements: list[str], says: str) -> None:
    """An application's database given as primary_url with primary_schema left "demo" got
    the demo's tables and Sediment's revision beside its own, and 'serve' then seeded the
    demo shop into it; an ARCHIVE (or PRIMARY) holding an application's table under one of
    Sediment's names failed halfway with the driver's "relation already exists", PRIMARY
    migrated already. Neither database is touched; the message names the setting."""
    urls = databases.pair(f"foreign_{database}")
    target = urls[0] if database == "primary" else urls[1]
    with sa.create_engine(target, poolclass=sa.pool.NullPool).begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    refused = run_cli("migrate", env=env_for(*urls))
    assert refused.returncode == 1, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"sediment: {says}"), line
    assert line.endswith("nothing was migrated")
    for url in urls:
        with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
        assert tables <= {"invoices", "alembic_version", "orders", "events"}, tables
