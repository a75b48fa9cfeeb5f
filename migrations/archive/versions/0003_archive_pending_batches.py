"""ledger: the key range of a run's batch in flight, and roots skipped because locked

``pending_low``/``pending_high`` bound the root keys a run has copied to ARCHIVE but not yet
deleted from PRIMARY; merged reports and the next run look for rows in both databases only
there. ``skipped_locked`` counts roots an application transaction kept from a batch.
Runs that ended before this revision with ``copied`` short of ``deleted`` (killed mid-batch)
get the range of all the root keys they stamped, so the next run settles them too.

Revision ID: 0003_archive
Revises: 0002_archive
Create Date: 2026-12-01 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sediment.core.migrations import demo_twins

revision = '0003_archive'
down_revision = '0002_archive'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('archive_run_tables', schema=None) as batch_op:
        batch_op.add_column(sa.Column('skipped_locked', sa.BigInteger(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('pending_low', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('pending_high', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_archive_run_tables_pending', ['table_name', 'pending_low'],
                              unique=False)
    # The roots the shipped policies could archive (beside an existing PRIMARY there are no
    # runs yet: its twins arrive with 0004).
    for root in ('orders', 'events') if demo_twins() else ():
        for column, bound in (('pending_low', 'min'), ('pending_high', 'max')):
            op.execute(
                f"UPDATE archive_run_tables SET {column} = (SELECT {bound}(r.id) FROM {root} r "
                "WHERE r.archive_run_id = archive_run_tables.run_id) "
                f"WHERE table_name = '{root}' AND copied <> deleted")


def downgrade() -> None:
    with op.batch_alter_table('archive_run_tables', schema=None) as batch_op:
        batch_op.drop_index('ix_archive_run_tables_pending')
        batch_op.drop_column('pending_high')
        batch_op.drop_column('pending_low')
        batch_op.drop_column('skipped_locked')
