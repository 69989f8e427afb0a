"""The outgoing queue's message content in the database, for several machines (SPEC R9.1)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base


revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outgoing_content",
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_outgoing_content")),
    )
    op.create_index(op.f("ix_outgoing_content_created"), "outgoing_content", ["created"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_outgoing_content_created"), table_name="outgoing_content")
    op.drop_table("outgoing_content")
