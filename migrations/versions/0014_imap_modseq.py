"""IMAP: a modification sequence per mailbox and per message (SPEC R8.3, RFC 7162 CONDSTORE)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 14:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NOT NULL with a default, as in 0012 (no copy of the tables on SQLite): every existing mailbox
    # and message starts at 1, so a client's first look at a mailbox sees everything as changed.
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('highestmodseq', sa.BigInteger(), nullable=False, server_default='1'))
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('modseq', sa.BigInteger(), nullable=False, server_default='1'))
    op.create_index('ix_messages_mailbox_modseq', 'messages', ['mailbox_id', 'modseq'])
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('mailboxes', 'highestmodseq', server_default=None)
        op.alter_column('messages', 'modseq', server_default=None)


def downgrade() -> None:
    op.drop_index('ix_messages_mailbox_modseq', table_name='messages')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('modseq')
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_column('highestmodseq')
