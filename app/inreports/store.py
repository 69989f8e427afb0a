"""Owner of the incoming report tables (app/models/inreports.py): stores a parsed report once per
(reporter, report id), and reads them back for `postwarden reports` and the dashboards.

Reporter text is cut to its column's size here, so a long value cannot fail the insert; what it says
is shown escaped by whoever prints it (app/cli/common.py `echo`)."""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import case, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.message import ascii_domain
from app.inreports import dmarc, tls
from app.inreports.read import Report
from app.models.inreports import DMARCReport, DMARCReportRecord, TLSReport, TLSReportFailure, TLSReportPolicy

ReportKind = Literal["dmarc", "tls"]
# Raw documents larger than this, gzipped, are not kept (their parsed rows are).
RAW_CAP = 1024 * 1024
MAX_COUNT = 2**63 - 1
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class Summary:
    """A stored report as listed: for DMARC, records and messages; for TLS, policies and sessions."""

    kind: ReportKind
    id: int
    reporter: str
    org: str
    domain: str
    report_id: str
    begin: datetime
    end: datetime
    imported: datetime
    records: int
    messages: int


@dataclass(frozen=True)
class Stored:
    summary: Summary


@dataclass(frozen=True)
class Duplicate:
    """Already stored: the summary of the report kept from the first import."""

    summary: Summary


def _cut(text: str, model: Any, column: str) -> str:
    """`text` cut to the column's declared length."""
    return text[: _length(model, column)]


def _length(model: Any, column: str) -> int:
    length: int = getattr(model, column).type.length
    return length


def _fitting_json(results: dict[str, list[list[str]]], length: int) -> str:
    """The results as compact JSON of at most `length` characters: while too long, the last entry of
    the longest list goes (cutting the text would leave something that is no longer JSON)."""
    lists = {key: list(entries) for key, entries in results.items()}
    while len(text := json.dumps(lists, separators=(",", ":"))) > length:
        longest = max(lists.values(), key=len)
        if not longest:
            return "{}"
        longest.pop()
    return text


def _count(value: int) -> int:
    return max(0, min(value, MAX_COUNT))


def _raw(raw: bytes) -> bytes | None:
    packed = gzip.compress(raw)
    return packed if len(packed) <= RAW_CAP else None


def store_report(session: Session, report: Report, raw: bytes) -> Stored | Duplicate:
    """Store `report` (parsed from `raw`) unless a report with its reporter and id is stored already;
    a concurrent import of the same report loses at the unique constraint and answers Duplicate."""
    row = _dmarc_row(report, raw) if isinstance(report, dmarc.AggregateReport) else _tls_row(report, raw)
    existing = _stored_as(session, row)
    if existing is None:
        try:
            with session.begin_nested():
                session.add(row)
            return Stored(_summary(row))
        except IntegrityError:
            existing = _stored_as(session, row)
            if existing is None:  # a failure other than the unique constraint
                raise
    return Duplicate(_summary(existing))


def _stored_as(session: Session, row: DMARCReport | TLSReport) -> DMARCReport | TLSReport | None:
    """The stored report with `row`'s reporter and report id."""
    if isinstance(row, DMARCReport):
        same = (DMARCReport.reporter == row.reporter) & (DMARCReport.report_id == row.report_id)
        return session.scalars(select(DMARCReport).where(same)).first()
    tls_same = (TLSReport.reporter == row.reporter) & (TLSReport.report_id == row.report_id)
    return session.scalars(select(TLSReport).where(tls_same)).first()


def _dmarc_row(report: dmarc.AggregateReport, raw: bytes) -> DMARCReport:
    meta = report.metadata
    domain = _cut(report.policy.domain.lower(), DMARCReport, "domain")
    return DMARCReport(
        reporter=_cut((meta.email or meta.org_name).lower(), DMARCReport, "reporter"),
        org_name=_cut(meta.org_name, DMARCReport, "org_name"),
        email=_cut(meta.email, DMARCReport, "email"),
        report_id=_cut(meta.report_id, DMARCReport, "report_id"),
        domain=domain,
        begin=meta.begin,
        end=meta.end,
        record_count=len(report.records),
        message_count=_count(sum(record.count for record in report.records)),
        raw_size=len(raw),
        raw=_raw(raw),
        records=[_record_row(record, domain, meta.begin) for record in report.records],
    )


