"""Migrations: both histories upgrade, match the models, downgrade and upgrade again."""

from __future__ import annotations

from alembic import command

from reporting.app import create_app
from reporting.db import db
from reporting.migrations import (
    HISTORIES,
    alembic_config,
    current_revision,
    downgrade_all,
    head_revision,
    upgrade_all,
)
from tests.conftest import DatabaseFactory, make_settings


def test_upgrade_check_downgrade_upgrade(databases: DatabaseFactory) -> None:
    app = create_app(make_settings(*databases.pair("migrations")))
    with app.app_context():
        upgrade_all()
        for bind in HISTORIES:
            assert current_revision(db.engines[bind]) == head_revision(bind)
            command.check(alembic_config(bind))  # raises when models and migrations drift
        downgrade_all()
        for bind in HISTORIES:
            assert current_revision(db.engines[bind]) is None
        upgrade_all()
        for bind in HISTORIES:
            assert current_revision(db.engines[bind]) == head_revision(bind)
        for engine in db.engines.values():
            engine.dispose()
