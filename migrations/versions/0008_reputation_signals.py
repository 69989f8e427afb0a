"""Reputation signals per message and the content hash of rejects

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 09:25:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('message_signals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('mailbox_orig_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('value', sa.String(length=512), nullable=False),
    sa.Column('received', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('junk', sa.Boolean(), nullable=False),
    sa.Column('notjunk', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['mailbox_orig_id'], ['mailboxes.id'], name=op.f('fk_message_signals_mailbox_orig_id_mailboxes')),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_message_signals_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_message_signals'))
    )
    with op.batch_alter_table('message_signals', schema=None) as batch_op:
        batch_op.create_index('ix_message_signals_history', ['mailbox_orig_id', 'kind', 'value', 'received'], unique=False, sqlite_where=sa.text('junk OR notjunk'), postgresql_where=sa.text('junk OR notjunk'))
        batch_op.create_index(batch_op.f('ix_message_signals_message_id'), ['message_id'], unique=False)

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_hash', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_messages_mailbox_content_hash', ['mailbox_id', 'content_hash'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_mailbox_content_hash')
        batch_op.drop_column('content_hash')

    with op.batch_alter_table('message_signals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_signals_message_id'))
        batch_op.drop_index('ix_message_signals_history', sqlite_where=sa.text('junk OR notjunk'), postgresql_where=sa.text('junk OR notjunk'))

    op.drop_table('message_signals')