def _record_row(record: dmarc.Record, domain: str, begin: datetime) -> DMARCReportRecord:
    results = {
        "dkim": [[r.domain, r.selector, r.result] for r in record.dkim_results],
        "spf": [[r.domain, r.scope, r.result] for r in record.spf_results],
        "reasons": [[r.type, r.comment] for r in record.reasons],
    }
    auth = _fitting_json(results, _length(DMARCReportRecord, "auth_results"))
    return DMARCReportRecord(
        domain=domain,
        day=begin.date(),
        source_ip=_cut(record.source_ip, DMARCReportRecord, "source_ip"),
        count=_count(record.count),
        disposition=_cut(record.disposition, DMARCReportRecord, "disposition"),
        dkim=_cut(record.dkim, DMARCReportRecord, "dkim"),
        spf=_cut(record.spf, DMARCReportRecord, "spf"),
        header_from=_cut(record.header_from.lower(), DMARCReportRecord, "header_from"),
        auth_results=auth,
    )


def _tls_row(report: tls.TLSReport, raw: bytes) -> TLSReport:
    first = report.policies[0].policy_domain.lower() if report.policies else ""
    return TLSReport(
        reporter=_cut((report.contact_info or report.organization_name).lower(), TLSReport, "reporter"),
        organization=_cut(report.organization_name, TLSReport, "organization"),
        contact=_cut(report.contact_info, TLSReport, "contact"),
        report_id=_cut(report.report_id, TLSReport, "report_id"),
        domain=_cut(first, TLSReport, "domain"),
        begin=report.start,
        end=report.end,
        policy_count=len(report.policies),
        session_count=_count(sum(p.successful + p.failed for p in report.policies)),
        raw_size=len(raw),
        raw=_raw(raw),
        policies=[_policy_row(policy, report.start) for policy in report.policies],
    )


def _policy_row(policy: tls.PolicyReport, start: datetime) -> TLSReportPolicy:
    return TLSReportPolicy(
        policy_type=_cut(policy.policy_type, TLSReportPolicy, "policy_type"),
        policy_domain=_cut(policy.policy_domain.lower(), TLSReportPolicy, "policy_domain"),
        mx_host=_cut(",".join(policy.mx_host), TLSReportPolicy, "mx_host"),
        successful=_count(policy.successful),
        failed=_count(policy.failed),
        day=start.date(),
        failures=[_failure_row(detail) for detail in policy.failure_details],
    )


def _failure_row(detail: tls.FailureDetail) -> TLSReportFailure:
    return TLSReportFailure(
        result_type=_cut(detail.result_type, TLSReportFailure, "result_type"),
        sending_ip=_cut(detail.sending_mta_ip, TLSReportFailure, "sending_ip"),
        receiving_mx_hostname=_cut(detail.receiving_mx_hostname, TLSReportFailure, "receiving_mx_hostname"),
        receiving_ip=_cut(detail.receiving_ip, TLSReportFailure, "receiving_ip"),
        failed_sessions=_count(detail.failed_session_count),
        additional_information=_cut(
            detail.additional_information, TLSReportFailure, "additional_information"
        ),
        failure_reason_code=_cut(detail.failure_reason_code, TLSReportFailure, "failure_reason_code"),
    )


def _summary(row: DMARCReport | TLSReport) -> Summary:
    if isinstance(row, DMARCReport):
        kind: ReportKind = "dmarc"
        org, records, messages = row.org_name, row.record_count, row.message_count
    else:
        kind, org, records, messages = "tls", row.organization, row.policy_count, row.session_count
    return Summary(
        kind,
        row.id,
        row.reporter,
        org,
        row.domain,
        row.report_id,
        row.begin,
        row.end,
        row.imported,
        records,
        messages,
    )


def list_reports(
    session: Session, kind: ReportKind | None = None, domain: str | None = None, limit: int = DEFAULT_LIMIT
) -> list[Summary]:
    """The newest reports first (by their range's start), of one kind or both, about `domain` if given."""
    if domain:
        domain = ascii_domain(domain)  # as the parsers stored it: lowercase A-labels, no final dot
        if not domain:
            return []  # not a domain name: no report is about it
    found: list[Summary] = []
    if kind in (None, "dmarc"):
        query = select(DMARCReport)
        if domain:
            query = query.where(DMARCReport.domain == domain)
        found += map(_summary, session.scalars(query.order_by(DMARCReport.begin.desc()).limit(limit)))
    if kind in (None, "tls"):
        tls_query = select(TLSReport)
        if domain:
            about = exists().where(TLSReportPolicy.report_id == TLSReport.id)
            tls_query = tls_query.where(about.where(TLSReportPolicy.policy_domain == domain))
        found += map(_summary, session.scalars(tls_query.order_by(TLSReport.begin.desc()).limit(limit)))
    return sorted(found, key=lambda summary: summary.begin, reverse=True)[:limit]


