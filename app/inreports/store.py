"""Owner of the incoming report tables (app/models/inreports.py): stores a parsed report once per
(reporter, report id), and reads them back for `postwarden reports` and the dashboards.

Reporter text is cut to its column's size here, so a long value cannot fail the insert; what it says
is shown escaped by whoever prints it (app/cli/common.py `echo`)."""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import BigInteger, Table, case, exists, func, insert, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.message import ascii_domain
from app.db import upsert_insert
from app.inreports import dmarc, tls
from app.inreports.read import Report
from app.models.base import utcnow
from app.models.inreport_rollups import (
    DMARCDayTotal,
    DMARCReporterDay,
    DMARCSourceReporterTotal,
    DMARCSourceTotal,
    TLSFailureDay,
    TLSPolicyDay,
)
from app.models.inreports import DMARCReport, DMARCReportRecord, TLSReport, TLSReportFailure, TLSReportPolicy

ReportKind = Literal["dmarc", "tls"]
# Raw documents larger than this, gzipped, are not kept (their parsed rows are).
RAW_CAP = 1024 * 1024
MAX_COUNT = 2**63 - 1
DEFAULT_LIMIT = 100
DMARC_REPORTS: Table = DMARCReport.__table__
DMARC_RECORDS: Table = DMARCReportRecord.__table__
TLS_REPORTS: Table = TLSReport.__table__
TLS_POLICIES: Table = TLSReportPolicy.__table__
TLS_FAILURES: Table = TLSReportFailure.__table__
# Looked up once: a report may hold 100,000 records.
RECORD_LENGTHS = {column.key: getattr(column.type, "length", 0) for column in DMARC_RECORDS.columns}


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
    """Store `report` (parsed from `raw`) and add it to the dashboards' sums, unless a report with its
    reporter and id is stored already; a concurrent import of the same report loses at the unique
    constraint and answers Duplicate (its savepoint, sums included, rolled back)."""
    if isinstance(report, dmarc.AggregateReport):
        model: type[DMARCReport | TLSReport] = DMARCReport
        reporter = _cut((report.metadata.email or report.metadata.org_name).lower(), DMARCReport, "reporter")
        report_id = _cut(report.metadata.report_id, DMARCReport, "report_id")
    else:
        model = TLSReport
        reporter = _cut((report.contact_info or report.organization_name).lower(), TLSReport, "reporter")
        report_id = _cut(report.report_id, TLSReport, "report_id")
    existing = _stored_as(session, model, reporter, report_id)
    if existing is None:
        try:
            with session.begin_nested():
                if isinstance(report, dmarc.AggregateReport):
                    return Stored(_insert_dmarc(session, report, raw, reporter, report_id))
                return Stored(_insert_tls(session, report, raw, reporter, report_id))
        except IntegrityError:
            existing = _stored_as(session, model, reporter, report_id)
            if existing is None:  # a failure other than the unique constraint
                raise
    return Duplicate(_summary(existing))


def _stored_as(
    session: Session, model: type[DMARCReport | TLSReport], reporter: str, report_id: str
) -> DMARCReport | TLSReport | None:
    """The stored report with this reporter and report id."""
    if model is DMARCReport:
        same = (DMARCReport.reporter == reporter) & (DMARCReport.report_id == report_id)
        return session.scalars(select(DMARCReport).where(same)).first()
    tls_same = (TLSReport.reporter == reporter) & (TLSReport.report_id == report_id)
    return session.scalars(select(TLSReport).where(tls_same)).first()


