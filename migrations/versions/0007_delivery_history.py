"""Delivery history (one row per attempt) and queue ids that are never reused (SQLite AUTOINCREMENT)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('delivery_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('queue_id', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.String(length=64), nullable=False),
    sa.Column('attempted', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recipient', sa.String(length=512), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('tls', sa.String(length=128), nullable=True),
    sa.Column('reply_code', sa.Integer(), nullable=True),
    sa.Column('reply', sa.String(length=512), nullable=False),
    sa.Column('result', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_attempts'))
    )
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_attempts_attempted'), ['attempted'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_attempts_file_id'), ['file_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_attempts_queue_id'), ['queue_id'], unique=False)
    _outgoing_autoincrement(True)


def downgrade() -> None:
    _outgoing_autoincrement(False)
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_attempts_queue_id'))
        batch_op.drop_index(batch_op.f('ix_delivery_attempts_file_id'))
        batch_op.drop_index(batch_op.f('ix_delivery_attempts_attempted'))
    op.drop_table('delivery_attempts')


def _outgoing_autoincrement(on: bool) -> None:
    """SQLite: rebuild the queue table (rows kept) with or without AUTOINCREMENT, which only a new
    table can get. PostgreSQL's serial ids are never reused anyway."""
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.batch_alter_table(
        'outgoing', recreate='always', table_kwargs={'sqlite_autoincrement': on}
    ):
        pass
