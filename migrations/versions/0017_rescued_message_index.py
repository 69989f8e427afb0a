"""Partial indexes of the messages rescued from Rejects, for the store's duplicate check

The check for a sender's retry of a rescued message went through ix_messages_mailbox_message_id and
read every earlier copy with the same Message-ID (a value the sender chooses) to find none rescued.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# app.models.store.RESCUED, as it was when this revision was written.
RESCUED = sa.text("mailbox_destined_id IS NOT NULL AND NOT is_reject")
INDEXES = {
    "ix_messages_rescued_message_id": ["mailbox_id", "message_id"],
    "ix_messages_rescued_content_hash": ["mailbox_id", "content_hash"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "messages", columns, sqlite_where=RESCUED, postgresql_where=RESCUED)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="messages")