def _insert_dmarc(
    session: Session, report: dmarc.AggregateReport, raw: bytes, reporter: str, report_id: str
) -> Summary:
    """Insert the report, its records (one executemany) and its sums; the stored report's summary."""
    meta = report.metadata
    domain = _cut(report.policy.domain.lower(), DMARCReport, "domain")
    records = [_record_values(record, domain, meta.begin.date()) for record in report.records]
    values: dict[str, Any] = {
        "reporter": reporter,
        "org_name": _cut(meta.org_name, DMARCReport, "org_name"),
        "email": _cut(meta.email, DMARCReport, "email"),
        "report_id": report_id,
        "domain": domain,
        "begin": meta.begin,
        "end": meta.end,
        "imported": utcnow(),
        "record_count": len(records),
        "message_count": _count(sum(record.count for record in report.records)),
        "raw_size": len(raw),
        "raw": _raw(raw),
    }
    ident = _insert_returning_id(session, DMARC_REPORTS, values)
    if records:
        session.execute(insert(DMARC_RECORDS), [record | {"report_id": ident} for record in records])
    _add_dmarc_totals(session, values, records)
    return Summary(
        "dmarc",
        ident,
        reporter,
        values["org_name"],
        domain,
        report_id,
        meta.begin,
        meta.end,
        values["imported"],
        len(records),
        values["message_count"],
    )


def _insert_returning_id(session: Session, table: Table, values: dict[str, Any]) -> int:
    ident: int = session.execute(insert(table).values(values).returning(table.c.id)).scalar_one()
    return ident


def _record_values(record: dmarc.Record, domain: str, day: date) -> dict[str, Any]:
    """A record's row (without its report's id), every reporter text cut to its column."""
    results = {
        "dkim": [[r.domain, r.selector, r.result] for r in record.dkim_results],
        "spf": [[r.domain, r.scope, r.result] for r in record.spf_results],
        "reasons": [[r.type, r.comment] for r in record.reasons],
    }
    return {
        "domain": domain,
        "day": day,
        "source_ip": record.source_ip[: RECORD_LENGTHS["source_ip"]],
        "count": _count(record.count),
        "disposition": record.disposition[: RECORD_LENGTHS["disposition"]],
        "dkim": record.dkim[: RECORD_LENGTHS["dkim"]],
        "spf": record.spf[: RECORD_LENGTHS["spf"]],
        "header_from": record.header_from.lower()[: RECORD_LENGTHS["header_from"]],
        "auth_results": _fitting_json(results, RECORD_LENGTHS["auth_results"]),
    }


def _insert_tls(
    session: Session, report: tls.TLSReport, raw: bytes, reporter: str, report_id: str
) -> Summary:
    """Insert the report, its policies and their failures, and its sums; the stored report's summary."""
    first = report.policies[0].policy_domain.lower() if report.policies else ""
    values: dict[str, Any] = {
        "reporter": reporter,
        "organization": _cut(report.organization_name, TLSReport, "organization"),
        "contact": _cut(report.contact_info, TLSReport, "contact"),
        "report_id": report_id,
        "domain": _cut(first, TLSReport, "domain"),
        "begin": report.start,
        "end": report.end,
        "imported": utcnow(),
        "policy_count": len(report.policies),
        "session_count": _count(sum(p.successful + p.failed for p in report.policies)),
        "raw_size": len(raw),
        "raw": _raw(raw),
    }
    ident = _insert_returning_id(session, TLS_REPORTS, values)
    stored: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for policy in report.policies:
        row = _policy_values(policy, report.start.date()) | {"report_id": ident}
        failures = [_failure_values(detail) for detail in policy.failure_details]
        policy_id = _insert_returning_id(session, TLS_POLICIES, row)
        if failures:
            session.execute(
                insert(TLS_FAILURES), [failure | {"policy_id": policy_id} for failure in failures]
            )
        stored.append((row, failures))
    _add_tls_totals(session, report.start.date(), stored)
    return Summary(
        "tls",
        ident,
        reporter,
        values["organization"],
        values["domain"],
        report_id,
        report.start,
        report.end,
        values["imported"],
        len(report.policies),
        values["session_count"],
    )


def _policy_values(policy: tls.PolicyReport, day: date) -> dict[str, Any]:
    return {
        "policy_type": _cut(policy.policy_type, TLSReportPolicy, "policy_type"),
        "policy_domain": _cut(policy.policy_domain.lower(), TLSReportPolicy, "policy_domain"),
        "mx_host": _cut(",".join(policy.mx_host), TLSReportPolicy, "mx_host"),
        "successful": _count(policy.successful),
        "failed": _count(policy.failed),
        "day": day,
    }


