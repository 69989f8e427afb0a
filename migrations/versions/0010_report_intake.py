"""Report intake: the messages whose report was parsed after delivery, and the outcome

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 13:50:19.399776
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('report_intakes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('processed', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_intakes')),
    sa.UniqueConstraint('file_id', name=op.f('uq_report_intakes_file_id'))
    )


def downgrade() -> None:
    op.drop_table('report_intakes')
