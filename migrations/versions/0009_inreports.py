"""Incoming DMARC aggregate and SMTP TLS reports, their records, policies and failures (SPEC §6)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:44:19.257713
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dmarc_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reporter', sa.String(length=255), nullable=False),
    sa.Column('org_name', sa.String(length=255), nullable=False),
    sa.Column('email', sa.String(length=255), nullable=False),
    sa.Column('report_id', sa.String(length=255), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('begin', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('end', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('imported', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('record_count', sa.Integer(), nullable=False),
    sa.Column('message_count', sa.BigInteger(), nullable=False),
    sa.Column('raw_size', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dmarc_reports')),
    sa.UniqueConstraint('reporter', 'report_id', name='uq_dmarc_reports_reporter')
    )
    with op.batch_alter_table('dmarc_reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dmarc_reports_domain'), ['domain'], unique=False)

    op.create_table('tls_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reporter', sa.String(length=255), nullable=False),
    sa.Column('organization', sa.String(length=255), nullable=False),
    sa.Column('contact', sa.String(length=255), nullable=False),
    sa.Column('report_id', sa.String(length=255), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('begin', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('end', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('imported', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('policy_count', sa.Integer(), nullable=False),
    sa.Column('session_count', sa.BigInteger(), nullable=False),
    sa.Column('raw_size', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tls_reports')),
    sa.UniqueConstraint('reporter', 'report_id', name='uq_tls_reports_reporter')
    )
    op.create_table('dmarc_report_records',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('source_ip', sa.String(length=64), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('disposition', sa.String(length=32), nullable=False),
    sa.Column('dkim', sa.String(length=32), nullable=False),
    sa.Column('spf', sa.String(length=32), nullable=False),
    sa.Column('header_from', sa.String(length=255), nullable=False),
    sa.Column('auth_results', sa.String(length=2048), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['dmarc_reports.id'], name=op.f('fk_dmarc_report_records_report_id_dmarc_reports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dmarc_report_records'))
    )
    with op.batch_alter_table('dmarc_report_records', schema=None) as batch_op:
        batch_op.create_index('ix_dmarc_report_records_domain_day', ['domain', 'day'], unique=False)
        batch_op.create_index('ix_dmarc_report_records_domain_source_ip', ['domain', 'source_ip'], unique=False)
        batch_op.create_index(batch_op.f('ix_dmarc_report_records_report_id'), ['report_id'], unique=False)

    op.create_table('tls_report_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('policy_type', sa.String(length=32), nullable=False),
    sa.Column('policy_domain', sa.String(length=255), nullable=False),
    sa.Column('mx_host', sa.String(length=1024), nullable=False),
    sa.Column('successful', sa.BigInteger(), nullable=False),
    sa.Column('failed', sa.BigInteger(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['tls_reports.id'], name=op.f('fk_tls_report_policies_report_id_tls_reports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tls_report_policies'))
    )
    with op.batch_alter_table('tls_report_policies', schema=None) as batch_op:
        batch_op.create_index('ix_tls_report_policies_domain_day', ['policy_domain', 'day'], unique=False)
        batch_op.create_index(batch_op.f('ix_tls_report_policies_report_id'), ['report_id'], unique=False)

    op.create_table('tls_report_failures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('result_type', sa.String(length=64), nullable=False),
    sa.Column('sending_ip', sa.String(length=64), nullable=False),
    sa.Column('receiving_mx_hostname', sa.String(length=255), nullable=False),
    sa.Column('receiving_ip', sa.String(length=64), nullable=False),
    sa.Column('failed_sessions', sa.BigInteger(), nullable=False),
    sa.Column('additional_information', sa.String(length=1024), nullable=False),
    sa.Column('failure_reason_code', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['tls_report_policies.id'], name=op.f('fk_tls_report_failures_policy_id_tls_report_policies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tls_report_failures'))
    )
    with op.batch_alter_table('tls_report_failures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tls_report_failures_policy_id'), ['policy_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tls_report_failures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tls_report_failures_policy_id'))

    op.drop_table('tls_report_failures')
    with op.batch_alter_table('tls_report_policies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tls_report_policies_report_id'))
        batch_op.drop_index('ix_tls_report_policies_domain_day')

    op.drop_table('tls_report_policies')
    with op.batch_alter_table('dmarc_report_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dmarc_report_records_report_id'))
        batch_op.drop_index('ix_dmarc_report_records_domain_source_ip')
        batch_op.drop_index('ix_dmarc_report_records_domain_day')

    op.drop_table('dmarc_report_records')
    op.drop_table('tls_reports')
    with op.batch_alter_table('dmarc_reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dmarc_reports_domain'))

    op.drop_table('dmarc_reports')