def _failure_values(detail: tls.FailureDetail) -> dict[str, Any]:
    return {
        "result_type": _cut(detail.result_type, TLSReportFailure, "result_type"),
        "sending_ip": _cut(detail.sending_mta_ip, TLSReportFailure, "sending_ip"),
        "receiving_mx_hostname": _cut(
            detail.receiving_mx_hostname, TLSReportFailure, "receiving_mx_hostname"
        ),
        "receiving_ip": _cut(detail.receiving_ip, TLSReportFailure, "receiving_ip"),
        "failed_sessions": _count(detail.failed_session_count),
        "additional_information": _cut(
            detail.additional_information, TLSReportFailure, "additional_information"
        ),
        "failure_reason_code": _cut(detail.failure_reason_code, TLSReportFailure, "failure_reason_code"),
    }


# The dashboards' sums (app/models/inreport_rollups.py), added to in the storing transaction. Each is
# added as one executemany upsert of rows summed per key first (a key once per statement, as
# PostgreSQL's ON CONFLICT needs), in key order so that concurrent imports lock rows in one order.
DMARC_SUMS = ("messages", "dmarc_passed", "spf_aligned", "dkim_aligned")
SUM_CAP = 2**50  # ~10^15 messages: 8,000 rows of it still sum within a BIGINT


def _add(
    session: Session, model: Any, keys: tuple[str, ...], rows: list[dict[str, Any]], **merge: Any
) -> None:
    """Upsert `rows` into `model`'s table: on an existing key its counts are added (up to their cap),
    its other columns merged by the expression `merge[column](table column, new value)`."""
    if not rows:
        return
    table: Table = model.__table__
    statement = upsert_insert(session, table)
    caps = {
        column.key: _cap(column)
        for column in table.columns
        if column.key not in keys and column.key not in merge
    }
    update = {key: _added(table.c[key], statement.excluded[key], cap) for key, cap in caps.items()}
    update |= {key: combine(table.c[key], statement.excluded[key]) for key, combine in merge.items()}
    for row in rows:
        row.update({key: min(row[key], cap) for key, cap in caps.items()})
    rows.sort(key=lambda row: tuple(row[key] for key in keys))
    session.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=update), rows)


def _cap(column: Any) -> int:
    """The most a count column holds: reporters choose the counts, and a sum that overflowed would
    fail every later report with the same key (and, on SQLite, the dashboards' SUM over the rows).
    A BigInteger's cap leaves room for summing thousands of rows at read time."""
    return SUM_CAP if isinstance(column.type, BigInteger) else 2**31 - 1


def _added(column: Any, new: Any, cap: int) -> Any:
    return case((column > cap - new, cap), else_=column + new)


def _greatest(column: Any, new: Any) -> Any:
    return case((new > column, new), else_=column)


