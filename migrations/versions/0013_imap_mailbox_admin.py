"""IMAP: the subscription list (SUBSCRIBE, LSUB, LIST (SUBSCRIBED)); existing mailboxes start subscribed

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 14:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailbox_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "name", name="uq_mailbox_subscriptions_account_name"),
    )
    # Until now every mailbox counted as subscribed: clients that show subscribed ones keep them all.
    op.execute("INSERT INTO mailbox_subscriptions (account_id, name) SELECT account_id, name FROM mailboxes")


def downgrade() -> None:
    op.drop_table("mailbox_subscriptions")
