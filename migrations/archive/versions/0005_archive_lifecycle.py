"""lifecycle: run kinds, rows removed after archiving, legal holds, restore marks

``archive_runs.kind`` tells archiving from purging, expiry and restoring (every earlier run
archived). ``archive_run_tables.removed`` counts rows an archive run copied that a later
run removed from ARCHIVE, so the rows stamped with a run stay ``copied - removed``.
``archive_holds`` keeps legal holds: a held row is never purged or expired.
``archive_restores`` marks restored roots, which archiving leaves alone until they age
again. ``archive_runs.detail`` says what an erasure erased, as digests.

Revision ID: 0005_archive
Revises: 0004_archive
Create Date: 2026-12-02 11:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sediment.core.schema.types

revision = '0005_archive'
down_revision = '0004_archive'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('archive_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='archive',
                                      nullable=False))
        batch_op.add_column(sa.Column('detail', sa.Text(), nullable=True))
    with op.batch_alter_table('archive_run_tables', schema=None) as batch_op:
        batch_op.add_column(sa.Column('removed', sa.BigInteger(), server_default='0',
                                      nullable=False))
    op.create_table('archive_holds',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('table_name', sa.String(length=255), nullable=False),
    sa.Column('row_key', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('held_by', sa.String(length=255), nullable=False),
    sa.Column('held_at', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('released_by', sa.String(length=255), nullable=True),
    sa.Column('released_at', sediment.core.schema.types.UTCDateTime(timezone=True),
              nullable=True),
    sa.Column('release_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_archive_holds'))
    )
    with op.batch_alter_table('archive_holds', schema=None) as batch_op:
        batch_op.create_index('ix_archive_holds_table_released', ['table_name', 'released_at'],
                              unique=False)


    op.create_table('archive_restores',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('table_name', sa.String(length=255), nullable=False),
    sa.Column('row_key', sa.Text(), nullable=False),
    sa.Column('restored_at', sediment.core.schema.types.UTCDateTime(timezone=True),
              nullable=False),
    sa.Column('until', sediment.core.schema.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_archive_restores'))
    )
    with op.batch_alter_table('archive_restores', schema=None) as batch_op:
        batch_op.create_index('ix_archive_restores_table_until', ['table_name', 'until'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_archive_restores_run_id'), ['run_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('archive_restores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_archive_restores_run_id'))
        batch_op.drop_index('ix_archive_restores_table_until')
    op.drop_table('archive_restores')
    with op.batch_alter_table('archive_holds', schema=None) as batch_op:
        batch_op.drop_index('ix_archive_holds_table_released')
    op.drop_table('archive_holds')
    with op.batch_alter_table('archive_run_tables', schema=None) as batch_op:
        batch_op.drop_column('removed')
    with op.batch_alter_table('archive_runs', schema=None) as batch_op:
        batch_op.drop_column('detail')
        batch_op.drop_column('kind')
