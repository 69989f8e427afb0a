"""Daily and monthly sums of the incoming reports (app/models/inreports.py), for the dashboards.

A year of aggregate reports holds millions of records; the dashboards' questions (per day, per source IP,
per reporter, per TLS policy type and failure) are answered from these sums, which the owner
(app/inreports/store.py) adds to in the transaction that stores each report, so they always equal a
GROUP BY over the stored rows. Source IPs are summed per day and per month (`span` "d" or "m"): a year
is then read as its whole months and the days at its edges. Keys are the primary keys; on SQLite the
tables are clustered on them (WITHOUT ROWID), so a range of keys is read with the sums beside it.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime

CLUSTERED = {"sqlite_with_rowid": False}


class DMARCDayTotal(Base):
    """Messages the reporters counted about a domain on a day (their report's first UTC day)."""

    __tablename__ = "dmarc_day_totals"
    __table_args__ = CLUSTERED

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    passed: Mapped[int] = mapped_column(BigInteger)
    failed: Mapped[int] = mapped_column(BigInteger)


class DMARCSourceTotal(Base):
    """Messages from one source IP about a domain in a day or a month (`start` its first day)."""

    __tablename__ = "dmarc_source_totals"
    # Keyed by IP first, to sum a few IPs' rows (a top list's); by period, to sum every IP's; by size,
    # to find the rows large enough to matter for a top list.
    __table_args__ = (
        Index("ix_dmarc_source_totals_period", "domain", "span", "start", "source_ip"),
        Index("ix_dmarc_source_totals_messages", "domain", "span", "messages"),
        CLUSTERED,
    )

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    source_ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    span: Mapped[str] = mapped_column(String(1), primary_key=True)  # "d" or "m"
    start: Mapped[date] = mapped_column(Date, primary_key=True)
    messages: Mapped[int] = mapped_column(BigInteger)
    dmarc_passed: Mapped[int] = mapped_column(BigInteger)
    spf_aligned: Mapped[int] = mapped_column(BigInteger)
    dkim_aligned: Mapped[int] = mapped_column(BigInteger)


class DMARCSourceReporterTotal(Base):
    """Messages from one source IP per reporter, keyed by IP first: read for a page's top IPs only."""

    __tablename__ = "dmarc_source_reporter_totals"
    __table_args__ = CLUSTERED

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    source_ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    span: Mapped[str] = mapped_column(String(1), primary_key=True)
    start: Mapped[date] = mapped_column(Date, primary_key=True)
    reporter: Mapped[str] = mapped_column(String(255), primary_key=True)
    messages: Mapped[int] = mapped_column(BigInteger)


class DMARCReporterDay(Base):
    """The reports one reporter sent about a domain whose range begins on a day."""

    __tablename__ = "dmarc_reporter_days"
    __table_args__ = CLUSTERED

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    reporter: Mapped[str] = mapped_column(String(255), primary_key=True)
    org_name: Mapped[str] = mapped_column(String(255))  # the greatest seen, as max() would pick
    reports: Mapped[int] = mapped_column(Integer)
    messages: Mapped[int] = mapped_column(BigInteger)
    last_end: Mapped[datetime] = mapped_column(UTCDateTime)


class TLSPolicyDay(Base):
    """TLS sessions with a policy domain on a day, per policy type."""

    __tablename__ = "tls_policy_days"
    __table_args__ = CLUSTERED

    policy_domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    policy_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    successful: Mapped[int] = mapped_column(BigInteger)
    failed: Mapped[int] = mapped_column(BigInteger)


class TLSFailureDay(Base):
    """Failed TLS sessions with a policy domain on a day, per result type and receiving MX host;
    `reports`: how many reports told of them (each report once per key)."""

    __tablename__ = "tls_failure_days"
    __table_args__ = CLUSTERED

    policy_domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    result_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    receiving_mx_hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    failed_sessions: Mapped[int] = mapped_column(BigInteger)
    reports: Mapped[int] = mapped_column(Integer)
