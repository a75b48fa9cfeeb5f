"""any schema: pending windows by archive time, the twin-change ledger, longer table names

``pending_since`` marks a run's rows that may be in both databases by the ``archived_at`` of
its earliest batch not yet deleted from PRIMARY, which works for keys of any type (the
integer ``pending_low``/``pending_high`` stay for the merged reports). Recovery then looks
up rows by run and archive time, so each demo twin's ``archive_run_id`` index becomes one on
``(archive_run_id, archived_at)``. ``archive_schema_changes`` records every change Sediment
makes to the twins of an existing PRIMARY's tables. ``table_name`` grows to hold
``schema.table``.

Revision ID: 0004_archive
Revises: 0003_archive
Create Date: 2026-12-01 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sediment.core.schema.types
from sediment.core.migrations import demo_twins

revision = '0004_archive'
down_revision = '0003_archive'
branch_labels = None
depends_on = None

DEMO_TWINS = ('events', 'order_items', 'orders', 'payments')


def upgrade() -> None:
    with op.batch_alter_table('archive_run_tables', schema=None) as batch_op:
        batch_op.alter_column('table_name', existing_type=sa.String(length=64),
                              type_=sa.String(length=255), existing_nullable=False)
        batch_op.add_column(sa.Column(
            'pending_since', sediment.core.schema.types.UTCDateTime(timezone=True),
            nullable=True))
        batch_op.create_index('ix_archive_run_tables_pending_since',
                              ['table_name', 'pending_since'], unique=False)
    # A run left pending by 0003's code: its whole run is the window (settled once).
    op.execute("UPDATE archive_run_tables SET pending_since = "
               "(SELECT started_at FROM archive_runs WHERE archive_runs.id = run_id) "
               "WHERE pending_low IS NOT NULL")
    op.create_table('archive_schema_changes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('changed_at', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('table_name', sa.String(length=255), nullable=False),
    sa.Column('change', sa.String(length=32), nullable=False),
    sa.Column('columns', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_archive_schema_changes'))
    )
    with op.batch_alter_table('archive_schema_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_archive_schema_changes_changed_at'), ['changed_at'],
                              unique=False)
    if demo_twins():
        for table in DEMO_TWINS:
            with op.batch_alter_table(table, schema=None) as batch_op:
                batch_op.drop_index(f'ix_{table}_archive_run_id')
                batch_op.create_index(f'ix_{table}_archive_run_id_archived_at',
                                      ['archive_run_id', 'archived_at'], unique=False)


def downgrade() -> None:
    if demo_twins():
        for table in DEMO_TWINS:
            with op.batch_alter_table(table, schema=None) as batch_op:
                batch_op.drop_index(f'ix_{table}_archive_run_id_archived_at')
                batch_op.create_index(f'ix_{table}_archive_run_id', ['archive_run_id'],
                                      unique=False)
    with op.batch_alter_table('archive_schema_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_archive_schema_changes_changed_at'))
    op.drop_table('archive_schema_changes')
    with op.batch_alter_table('archive_run_tables', schema=None) as batch_op:
        batch_op.drop_index('ix_archive_run_tables_pending_since')
        batch_op.drop_column('pending_since')
        batch_op.alter_column('table_name', existing_type=sa.String(length=255),
                              type_=sa.String(length=64), existing_nullable=False)
