"""Alembic environment of the PRIMARY database; see sediment/core/migrations.py."""

from alembic import context

from sediment.core.migrations import run_migrations

run_migrations(context)
