"""initial schema

Revision ID: 0001_archive
Revises: (none)
Create Date: 2026-11-24 11:20:56.099780
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sediment.core.schema.types
from sediment.core.migrations import demo_twins

revision = '0001_archive'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('archive_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('policy', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('cutoff', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('batches', sa.Integer(), nullable=False),
    sa.Column('rows_moved', sa.BigInteger(), nullable=False),
    sa.Column('rows_per_second', sa.Float(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_archive_runs'))
    )
    with op.batch_alter_table('archive_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_archive_runs_policy'), ['policy'], unique=False)
        batch_op.create_index(batch_op.f('ix_archive_runs_started_at'), ['started_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_archive_runs_status'), ['status'], unique=False)

    if demo_twins():  # the demo schema's twins; an existing PRIMARY gets its own
        op.create_table('events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('occurred_at', sediment.core.schema.types.UTCDateTime(timezone=True), autoincrement=False, nullable=False),
        sa.Column('kind', sa.String(length=32), autoincrement=False, nullable=False),
        sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=True),
        sa.Column('order_id', sa.BigInteger(), autoincrement=False, nullable=True),
        sa.Column('detail', sa.Text(), autoincrement=False, nullable=False),
        sa.Column('archived_at', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('archive_run_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
        )
        with op.batch_alter_table('events', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_events_archive_run_id'), ['archive_run_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_events_customer_id'), ['customer_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_events_kind'), ['kind'], unique=False)
            batch_op.create_index(batch_op.f('ix_events_occurred_at'), ['occurred_at'], unique=False)
            batch_op.create_index(batch_op.f('ix_events_order_id'), ['order_id'], unique=False)

        op.create_table('order_items',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('product_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('quantity', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('unit_price_cents', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('archived_at', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('archive_run_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_order_items'))
        )
        with op.batch_alter_table('order_items', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_order_items_archive_run_id'), ['archive_run_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_order_items_order_id'), ['order_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_order_items_product_id'), ['product_id'], unique=False)

        op.create_table('orders',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('status', sa.String(length=16), autoincrement=False, nullable=False),
        sa.Column('placed_at', sediment.core.schema.types.UTCDateTime(timezone=True), autoincrement=False, nullable=False),
        sa.Column('closed_at', sediment.core.schema.types.UTCDateTime(timezone=True), autoincrement=False, nullable=True),
        sa.Column('archived_at', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('archive_run_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_orders'))
        )
        with op.batch_alter_table('orders', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_orders_archive_run_id'), ['archive_run_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_orders_closed_at'), ['closed_at'], unique=False)
            batch_op.create_index(batch_op.f('ix_orders_customer_id'), ['customer_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_orders_placed_at'), ['placed_at'], unique=False)

        op.create_table('payments',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('amount_cents', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('method', sa.String(length=16), autoincrement=False, nullable=False),
        sa.Column('paid_at', sediment.core.schema.types.UTCDateTime(timezone=True), autoincrement=False, nullable=False),
        sa.Column('archived_at', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('archive_run_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_payments'))
        )
        with op.batch_alter_table('payments', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_payments_archive_run_id'), ['archive_run_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_payments_order_id'), ['order_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_payments_paid_at'), ['paid_at'], unique=False)

    op.create_table('archive_run_tables',
    sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('table_name', sa.String(length=64), nullable=False),
    sa.Column('selected', sa.BigInteger(), nullable=False),
    sa.Column('copied', sa.BigInteger(), nullable=False),
    sa.Column('verified', sa.BigInteger(), nullable=False),
    sa.Column('deleted', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['archive_runs.id'], name=op.f('fk_archive_run_tables_run_id_archive_runs')),
    sa.PrimaryKeyConstraint('run_id', 'table_name', name=op.f('pk_archive_run_tables'))
    )


def downgrade() -> None:
    op.drop_table('archive_run_tables')
    if demo_twins():
        with op.batch_alter_table('payments', schema=None) as batch_op:
            batch_op.drop_index(batch_op.f('ix_payments_paid_at'))
            batch_op.drop_index(batch_op.f('ix_payments_order_id'))
            batch_op.drop_index(batch_op.f('ix_payments_archive_run_id'))

        op.drop_table('payments')
        with op.batch_alter_table('orders', schema=None) as batch_op:
            batch_op.drop_index(batch_op.f('ix_orders_placed_at'))
            batch_op.drop_index(batch_op.f('ix_orders_customer_id'))
            batch_op.drop_index(batch_op.f('ix_orders_closed_at'))
            batch_op.drop_index(batch_op.f('ix_orders_archive_run_id'))

        op.drop_table('orders')
        with op.batch_alter_table('order_items', schema=None) as batch_op:
            batch_op.drop_index(batch_op.f('ix_order_items_product_id'))
            batch_op.drop_index(batch_op.f('ix_order_items_order_id'))
            batch_op.drop_index(batch_op.f('ix_order_items_archive_run_id'))

        op.drop_table('order_items')
        with op.batch_alter_table('events', schema=None) as batch_op:
            batch_op.drop_index(batch_op.f('ix_events_order_id'))
            batch_op.drop_index(batch_op.f('ix_events_occurred_at'))
            batch_op.drop_index(batch_op.f('ix_events_kind'))
            batch_op.drop_index(batch_op.f('ix_events_customer_id'))
            batch_op.drop_index(batch_op.f('ix_events_archive_run_id'))

        op.drop_table('events')
    with op.batch_alter_table('archive_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_archive_runs_status'))
        batch_op.drop_index(batch_op.f('ix_archive_runs_started_at'))
        batch_op.drop_index(batch_op.f('ix_archive_runs_policy'))

    op.drop_table('archive_runs')
