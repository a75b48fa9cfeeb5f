"""keyset indexes: (occurred_at, id) on events and (placed_at, id) on orders

A report page orders by its sort column and then the key; an index in exactly that order
makes the page an index range scan with no sort step, however deep the cursor. Each replaces
the single-column index, whose work (age ranges) it does as well. On a large PostgreSQL
table the build blocks writes to that table while it runs: schedule the upgrade for a quiet
moment.

Revision ID: 0002_archive
Revises: 0001_archive
Create Date: 2026-11-24 13:38:09.865587
"""

from __future__ import annotations

from alembic import op

from sediment.core.migrations import demo_twins

revision = '0002_archive'
down_revision = '0001_archive'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not demo_twins():
        return
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_occurred_at'))
        batch_op.create_index('ix_events_occurred_at_id', ['occurred_at', 'id'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_placed_at'))
        batch_op.create_index('ix_orders_placed_at_id', ['placed_at', 'id'], unique=False)


def downgrade() -> None:
    if not demo_twins():
        return
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_placed_at_id')
        batch_op.create_index(batch_op.f('ix_orders_placed_at'), ['placed_at'], unique=False)

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_occurred_at_id')
        batch_op.create_index(batch_op.f('ix_events_occurred_at'), ['occurred_at'], unique=False)
