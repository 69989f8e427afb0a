"""Incoming DMARC aggregate and SMTP TLS reports (SPEC §6) as others sent them to us, for the dashboards.

One row per report, unique per (reporter, report id) so a report sent twice is stored once; its rows
(DMARC records, TLS policies and their failures) carry the report's domain and UTC day so the dashboards
read per domain and day, or per domain and source IP, from one index. Every text column is bounded: the
owner (app/inreports/store.py) cuts reporter text to fit, and keeps the raw document gzipped up to a cap.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, UTCDateTime, utcnow

# A report's rows go with it (the foreign keys cascade too, for deletes done in SQL).
CASCADE = "all, delete-orphan"


class DMARCReport(Base):
    __tablename__ = "dmarc_reports"
    __table_args__ = (UniqueConstraint("reporter", "report_id", name="uq_dmarc_reports_reporter"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The reporter's email, or its org name when it gave none: what makes a report id unique.
    reporter: Mapped[str] = mapped_column(String(255))
    org_name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(255))
    report_id: Mapped[str] = mapped_column(String(255))
    domain: Mapped[str] = mapped_column(String(255), index=True)
    begin: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    imported: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    record_count: Mapped[int] = mapped_column(Integer)
    message_count: Mapped[int] = mapped_column(BigInteger)
    raw_size: Mapped[int] = mapped_column(Integer)
    # The document gzipped; NULL when larger than the owner's cap (the parsed rows are kept anyway).
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    records: Mapped[list[DMARCReportRecord]] = relationship(cascade=CASCADE, passive_deletes=True)


class DMARCReportRecord(Base):
    __tablename__ = "dmarc_report_records"
    __table_args__ = (
        Index("ix_dmarc_report_records_domain_day", "domain", "day"),
        Index("ix_dmarc_report_records_domain_source_ip", "domain", "source_ip"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("dmarc_reports.id", ondelete="CASCADE"), index=True)
    # Copied from the report (its policy domain, and the UTC day its range begins) for the indexes.
    domain: Mapped[str] = mapped_column(String(255))
    day: Mapped[date] = mapped_column(Date)
    source_ip: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(BigInteger)
    disposition: Mapped[str] = mapped_column(String(32))
    dkim: Mapped[str] = mapped_column(String(32))
    spf: Mapped[str] = mapped_column(String(32))
    header_from: Mapped[str] = mapped_column(String(255))
    # Compact JSON: the DKIM and SPF auth results and the override reasons, cut to fit.
    auth_results: Mapped[str] = mapped_column(String(2048))


class TLSReport(Base):
    __tablename__ = "tls_reports"
    __table_args__ = (UniqueConstraint("reporter", "report_id", name="uq_tls_reports_reporter"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The contact info, or the organization when it gave none: what makes a report id unique.
    reporter: Mapped[str] = mapped_column(String(255))
    organization: Mapped[str] = mapped_column(String(255))
    contact: Mapped[str] = mapped_column(String(255))
    report_id: Mapped[str] = mapped_column(String(255))
    # The first policy's domain, for listing; every policy's domain is in tls_report_policies.
    domain: Mapped[str] = mapped_column(String(255))
    begin: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    imported: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    policy_count: Mapped[int] = mapped_column(Integer)
    session_count: Mapped[int] = mapped_column(BigInteger)
    raw_size: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    policies: Mapped[list[TLSReportPolicy]] = relationship(cascade=CASCADE, passive_deletes=True)


class TLSReportPolicy(Base):
    __tablename__ = "tls_report_policies"
    __table_args__ = (Index("ix_tls_report_policies_domain_day", "policy_domain", "day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("tls_reports.id", ondelete="CASCADE"), index=True)
    policy_type: Mapped[str] = mapped_column(String(32))
    policy_domain: Mapped[str] = mapped_column(String(255))
    # The MX patterns, comma separated, cut to fit.
    mx_host: Mapped[str] = mapped_column(String(1024))
    successful: Mapped[int] = mapped_column(BigInteger)
    failed: Mapped[int] = mapped_column(BigInteger)
    day: Mapped[date] = mapped_column(Date)
    failures: Mapped[list[TLSReportFailure]] = relationship(cascade=CASCADE, passive_deletes=True)


class TLSReportFailure(Base):
    __tablename__ = "tls_report_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    policy_id: Mapped[int] = mapped_column(
        ForeignKey("tls_report_policies.id", ondelete="CASCADE"), index=True
    )
    result_type: Mapped[str] = mapped_column(String(64))
    sending_ip: Mapped[str] = mapped_column(String(64))
    receiving_mx_hostname: Mapped[str] = mapped_column(String(255))
    receiving_ip: Mapped[str] = mapped_column(String(64))
    failed_sessions: Mapped[int] = mapped_column(BigInteger)
    additional_information: Mapped[str] = mapped_column(String(1024))
    failure_reason_code: Mapped[str] = mapped_column(String(255))


class ReportIntake(Base):
    """A stored message whose report was parsed after delivery (app/inreports/intake.py), and what came
    of it: one row per message file, so a repeated hand-off is not parsed again and the sweep for lost
    hand-offs knows which messages are done."""

    __tablename__ = "report_intakes"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64), unique=True)  # the message's (messages.file_id)
    outcome: Mapped[str] = mapped_column(String(16))  # stored, duplicate or refused
    reason: Mapped[str] = mapped_column(String(64))  # a refusal's R6.3 reason, else ""
    processed: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
