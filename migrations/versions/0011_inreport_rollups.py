"""Daily and monthly sums of the incoming reports for the dashboards, filled from the stored reports

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-02 13:41:03.029030
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base


revision: str = '0011'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dmarc_day_totals',
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('passed', sa.BigInteger(), nullable=False),
    sa.Column('failed', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'day', name=op.f('pk_dmarc_day_totals')),
    sqlite_with_rowid=False
    )
    op.create_table('dmarc_reporter_days',
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('reporter', sa.String(length=255), nullable=False),
    sa.Column('org_name', sa.String(length=255), nullable=False),
    sa.Column('reports', sa.Integer(), nullable=False),
    sa.Column('messages', sa.BigInteger(), nullable=False),
    sa.Column('last_end', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'day', 'reporter', name=op.f('pk_dmarc_reporter_days')),
    sqlite_with_rowid=False
    )
    op.create_table('dmarc_source_reporter_totals',
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('source_ip', sa.String(length=64), nullable=False),
    sa.Column('span', sa.String(length=1), nullable=False),
    sa.Column('start', sa.Date(), nullable=False),
    sa.Column('reporter', sa.String(length=255), nullable=False),
    sa.Column('messages', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'source_ip', 'span', 'start', 'reporter', name=op.f('pk_dmarc_source_reporter_totals')),
    sqlite_with_rowid=False
    )
    op.create_table('dmarc_source_totals',
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('source_ip', sa.String(length=64), nullable=False),
    sa.Column('span', sa.String(length=1), nullable=False),
    sa.Column('start', sa.Date(), nullable=False),
    sa.Column('messages', sa.BigInteger(), nullable=False),
    sa.Column('dmarc_passed', sa.BigInteger(), nullable=False),
    sa.Column('spf_aligned', sa.BigInteger(), nullable=False),
    sa.Column('dkim_aligned', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'source_ip', 'span', 'start', name=op.f('pk_dmarc_source_totals')),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('dmarc_source_totals', schema=None) as batch_op:
        batch_op.create_index('ix_dmarc_source_totals_period', ['domain', 'span', 'start', 'source_ip'], unique=False)
        batch_op.create_index('ix_dmarc_source_totals_messages', ['domain', 'span', 'messages'], unique=False)

    op.create_table('tls_failure_days',
    sa.Column('policy_domain', sa.String(length=255), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('result_type', sa.String(length=64), nullable=False),
    sa.Column('receiving_mx_hostname', sa.String(length=255), nullable=False),
    sa.Column('failed_sessions', sa.BigInteger(), nullable=False),
    sa.Column('reports', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('policy_domain', 'day', 'result_type', 'receiving_mx_hostname', name=op.f('pk_tls_failure_days')),
    sqlite_with_rowid=False
    )
    op.create_table('tls_policy_days',
    sa.Column('policy_domain', sa.String(length=255), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('policy_type', sa.String(length=32), nullable=False),
    sa.Column('successful', sa.BigInteger(), nullable=False),
    sa.Column('failed', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('policy_domain', 'day', 'policy_type', name=op.f('pk_tls_policy_days')),
    sqlite_with_rowid=False
    )


def downgrade() -> None:
    op.drop_table('tls_policy_days')
    op.drop_table('tls_failure_days')
    with op.batch_alter_table('dmarc_source_totals', schema=None) as batch_op:
        batch_op.drop_index('ix_dmarc_source_totals_messages')
        batch_op.drop_index('ix_dmarc_source_totals_period')

    op.drop_table('dmarc_source_totals')
    op.drop_table('dmarc_source_reporter_totals')
    op.drop_table('dmarc_reporter_days')
    op.drop_table('dmarc_day_totals')
