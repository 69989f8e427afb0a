"""MTA-STS policy cache

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('mtasts_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('record_id', sa.String(length=32), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('max_age', sa.Integer(), nullable=False),
    sa.Column('mx', sa.Text(), nullable=False),
    sa.Column('fetched', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('checked', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mtasts_policies')),
    sa.UniqueConstraint('domain', name=op.f('uq_mtasts_policies_domain'))
    )
    with op.batch_alter_table('mtasts_policies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mtasts_policies_expires'), ['expires'], unique=False)
        batch_op.create_index(batch_op.f('ix_mtasts_policies_mode'), ['mode'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('mtasts_policies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mtasts_policies_mode'))
        batch_op.drop_index(batch_op.f('ix_mtasts_policies_expires'))

    op.drop_table('mtasts_policies')
