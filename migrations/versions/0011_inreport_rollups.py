"""Daily and monthly sums of the incoming reports for the dashboards, filled from the stored reports

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 13:41:03.029030
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dmarc_day_totals",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("passed", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "day", name=op.f("pk_dmarc_day_totals")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "dmarc_reporter_days",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("reporter", sa.String(length=255), nullable=False),
        sa.Column("org_name", sa.String(length=255), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("last_end", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain", "day", "reporter", name=op.f("pk_dmarc_reporter_days")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "dmarc_source_reporter_totals",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("source_ip", sa.String(length=64), nullable=False),
        sa.Column("span", sa.String(length=1), nullable=False),
        sa.Column("start", sa.Date(), nullable=False),
        sa.Column("reporter", sa.String(length=255), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "domain", "source_ip", "span", "start", "reporter", name=op.f("pk_dmarc_source_reporter_totals")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "dmarc_source_totals",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("source_ip", sa.String(length=64), nullable=False),
        sa.Column("span", sa.String(length=1), nullable=False),
        sa.Column("start", sa.Date(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("dmarc_passed", sa.BigInteger(), nullable=False),
        sa.Column("spf_aligned", sa.BigInteger(), nullable=False),
        sa.Column("dkim_aligned", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "source_ip", "span", "start", name=op.f("pk_dmarc_source_totals")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("dmarc_source_totals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dmarc_source_totals_period", ["domain", "span", "start", "source_ip"], unique=False
        )
        batch_op.create_index("ix_dmarc_source_totals_messages", ["domain", "span", "messages"], unique=False)

    op.create_table(
        "tls_failure_days",
        sa.Column("policy_domain", sa.String(length=255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("result_type", sa.String(length=64), nullable=False),
        sa.Column("receiving_mx_hostname", sa.String(length=255), nullable=False),
        sa.Column("failed_sessions", sa.BigInteger(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "policy_domain", "day", "result_type", "receiving_mx_hostname", name=op.f("pk_tls_failure_days")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "tls_policy_days",
        sa.Column("policy_domain", sa.String(length=255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("policy_type", sa.String(length=32), nullable=False),
        sa.Column("successful", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("policy_domain", "day", "policy_type", name=op.f("pk_tls_policy_days")),
        sqlite_with_rowid=False,
    )

    fill_from_stored_reports()


def fill_from_stored_reports() -> None:
    """The sums of the reports stored before this revision, as app/inreports/store.py adds them."""
    postgres = op.get_bind().dialect.name == "postgresql"
    month = "CAST(date_trunc('month', day) AS DATE)" if postgres else "date(day, 'start of month')"
    begin_day = "CAST(r.\"begin\" AT TIME ZONE 'UTC' AS DATE)" if postgres else 'date(r."begin")'
    passed = "CASE WHEN dkim = 'pass' OR spf = 'pass' THEN count ELSE 0 END"
    op.execute(
        "INSERT INTO dmarc_day_totals (domain, day, passed, failed) "
        f"SELECT domain, day, SUM({passed}), SUM(count) - SUM({passed}) FROM dmarc_report_records "
        "GROUP BY domain, day"
    )
    for span, start in (("d", "day"), ("m", month)):
        op.execute(
            "INSERT INTO dmarc_source_totals "
            "(domain, source_ip, span, start, messages, dmarc_passed, spf_aligned, dkim_aligned) "
            f"SELECT domain, source_ip, '{span}', {start}, SUM(count), SUM({passed}), "
            "SUM(CASE WHEN spf = 'pass' THEN count ELSE 0 END), "
            "SUM(CASE WHEN dkim = 'pass' THEN count ELSE 0 END) "
            f"FROM dmarc_report_records GROUP BY domain, source_ip, {start}"
        )
        op.execute(
            "INSERT INTO dmarc_source_reporter_totals (domain, source_ip, span, start, reporter, messages) "
            f"SELECT rec.domain, rec.source_ip, '{span}', {start}, r.reporter, SUM(rec.count) "
            "FROM dmarc_report_records rec JOIN dmarc_reports r ON r.id = rec.report_id "
            f"GROUP BY rec.domain, rec.source_ip, {start}, r.reporter"
        )
    op.execute(
        "INSERT INTO dmarc_reporter_days (domain, day, reporter, org_name, reports, messages, last_end) "
        f"SELECT r.domain, {begin_day}, r.reporter, MAX(r.org_name), COUNT(*), SUM(r.message_count), "
        'MAX(r."end") '
        f"FROM dmarc_reports r GROUP BY r.domain, {begin_day}, r.reporter"
    )
    op.execute(
        "INSERT INTO tls_policy_days (policy_domain, day, policy_type, successful, failed) "
        "SELECT policy_domain, day, policy_type, SUM(successful), SUM(failed) FROM tls_report_policies "
        "GROUP BY policy_domain, day, policy_type"
    )
    op.execute(
        "INSERT INTO tls_failure_days "
        "(policy_domain, day, result_type, receiving_mx_hostname, failed_sessions, reports) "
        "SELECT p.policy_domain, p.day, f.result_type, f.receiving_mx_hostname, SUM(f.failed_sessions), "
        "COUNT(DISTINCT p.report_id) "
        "FROM tls_report_failures f JOIN tls_report_policies p ON p.id = f.policy_id "
        "GROUP BY p.policy_domain, p.day, f.result_type, f.receiving_mx_hostname"
    )


def downgrade() -> None:
    op.drop_table("tls_policy_days")
    op.drop_table("tls_failure_days")
    with op.batch_alter_table("dmarc_source_totals", schema=None) as batch_op:
        batch_op.drop_index("ix_dmarc_source_totals_messages")
        batch_op.drop_index("ix_dmarc_source_totals_period")

    op.drop_table("dmarc_source_totals")
    op.drop_table("dmarc_source_reporter_totals")
    op.drop_table("dmarc_reporter_days")
    op.drop_table("dmarc_day_totals")