def _add_dmarc_totals(session: Session, report: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Add a stored DMARC report (its row's values) and its records to the sums."""
    domain, reporter, day = report["domain"], report["reporter"], report["begin"].date()
    by_ip: dict[str, list[int]] = {}
    for record in records:
        count, dkim, spf = record["count"], record["dkim"] == "pass", record["spf"] == "pass"
        sums = by_ip.setdefault(record["source_ip"], [0, 0, 0, 0])
        sums[0] += count
        sums[1] += count if dkim or spf else 0
        sums[2] += count if spf else 0
        sums[3] += count if dkim else 0
    reporter_day = {"domain": domain, "day": day, "reporter": reporter, "org_name": report["org_name"]}
    reporter_day |= {"reports": 1, "messages": report["message_count"], "last_end": report["end"]}
    merge = {"org_name": _greatest, "last_end": _greatest}
    _add(session, DMARCReporterDay, ("domain", "day", "reporter"), [reporter_day], **merge)
    if not records:
        return
    total, passed = sum(sums[0] for sums in by_ip.values()), sum(sums[1] for sums in by_ip.values())
    day_row = {"domain": domain, "day": day, "passed": passed, "failed": total - passed}
    _add(session, DMARCDayTotal, ("domain", "day"), [day_row])
    spans = (("d", day), ("m", day.replace(day=1)))
    sources = [
        {
            "domain": domain,
            "span": span,
            "start": start,
            "source_ip": ip,
            **dict(zip(DMARC_SUMS, sums, strict=True)),
        }
        for span, start in spans
        for ip, sums in by_ip.items()
    ]
    _add(session, DMARCSourceTotal, ("domain", "source_ip", "span", "start"), sources)
    seen_by = [
        {
            "domain": domain,
            "source_ip": ip,
            "span": span,
            "start": start,
            "reporter": reporter,
            "messages": sums[0],
        }
        for span, start in spans
        for ip, sums in by_ip.items()
    ]
    _add(session, DMARCSourceReporterTotal, ("domain", "source_ip", "span", "start", "reporter"), seen_by)


def _add_tls_totals(
    session: Session, day: date, policies: list[tuple[dict[str, Any], list[dict[str, Any]]]]
) -> None:
    """Add a stored TLS report's policies (their rows' values, with their failures') to the sums;
    the report counts once for each (policy domain, result type, MX host) it tells of."""
    sessions: dict[tuple[str, str], list[int]] = {}
    failed: dict[tuple[str, str, str], int] = {}
    for policy, failures in policies:
        sums = sessions.setdefault((policy["policy_domain"], policy["policy_type"]), [0, 0])
        sums[0] += policy["successful"]
        sums[1] += policy["failed"]
        for failure in failures:
            key = (policy["policy_domain"], failure["result_type"], failure["receiving_mx_hostname"])
            failed[key] = failed.get(key, 0) + failure["failed_sessions"]
    policy_days = [
        {"policy_domain": domain, "day": day, "policy_type": kind, "successful": ok, "failed": bad}
        for (domain, kind), (ok, bad) in sessions.items()
    ]
    _add(session, TLSPolicyDay, ("policy_domain", "day", "policy_type"), policy_days)
    failure_days = [
        {"policy_domain": domain, "day": day, "result_type": kind, "receiving_mx_hostname": mx}
        | {"failed_sessions": count, "reports": 1}
        for (domain, kind, mx), count in failed.items()
    ]
    keys = ("policy_domain", "day", "result_type", "receiving_mx_hostname")
    _add(session, TLSFailureDay, keys, failure_days)


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
MOST_CANDIDATES = 1_000  # top_sources sums at most this many IPs one by one, else all of them


def report_domains(session: Session) -> list[str]:
    """Every domain a stored DMARC or TLS report is about, sorted."""
    dmarc_domains = session.scalars(select(DMARCReport.domain).distinct())
    tls_domains = session.scalars(select(TLSReportPolicy.policy_domain).distinct())
    return sorted(set(dmarc_domains) | set(tls_domains))


def dmarc_days(session: Session, domain: str, since: date, until: date) -> list[DMARCDay]:
    """Per day with reports, the messages that passed and failed DMARC, oldest day first."""
    t = DMARCDayTotal
    query = (
        select(t.day, t.passed, t.failed)
        .where((t.domain == domain) & (t.day >= since) & (t.day <= until))
        .order_by(t.day)
    )
    return [DMARCDay(day, int(passed), int(failed)) for day, passed, failed in session.execute(query)]


def _spans(since: date, until: date) -> list[tuple[str, date, date]]:
    """The period as sums are kept: (span, first start, last start) for its whole months ("m") and
    the days before and after them ("d"); a year is read as some 12 months and 30 days, not 365 days."""
    first = since if since.day == 1 else _month_after(since)
    stop = (until + timedelta(days=1)).replace(day=1)  # the first day not in a whole month of the period
    if first >= stop:
        return [("d", since, until)] if since <= until else []
    spans = [("m", first, stop - timedelta(days=1))]
    if since < first:
        spans.append(("d", since, first - timedelta(days=1)))
    if stop <= until:
        spans.append(("d", stop, until))
    return spans


def _month_after(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


def _in_spans(model: Any, spans: list[tuple[str, date, date]], *where: Any) -> Any:
    """`model`'s rows (where `where` holds) in the spans, one range of its key each."""
    arms = [
        select(model).where(model.span == span, model.start >= first, model.start <= last, *where)
        for span, first, last in spans
    ]
    return union_all(*arms).subquery()


def _units(spans: list[tuple[str, date, date]]) -> int:
    """How many rows (days and months) one IP can have in the spans."""
    count = 0
    for span, first, last in spans:
        if span == "d":
            count += (last - first).days + 1
        else:
            count += (last.year - first.year) * 12 + last.month - first.month + 1
    return count


def top_sources(session: Session, domain: str, since: date, until: date, limit: int = 20) -> list[Source]:
    """The IPs that sent the most messages as `domain` in the period, most first."""
    spans = _spans(since, until)
    if not spans or limit <= 0:
        return []
    _serial_plans(session)
    rows = _top_source_sums(session, domain, spans, limit)
    seen_by = _source_reporters(session, domain, spans, [row[0] for row in rows])
    return [
        Source(ip, int(messages), int(passed), int(spf), int(dkim), seen_by.get(ip, ()))
        for ip, messages, passed, spf, dkim in rows
    ]


def _serial_plans(session: Session) -> None:
    """No parallel workers for the rest of the transaction, on PostgreSQL: it plans them for the sums
    of a few IPs (it expects an IN list to match ten times the rows it does), and starting them costs
    more than reading the rows (44 ms for 7 ms of work on a busy host). And a plan per call: psycopg
    prepares a statement run five times, after which PostgreSQL may keep one generic plan, and the plan
    good for 30 days' rows is not the one for a year's (230 ms instead of 70 ms for the year)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
        session.connection().exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")


def _top_source_sums(
    session: Session, domain: str, spans: list[tuple[str, date, date]], limit: int
) -> list[Any]:
    """The sums of the `limit` IPs with the most messages, exactly, reading only the rows that can
    matter (a year holds ~200,000 IP-months, most from IPs seen a few times). Any `limit` IPs (the
    seeds: those of the largest rows of the months the period touches) give a floor: the top IPs have
    at least the least of the seeds' totals, so at least floor / units in one of their rows. Summed
    are the IPs with such a row; when too many have one (no IP stands out), all of them."""
    seeds = _ips_with(session, domain, [_months_of(spans)], least=0, rows_per_unit=limit)
    sums = _source_sums(session, domain, spans, seeds) if len(seeds) >= limit else []
    if len(sums) >= limit:
        # An int: PostgreSQL's SUM is NUMERIC, and a NUMERIC bound would keep the index out of the filter.
        floor = int(sums[limit - 1][1])
        candidates = _ips_with(session, domain, spans, least=-(-floor // _units(spans)))
        if len(candidates) <= MOST_CANDIDATES:
            return _source_sums(session, domain, spans, candidates)[:limit]
    return _source_sums(session, domain, spans, limit=limit)


def _months_of(spans: list[tuple[str, date, date]]) -> tuple[str, date, date]:
    """The span of the months the spans touch: their largest rows are the likely top IPs', and they are
    found by the size index reading little beyond them (a few days' rows would be found among every
    day's of the whole history)."""
    first = min(first for _, first, _ in spans)
    last = max(last for _, _, last in spans)
    return ("m", first.replace(day=1), last.replace(day=1))


def _ips_with(
    session: Session,
    domain: str,
    spans: list[tuple[str, date, date]],
    least: int,
    rows_per_unit: int | None = None,
) -> set[str]:
    """The IPs with a row of at least `least` messages in the spans; with `rows_per_unit`, only those of
    each span's largest rows_per_unit x units rows (an IP has one row per unit: so that many distinct
    IPs, when the span has them). A statement per span: as one UNION ALL, PostgreSQL plans parallel
    workers, whose start costs more than the spans' rows."""
    t = DMARCSourceTotal
    found: set[str] = set()
    for span in spans:
        name, first, last = span
        query = select(t.source_ip).where(
            t.domain == domain, t.span == name, t.messages >= least, t.start >= first, t.start <= last
        )
        if rows_per_unit is not None:
            query = query.order_by(t.messages.desc()).limit(rows_per_unit * _units([span]))
        found.update(session.scalars(query))
    return found


def _source_sums(
    session: Session,
    domain: str,
    spans: list[tuple[str, date, date]],
    ips: set[str] | None = None,
    limit: int | None = None,
) -> list[Any]:
    """(IP, messages, DMARC passed, SPF aligned, DKIM aligned) over the spans, of `ips` or of every IP,
    most messages first."""
    t = DMARCSourceTotal
    rows_in = _in_spans(t, spans, t.domain == domain, *([] if ips is None else [t.source_ip.in_(ips)]))
    total = func.sum(rows_in.c.messages)
    query = (
        select(rows_in.c.source_ip, total, *(func.sum(rows_in.c[name]) for name in DMARC_SUMS[1:]))
        .group_by(rows_in.c.source_ip)
        .order_by(total.desc(), rows_in.c.source_ip)
        .limit(limit)
    )
    return list(session.execute(query))


def _source_reporters(
    session: Session, domain: str, spans: list[tuple[str, date, date]], ips: list[str]
) -> dict[str, tuple[str, ...]]:
    if not ips:
        return {}
    t = DMARCSourceReporterTotal
    rows_in = _in_spans(t, spans, t.domain == domain, t.source_ip.in_(ips))
    total = func.sum(rows_in.c.messages)
    query = (
        select(rows_in.c.source_ip, rows_in.c.reporter, total)
        .group_by(rows_in.c.source_ip, rows_in.c.reporter)
        .order_by(total.desc(), rows_in.c.reporter)
    )
    found: dict[str, list[str]] = {}
    for ip, reporter, _ in session.execute(query):
        names = found.setdefault(ip, [])
        if len(names) < SOURCE_REPORTERS:
            names.append(reporter)
    return {ip: tuple(names) for ip, names in found.items()}


def dmarc_reporters(session: Session, domain: str, since: date, until: date) -> list[ReporterCount]:
    """Who sent DMARC reports about `domain` in the period, most messages first."""
    t = DMARCReporterDay
    messages = func.sum(t.messages)
    query = (
        select(t.reporter, func.max(t.org_name), func.sum(t.reports), messages, func.max(t.last_end))
        .where((t.domain == domain) & (t.day >= since) & (t.day <= until))
        .group_by(t.reporter)
        .order_by(messages.desc(), t.reporter)
    )
    return [ReporterCount(r, org, int(n), int(m), end) for r, org, n, m, end in session.execute(query)]


def tls_days(session: Session, domain: str, since: date, until: date) -> list[TLSDay]:
    """Per day and policy type, the sessions that succeeded and failed, oldest day first."""
    t = TLSPolicyDay
    query = (
        select(t.day, t.policy_type, t.successful, t.failed)
        .where((t.policy_domain == domain) & (t.day >= since) & (t.day <= until))
        .order_by(t.day, t.policy_type)
    )
    return [TLSDay(day, kind, int(ok), int(failed)) for day, kind, ok, failed in session.execute(query)]


def tls_failures(
    session: Session, domain: str, since: date, until: date, limit: int = 50
) -> list[TLSFailureCount]:
    """Failed sessions by result type and receiving MX host, most first."""
    t = TLSFailureDay
    failed = func.sum(t.failed_sessions)
    query = (
        select(t.result_type, t.receiving_mx_hostname, failed, func.sum(t.reports))
        .where((t.policy_domain == domain) & (t.day >= since) & (t.day <= until))
        .group_by(t.result_type, t.receiving_mx_hostname)
        .order_by(failed.desc(), t.result_type, t.receiving_mx_hostname)
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
