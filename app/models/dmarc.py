"""DMARC evaluations awaiting an aggregate report, report claims, and the report suppression list."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class DMARCEvaluation(Base):
    """One evaluated incoming message (SPEC R2.2), kept until it went into a report or is 48 h old."""

    __tablename__ = "dmarc_evaluations"
    # No index besides the primary key: the table holds two days at most, each hourly run reads it
    # in one pass and deletes what it reported in one pass; an index would cost every insert and
    # every deleted row more than it would save those scans.

    id: Mapped[int] = mapped_column(primary_key=True)
    policy_domain: Mapped[str] = mapped_column(String(255))
    evaluated: Mapped[datetime] = mapped_column(UTCDateTime)
    interval_hours: Mapped[int] = mapped_column(Integer)
    interval_start: Mapped[datetime] = mapped_column(UTCDateTime)
    interval_end: Mapped[datetime] = mapped_column(UTCDateTime)
    # Optional evaluations never cause a report by themselves (R2.1).
    optional: Mapped[bool] = mapped_column(Boolean, default=False)
    rua: Mapped[str] = mapped_column(Text)  # JSON list of the record's rua URIs
    # The published policy (R2.2).
    p: Mapped[str] = mapped_column(String(16))
    sp: Mapped[str | None] = mapped_column(String(16))
    np: Mapped[str | None] = mapped_column(String(16))
    adkim: Mapped[str] = mapped_column(String(1))
    aspf: Mapped[str] = mapped_column(String(1))
    testing: Mapped[bool] = mapped_column(Boolean, default=False)
    psd: Mapped[str] = mapped_column(String(1))
    fo: Mapped[str | None] = mapped_column(String(32))
    discovery_method: Mapped[str] = mapped_column(String(16))
    # What makes one report row; identical rows share `record_key` and merge into one with a count.
    record_key: Mapped[str] = mapped_column(String(16))
    source_ip: Mapped[str] = mapped_column(String(64))
    disposition: Mapped[str] = mapped_column(String(16))
    requested_disposition: Mapped[str | None] = mapped_column(String(16))
    dkim_aligned: Mapped[bool] = mapped_column(Boolean)
    spf_aligned: Mapped[bool] = mapped_column(Boolean)
    override_reasons: Mapped[str] = mapped_column(Text)  # JSON list of reason words
    envelope_to: Mapped[str] = mapped_column(String(255))
    envelope_from: Mapped[str] = mapped_column(String(255))
    header_from: Mapped[str] = mapped_column(String(255))
    dkim_results: Mapped[str] = mapped_column(Text)  # JSON list of [domain, selector, result]
    spf_results: Mapped[str] = mapped_column(Text)  # JSON list of [domain, scope, result]


class DMARCReportClaim(Base):
    """A policy domain's evaluations taken by one hourly run: reported (report_id) or discarded (None).

    The unique key makes a second worker racing in the same hour fail to claim, so each report is
    sent once; the claim commits together with the queued report. The evaluations it covers (its
    domain's, up to `max_id`, of intervals ended by `run_hour`) are deleted in bulk after the run, or
    by the next run if this one died first (`evaluations_deleted` says which is done).
    """

    __tablename__ = "dmarc_report_claims"
    __table_args__ = (
        UniqueConstraint("policy_domain", "run_hour", name="uq_dmarc_report_claims_domain_hour"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    policy_domain: Mapped[str] = mapped_column(String(255))
    run_hour: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    run_cid: Mapped[str] = mapped_column(String(32), index=True)
    max_id: Mapped[int] = mapped_column(BigInteger)
    report_id: Mapped[str | None] = mapped_column(String(64))
    claimed: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    evaluations_deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class ReportSuppression(Base):
    """An address that gets no DMARC (kind "dmarc") or TLS (kind "tlsrpt") reports until `until`."""

    __tablename__ = "report_suppressions"
    __table_args__ = (UniqueConstraint("kind", "address", name="uq_report_suppressions_kind_address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(512))
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    comment: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