def report_detail(session: Session, kind: ReportKind, ident: int) -> dict[str, Any] | None:
    """A stored report with its rows, as plain values (the CLI prints them or dumps them as JSON)."""
    if kind == "dmarc":
        row = session.get(DMARCReport, ident)
        if row is None:
            return None
        return asdict(_summary(row)) | {"records": [_columns(record) for record in row.records]}
    tls_row = session.get(TLSReport, ident)
    if tls_row is None:
        return None
    policies = [
        _columns(policy) | {"failures": list(map(_columns, policy.failures))} for policy in tls_row.policies
    ]
    return asdict(_summary(tls_row)) | {"policies": policies}


def _columns(row: DMARCReportRecord | TLSReportPolicy | TLSReportFailure) -> dict[str, Any]:
    """A child row's columns, without the keys that tie it to its parent."""
    hidden = {"id", "report_id", "policy_id", "domain", "day"}
    return {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key not in hidden}


# The dashboards (app/web/reports.py) read through these. Days are UTC days a report's range begins on,
# `since` and `until` inclusive.


@dataclass(frozen=True)
class DMARCDay:
    """Messages the reporters counted on one day: DMARC passed (aligned DKIM or SPF pass) or failed."""

    day: date
    passed: int
    failed: int


@dataclass(frozen=True)
class Source:
    """One sending IP as the reporters saw it: messages, and how many passed each aligned check."""

    source_ip: str
    messages: int
    dmarc_passed: int
    spf_aligned: int
    dkim_aligned: int
    reporters: tuple[str, ...]  # up to SOURCE_REPORTERS of them, most messages first


@dataclass(frozen=True)
class ReporterCount:
    reporter: str
    org_name: str
    reports: int
    messages: int
    last_end: datetime


@dataclass(frozen=True)
class TLSDay:
    day: date
    policy_type: str  # sts, tlsa, no-policy-found
    successful: int
    failed: int


@dataclass(frozen=True)
class TLSFailureCount:
    result_type: str
    receiving_mx_hostname: str
    failed_sessions: int
    reports: int


SOURCE_REPORTERS = 3


def report_domains(session: Session) -> list[str]:
    """Every domain a stored DMARC or TLS report is about, sorted."""
    dmarc_domains = session.scalars(select(DMARCReport.domain).distinct())
    tls_domains = session.scalars(select(TLSReportPolicy.policy_domain).distinct())
    return sorted(set(dmarc_domains) | set(tls_domains))


def _dmarc_in(domain: str, since: date, until: date) -> Any:
    return (
        (DMARCReportRecord.domain == domain)
        & (DMARCReportRecord.day >= since)
        & (DMARCReportRecord.day <= until)
    )


def _passed(column: Any) -> Any:
    """The record's count when `column` holds "pass", else 0."""
    return func.sum(case((column, DMARCReportRecord.count), else_=0))


def dmarc_days(session: Session, domain: str, since: date, until: date) -> list[DMARCDay]:
    """Per day with reports, the messages that passed and failed DMARC, oldest day first."""
    dmarc_pass = (DMARCReportRecord.dkim == "pass") | (DMARCReportRecord.spf == "pass")
    query = (
        select(DMARCReportRecord.day, _passed(dmarc_pass), func.sum(DMARCReportRecord.count))
        .where(_dmarc_in(domain, since, until))
        .group_by(DMARCReportRecord.day)
        .order_by(DMARCReportRecord.day)
    )
    return [
        DMARCDay(day, int(passed), int(total) - int(passed)) for day, passed, total in session.execute(query)
    ]


def top_sources(session: Session, domain: str, since: date, until: date, limit: int = 20) -> list[Source]:
    """The IPs that sent the most messages as `domain` in the period, most first."""
    dmarc_pass = (DMARCReportRecord.dkim == "pass") | (DMARCReportRecord.spf == "pass")
    total = func.sum(DMARCReportRecord.count)
    query = (
        select(
            DMARCReportRecord.source_ip,
            total,
            _passed(dmarc_pass),
            _passed(DMARCReportRecord.spf == "pass"),
            _passed(DMARCReportRecord.dkim == "pass"),
        )
        .where(_dmarc_in(domain, since, until))
        .group_by(DMARCReportRecord.source_ip)
        .order_by(total.desc(), DMARCReportRecord.source_ip)
        .limit(limit)
    )
    rows = session.execute(query).all()
    seen_by = _source_reporters(session, domain, since, until, [row[0] for row in rows])
    return [
        Source(ip, int(messages), int(passed), int(spf), int(dkim), seen_by.get(ip, ()))
        for ip, messages, passed, spf, dkim in rows
    ]


