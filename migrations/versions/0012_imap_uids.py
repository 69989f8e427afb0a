"""IMAP: per-mailbox UIDs with UIDVALIDITY and UIDNEXT, and the system flags beyond seen (SPEC R8.2)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 14:00:00.000000
"""

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLAGS = ("flagged", "answered", "draft", "deleted")


def upgrade() -> None:
    # Columns are added NOT NULL with a default, and UIDs made unique by an index: on SQLite either
    # needs no copy of the table, which its foreign keys (rows of messages and message_signals
    # referring to these) would refuse. PostgreSQL then drops the defaults; SQLite keeps them.
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('uidvalidity', sa.BigInteger(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('uidnext', sa.Integer(), nullable=False, server_default='1'))
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('uid', sa.Integer(), nullable=False, server_default='0'))
        for flag in FLAGS:
            batch_op.add_column(sa.Column(flag, sa.Boolean(), nullable=False, server_default=sa.false()))
    # Existing messages are numbered in id order (the order they were stored) within each mailbox.
    op.execute(
        'UPDATE messages SET uid = numbered.n FROM ('
        ' SELECT id, row_number() OVER (PARTITION BY mailbox_id ORDER BY id) AS n FROM messages'
        ') AS numbered WHERE messages.id = numbered.id'
    )
    op.execute(
        sa.text(
            'UPDATE mailboxes SET uidvalidity = :now, uidnext = 1 + COALESCE('
            '(SELECT max(uid) FROM messages WHERE messages.mailbox_id = mailboxes.id), 0)'
        ).bindparams(now=max(1, int(time.time()) % 2**32))
    )
    op.create_index('uq_messages_mailbox_uid', 'messages', ['mailbox_id', 'uid'], unique=True)
    if op.get_bind().dialect.name == 'postgresql':
        for table, column in [('mailboxes', 'uidvalidity'), ('mailboxes', 'uidnext'), ('messages', 'uid')]:
            op.alter_column(table, column, server_default=None)
        for flag in FLAGS:
            op.alter_column('messages', flag, server_default=None)


def downgrade() -> None:
    op.drop_index('uq_messages_mailbox_uid', table_name='messages')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        for flag in reversed(FLAGS):
            batch_op.drop_column(flag)
        batch_op.drop_column('uid')
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_column('uidnext')
        batch_op.drop_column('uidvalidity')
