"""Migrations: both histories upgrade, match the models, downgrade and upgrade again; the
plain ``alembic`` command reaches the databases the settings name."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic import command

from reporting.app import create_app
from sediment.core.migrations import (
    alembic_config,
    current_revision,
    downgrade_all,
    head_revision,
    upgrade_all,
)
from tests.support import REPO, DatabaseFactory, engines_of, env_for, make_settings


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
