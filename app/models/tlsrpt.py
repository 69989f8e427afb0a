"""TLS results of outgoing deliveries (RFC 8460 terms), summed per policy and UTC day for TLS reports.

One `TLSResult` row per (policy domain, UTC day, recipient domain, host-or-domain policy, policy);
its failures are `TLSFailureDetail` rows with a session count each. Both are only ever changed by
atomic upserts that add to the counts, so concurrent workers never lose a count.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow

# RFC 8460 §4.4 policy-type values.
PolicyType = Literal["sts", "tlsa", "no-policy-found"]


class TLSResult(Base):
    __tablename__ = "tls_results"
    __table_args__ = (
        UniqueConstraint(
            "policy_domain", "day", "recipient_domain", "is_host", "policy_key", name="uq_tls_results_key"
        ),
        # The daily TLS report job reads one recipient domain's day by this index (app/tlsreports).
        Index("ix_tls_results_recipient_domain_day", "recipient_domain", "day"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The recipient domain (MTA-STS / no policy), or the MX host name (DANE / no policy) when is_host.
    policy_domain: Mapped[str] = mapped_column(String(255))
    day: Mapped[date] = mapped_column(Date, index=True)
    # The recipient domain of the deliveries counted here; for host results it names the affected
    # recipient domain in a report to the host (SPEC R5.2).
    recipient_domain: Mapped[str] = mapped_column(String(255))
    is_host: Mapped[bool] = mapped_column(Boolean)
    policy_type: Mapped[PolicyType] = mapped_column(String(16))
    # JSON lists of strings, as in the report: the policy's lines / TLSA records, and the MX patterns.
    policy_string: Mapped[str] = mapped_column(Text)
    mx_host: Mapped[str] = mapped_column(Text)
    # SHA-256 (hex) of type, policy string and mx hosts: a changed policy is counted separately.
    policy_key: Mapped[str] = mapped_column(String(64))
    success_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    # Set by the daily report job before it queues a report (SPEC R5.2), and also when it decided no
    # report goes out (no TLSRPT record, no failure): the row is never reported again. A host row
    # goes into two reports, the recipient domain's and the host's, hence two markers.
    recipient_report_sent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    host_report_sent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class TLSFailureDetail(Base):
    __tablename__ = "tls_failure_details"
    __table_args__ = (UniqueConstraint("result_id", "detail_key", name="uq_tls_failure_details_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("tls_results.id", ondelete="CASCADE"))
    # SHA-256 (hex) of the fields below: equal failures add up in one row.
    detail_key: Mapped[str] = mapped_column(String(64))
    result_type: Mapped[str] = mapped_column(String(64))
    sending_ip: Mapped[str | None] = mapped_column(String(64))
    receiving_mx_hostname: Mapped[str | None] = mapped_column(String(255))
    receiving_mx_helo: Mapped[str | None] = mapped_column(String(255))
    receiving_ip: Mapped[str | None] = mapped_column(String(64))
    failure_reason_code: Mapped[str | None] = mapped_column(Text)
    additional_info: Mapped[str | None] = mapped_column(Text)
    failed_session_count: Mapped[int] = mapped_column(Integer, default=0)


class TLSReportPost(Base):
    """A TLS report waiting to be POSTed to an `https:` rua (RFC 8460 §5.4) at `due`.

    The daily job spreads sends over hours, so the report waits here (the database is the truth);
    a failed POST is tried once more later that day, then dropped (logged).
    """

    __tablename__ = "tls_report_posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[str] = mapped_column(String(512))
    policy_domain: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # the gzipped JSON report
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    due: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
