"""Stored mail's content in the database, for several machines (SPEC R9.1)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_content",
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_message_content")),
    )


def downgrade() -> None:
    op.drop_table("message_content")
