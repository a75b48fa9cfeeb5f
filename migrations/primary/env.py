"""Alembic environment of the PRIMARY database; see reporting/migrations.py."""

from alembic import context

from reporting.migrations import run_migrations

run_migrations(context)