def _source_reporters(
    session: Session, domain: str, since: date, until: date, ips: list[str]
) -> dict[str, tuple[str, ...]]:
    if not ips:
        return {}
    total = func.sum(DMARCReportRecord.count)
    query = (
        select(DMARCReportRecord.source_ip, DMARCReport.reporter, total)
        .join(DMARCReport, DMARCReport.id == DMARCReportRecord.report_id)
        .where(_dmarc_in(domain, since, until) & DMARCReportRecord.source_ip.in_(ips))
        .group_by(DMARCReportRecord.source_ip, DMARCReport.reporter)
        .order_by(total.desc(), DMARCReport.reporter)
    )
    found: dict[str, list[str]] = {}
    for ip, reporter, _ in session.execute(query):
        names = found.setdefault(ip, [])
        if len(names) < SOURCE_REPORTERS:
            names.append(reporter)
    return {ip: tuple(names) for ip, names in found.items()}


def dmarc_reporters(session: Session, domain: str, since: date, until: date) -> list[ReporterCount]:
    """Who sent DMARC reports about `domain` in the period, most messages first."""
    start, stop = _day_start(since), _day_start(until + timedelta(days=1))
    begins = (DMARCReport.begin >= start) & (DMARCReport.begin < stop)
    messages = func.sum(DMARCReport.message_count)
    query = (
        select(
            DMARCReport.reporter,
            func.max(DMARCReport.org_name),
            func.count(),
            messages,
            func.max(DMARCReport.end),
        )
        .where((DMARCReport.domain == domain) & begins)
        .group_by(DMARCReport.reporter)
        .order_by(messages.desc(), DMARCReport.reporter)
    )
    return [ReporterCount(r, org, int(n), int(m), end) for r, org, n, m, end in session.execute(query)]


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _tls_in(domain: str, since: date, until: date) -> Any:
    return (
        (TLSReportPolicy.policy_domain == domain)
        & (TLSReportPolicy.day >= since)
        & (TLSReportPolicy.day <= until)
    )


def tls_days(session: Session, domain: str, since: date, until: date) -> list[TLSDay]:
    """Per day and policy type, the sessions that succeeded and failed, oldest day first."""
    query = (
        select(
            TLSReportPolicy.day,
            TLSReportPolicy.policy_type,
            func.sum(TLSReportPolicy.successful),
            func.sum(TLSReportPolicy.failed),
        )
        .where(_tls_in(domain, since, until))
        .group_by(TLSReportPolicy.day, TLSReportPolicy.policy_type)
        .order_by(TLSReportPolicy.day, TLSReportPolicy.policy_type)
    )
    return [TLSDay(day, kind, int(ok), int(failed)) for day, kind, ok, failed in session.execute(query)]


def tls_failures(
    session: Session, domain: str, since: date, until: date, limit: int = 50
) -> list[TLSFailureCount]:
    """Failed sessions by result type and receiving MX host, most first."""
    failed = func.sum(TLSReportFailure.failed_sessions)
    query = (
        select(
            TLSReportFailure.result_type,
            TLSReportFailure.receiving_mx_hostname,
            failed,
            func.count(func.distinct(TLSReportPolicy.report_id)),
        )
        .join(TLSReportPolicy, TLSReportPolicy.id == TLSReportFailure.policy_id)
        .where(_tls_in(domain, since, until))
        .group_by(TLSReportFailure.result_type, TLSReportFailure.receiving_mx_hostname)
        .order_by(failed.desc(), TLSReportFailure.result_type, TLSReportFailure.receiving_mx_hostname)
        .limit(limit)
    )
    return [
        TLSFailureCount(kind, mx, int(n), int(reports)) for kind, mx, n, reports in session.execute(query)
    ]


def report_raw(session: Session, kind: ReportKind, ident: int) -> bytes | None:
    """The report's document as it arrived (XML or JSON), or None when not kept (larger than RAW_CAP
    gzipped) or no such report."""
    model = DMARCReport if kind == "dmarc" else TLSReport
    packed = session.scalar(select(model.raw).where(model.id == ident))
    return gzip.decompress(packed) if packed is not None else None
