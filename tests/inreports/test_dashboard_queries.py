"""The dashboards' queries (app/inreports/store.py) on SQLite and PostgreSQL: what each answers for
hand-built reports, and that the sums they read equal a GROUP BY over the stored rows after many
reports (days, months and the days at a period's edges)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.db import session_scope
from app.inreports import store
from app.inreports.dmarc import AggregateReport, Metadata, PolicyPublished, Record
from app.inreports.tls import FailureDetail, PolicyReport, TLSReport
from app.migrate import downgrade_database, upgrade_database
from app.models import DMARCReport, DMARCReportRecord, TLSReportFailure, TLSReportPolicy
from tests.inreports.samples import RFC9990_REPORT

DOMAIN = "example.com"
RAW = b"<feedback/>"


@pytest.fixture
def session(url: str) -> Iterator[Session]:
    with session_scope(url) as opened:
        yield opened


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def record(ip: str, count: int, dkim: str = "pass", spf: str = "pass") -> Record:
    return Record(source_ip=ip, count=count, disposition="none", dkim=dkim, spf=spf, header_from=DOMAIN)


def aggregate(
    reporter: str, report_id: str, day: date, records: list[Record], domain: str = DOMAIN, org: str = ""
) -> AggregateReport:
    meta = Metadata(org or reporter, reporter, report_id, at(day), at(day) + timedelta(hours=23))
    return AggregateReport(meta, PolicyPublished(domain), tuple(records))


def tls_report(reporter: str, report_id: str, day: date, policies: list[PolicyReport]) -> TLSReport:
    return TLSReport(reporter, at(day), at(day) + timedelta(hours=23), reporter, report_id, tuple(policies))


def failure(kind: str, mx: str, sessions: int) -> FailureDetail:
    return FailureDetail(kind, sessions, receiving_mx_hostname=mx)


def test_dmarc_days_split_pass_and_fail_within_the_period(session: Session) -> None:
    d1, d2, d3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
    records = [record("192.0.2.1", 10), record("192.0.2.2", 3, spf="fail"), record("192.0.2.3", 2, "fail")]
    store.store_report(session, aggregate("a@r.example", "1", d1, records), RAW)
    store.store_report(
        session, aggregate("b@r.example", "1", d2, [record("192.0.2.9", 7, "fail", "fail")]), RAW
    )
    store.store_report(session, aggregate("b@r.example", "2", d3, [record("192.0.2.9", 1)]), RAW)
    store.store_report(
        session, aggregate("b@r.example", "3", d2, [record("192.0.2.9", 5)], "other.example"), RAW
    )
    # dkim or spf passing: DMARC passed; both failing: failed.
    assert store.dmarc_days(session, DOMAIN, d1, d3) == [
        store.DMARCDay(d1, 15, 0),
        store.DMARCDay(d2, 0, 7),
        store.DMARCDay(d3, 1, 0),
    ]
    assert store.dmarc_days(session, DOMAIN, d2, d2) == [store.DMARCDay(d2, 0, 7)]
    assert store.dmarc_days(session, DOMAIN, d3 + timedelta(days=1), d3 + timedelta(days=9)) == []
    assert store.report_domains(session) == [DOMAIN, "other.example"]


def test_a_duplicate_report_is_counted_once(session: Session) -> None:
    day = date(2026, 3, 1)
    report = aggregate("a@r.example", "same", day, [record("192.0.2.1", 10), record("192.0.2.1", 4, "fail")])
    first = store.store_report(session, report, RAW)
    again = store.store_report(session, report, RAW)
    assert isinstance(first, store.Stored) and isinstance(again, store.Duplicate)
    assert store.dmarc_days(session, DOMAIN, day, day) == [store.DMARCDay(day, 14, 0)]
    [source] = store.top_sources(session, DOMAIN, day, day)
    assert (source.messages, source.dkim_aligned, source.spf_aligned) == (14, 10, 14)
    [reporter] = store.dmarc_reporters(session, DOMAIN, day, day)
    assert (reporter.reports, reporter.messages) == (1, 14)


def test_top_sources_order_limit_alignment_and_reporters(session: Session) -> None:
    day = date(2026, 5, 10)
    for n, reporter in enumerate(("big@r.example", "mid@r.example", "small@r.example", "tiny@r.example")):
        records = [record("192.0.2.1", 100 - 20 * n), record("2001:db8::1", 50, "fail", "pass")]
        records += [record("192.0.2.7", 50 if n == 0 else 0, "fail", "fail")]
        store.store_report(session, aggregate(reporter, "r", day, records), RAW)
    sources = store.top_sources(session, DOMAIN, day, day)
    assert [(s.source_ip, s.messages) for s in sources] == [
        ("192.0.2.1", 100 + 80 + 60 + 40),
        ("2001:db8::1", 200),
        ("192.0.2.7", 50),
    ]
    top, second, third = sources
    assert (top.dmarc_passed, top.spf_aligned, top.dkim_aligned) == (280, 280, 280)
    assert (second.dmarc_passed, second.spf_aligned, second.dkim_aligned) == (200, 200, 0)
    assert (third.dmarc_passed, third.spf_aligned, third.dkim_aligned) == (0, 0, 0)
    # Up to three reporters, most messages first; a tie between reporters goes by name.
    assert top.reporters == ("big@r.example", "mid@r.example", "small@r.example")
    assert second.reporters == ("big@r.example", "mid@r.example", "small@r.example")
    assert third.reporters[0] == "big@r.example"
    assert store.top_sources(session, DOMAIN, day, day, limit=1) == [top]
    assert store.top_sources(session, DOMAIN, day + timedelta(days=1), day + timedelta(days=40)) == []
    assert store.top_sources(session, DOMAIN, day, day - timedelta(days=1)) == []


def test_top_sources_over_months_and_their_edges(session: Session) -> None:
    """Jan 20 to Apr 10: whole February and March, and the days at both ends, each counted once."""
    days = [date(2026, 1, 19), date(2026, 1, 20), date(2026, 2, 1), date(2026, 3, 31)]
    days += [date(2026, 4, 10), date(2026, 4, 11)]
    for n, day in enumerate(days):
        store.store_report(session, aggregate("a@r.example", str(n), day, [record("192.0.2.1", 10**n)]), RAW)
    [source] = store.top_sources(session, DOMAIN, date(2026, 1, 20), date(2026, 4, 10))
    assert source.messages == 10 + 100 + 1000 + 10000
    [whole] = store.top_sources(session, DOMAIN, date(2026, 2, 1), date(2026, 3, 31))
    assert whole.messages == 100 + 1000


def test_top_sources_of_days_the_months_largest_ips_did_not_send_on(session: Session) -> None:
    """The seeds come from the month's largest rows: when they sent nothing in the period, the period's
    own IPs are still found (the seeds give no floor)."""
    early, late = date(2026, 6, 2), date(2026, 6, 20)
    big = [record(f"192.0.2.{n}", 1000) for n in range(1, 4)]
    store.store_report(session, aggregate("a@r.example", "1", early, big), RAW)
    small = [record("198.51.100.1", 5), record("198.51.100.2", 7)]
    store.store_report(session, aggregate("a@r.example", "2", late, small), RAW)
    expected = [("198.51.100.2", 7), ("198.51.100.1", 5)]
    for limit in (1, 2, 3):
        found = store.top_sources(session, DOMAIN, late, late, limit)
        assert [(s.source_ip, s.messages) for s in found] == expected[:limit]


def test_reporters_count_reports_and_messages(session: Session) -> None:
    d1, d2 = date(2026, 6, 1), date(2026, 6, 2)
    store.store_report(session, aggregate("a@r.example", "1", d1, [record("192.0.2.1", 5)], org="A Org"), RAW)
    store.store_report(session, aggregate("a@r.example", "2", d2, [record("192.0.2.1", 6)], org="A Org"), RAW)
    store.store_report(
        session, aggregate("b@r.example", "1", d2, [record("192.0.2.1", 20)], org="B Org"), RAW
    )
    assert store.dmarc_reporters(session, DOMAIN, d1, d2) == [
        store.ReporterCount("b@r.example", "B Org", 1, 20, at(d2) + timedelta(hours=23)),
        store.ReporterCount("a@r.example", "A Org", 2, 11, at(d2) + timedelta(hours=23)),
    ]
    assert [r.reports for r in store.dmarc_reporters(session, DOMAIN, d1, d1)] == [1]


def test_tls_days_and_failures(session: Session) -> None:
    d1, d2 = date(2026, 7, 1), date(2026, 7, 2)
    mx = "mx1.example.com"
    twice = [failure("certificate-expired", mx, 3), failure("certificate-expired", mx, 4)]
    policies = [
        PolicyReport("sts", DOMAIN, 100, 7, failure_details=tuple(twice)),
        PolicyReport("tlsa", DOMAIN, 50, 0),
        PolicyReport(
            "sts", "other.example", 9, 9, failure_details=(failure("starttls-not-supported", mx, 9),)
        ),
    ]
    store.store_report(session, tls_report("t@r.example", "1", d1, policies), RAW)
    second = [PolicyReport("sts", DOMAIN, 10, 1, failure_details=(failure("validation-failure", mx, 1),))]
    store.store_report(session, tls_report("t@r.example", "2", d2, [*second, second[0]]), RAW)
    store.store_report(session, tls_report("t@r.example", "2", d2, second), RAW)  # a duplicate
    assert store.tls_days(session, DOMAIN, d1, d2) == [
        store.TLSDay(d1, "sts", 100, 7),
        store.TLSDay(d1, "tlsa", 50, 0),
        store.TLSDay(d2, "sts", 20, 2),
    ]
    # A report counts once per (result type, MX host), however many of its details name them.
    assert store.tls_failures(session, DOMAIN, d1, d2) == [
        store.TLSFailureCount("certificate-expired", mx, 7, 1),
        store.TLSFailureCount("validation-failure", mx, 2, 1),
    ]
    assert store.tls_failures(session, DOMAIN, d1, d2, limit=1) == [
        store.TLSFailureCount("certificate-expired", mx, 7, 1)
    ]
    assert store.tls_failures(session, DOMAIN, d2, d2) == [
        store.TLSFailureCount("validation-failure", mx, 2, 1)
    ]
    assert store.report_domains(session) == [DOMAIN, "other.example"]


def test_report_raw_is_the_document_as_it_arrived(session: Session) -> None:
    stored = store.store_report(session, aggregate("a@r.example", "1", date(2026, 1, 1), []), RFC9990_REPORT)
    assert store.report_raw(session, "dmarc", stored.summary.id) == RFC9990_REPORT
    assert store.report_raw(session, "tls", stored.summary.id) is None
    # A report without records is listed among the reporters but adds no day.
    assert store.dmarc_days(session, DOMAIN, date(2026, 1, 1), date(2026, 1, 1)) == []
    assert [
        r.reports for r in store.dmarc_reporters(session, DOMAIN, date(2026, 1, 1), date(2026, 1, 1))
    ] == [1]


# What the queries would answer by GROUP BY over the stored rows, as the contract was first written.


def _records_in(domain: str, since: date, until: date) -> Any:
    r = DMARCReportRecord
    return (r.domain == domain) & (r.day >= since) & (r.day <= until)


def _passed_sum(condition: Any) -> Any:
    return func.sum(case((condition, DMARCReportRecord.count), else_=0))


def grouped_days(session: Session, domain: str, since: date, until: date) -> list[store.DMARCDay]:
    r = DMARCReportRecord
    passed = _passed_sum((r.dkim == "pass") | (r.spf == "pass"))
    query = select(r.day, passed, func.sum(r.count)).where(_records_in(domain, since, until)).group_by(r.day)
    return [store.DMARCDay(d, int(p), int(t) - int(p)) for d, p, t in session.execute(query.order_by(r.day))]


def grouped_sources(
    session: Session, domain: str, since: date, until: date, limit: int
) -> list[store.Source]:
    r = DMARCReportRecord
    total = func.sum(r.count)
    sums = (_passed_sum((r.dkim == "pass") | (r.spf == "pass")), _passed_sum(r.spf == "pass"))
    query = (
        select(r.source_ip, total, *sums, _passed_sum(r.dkim == "pass"))
        .where(_records_in(domain, since, until))
        .group_by(r.source_ip)
        .order_by(total.desc(), r.source_ip)
        .limit(limit)
    )
    rows = session.execute(query).all()
    by = (
        select(r.source_ip, DMARCReport.reporter, total)
        .join(DMARCReport, DMARCReport.id == r.report_id)
        .where(_records_in(domain, since, until))
        .group_by(r.source_ip, DMARCReport.reporter)
        .order_by(total.desc(), DMARCReport.reporter)
    )
    seen: dict[str, list[str]] = {}
    for ip, reporter, _ in session.execute(by):
        seen.setdefault(ip, []).append(reporter)
    return [
        store.Source(ip, int(m), int(p), int(s), int(d), tuple(seen[ip][: store.SOURCE_REPORTERS]))
        for ip, m, p, s, d in rows
    ]


def grouped_reporters(session: Session, domain: str, since: date, until: date) -> list[store.ReporterCount]:
    begins = (DMARCReport.begin >= at(since)) & (DMARCReport.begin < at(until + timedelta(days=1)))
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
    return [store.ReporterCount(r, o, int(n), int(m), e) for r, o, n, m, e in session.execute(query)]


def grouped_tls(session: Session, domain: str, since: date, until: date) -> tuple[list[Any], list[Any]]:
    p, f = TLSReportPolicy, TLSReportFailure
    within = (p.policy_domain == domain) & (p.day >= since) & (p.day <= until)
    days = (
        select(p.day, p.policy_type, func.sum(p.successful), func.sum(p.failed))
        .where(within)
        .group_by(p.day, p.policy_type)
        .order_by(p.day, p.policy_type)
    )
    failed = func.sum(f.failed_sessions)
    failures = (
        select(f.result_type, f.receiving_mx_hostname, failed, func.count(func.distinct(p.report_id)))
        .join(p, p.id == f.policy_id)
        .where(within)
        .group_by(f.result_type, f.receiving_mx_hostname)
        .order_by(failed.desc(), f.result_type, f.receiving_mx_hostname)
    )
    return (
        [store.TLSDay(d, k, int(o), int(b)) for d, k, o, b in session.execute(days)],
        [store.TLSFailureCount(k, m, int(n), int(c)) for k, m, n, c in session.execute(failures)],
    )


def random_reports(rng: random.Random, first: date, days: int) -> Iterator[AggregateReport | TLSReport]:
    """Reports over `days` days: DMARC from 6 reporters about 2 domains, skewed IPs, and TLS."""
    ips = [f"198.51.100.{n}" for n in range(40)] + [f"2001:db8::{n:x}" for n in range(10)]
    weights = [1 / (n + 1) for n in range(len(ips))]
    for n in range(150):
        day = first + timedelta(days=rng.randrange(days))
        domain = rng.choice((DOMAIN, DOMAIN, "b.example"))
        reporter = f"r{rng.randrange(6)}@reporter.example"
        results = ("pass", "fail")
        records = [
            record(ip, rng.randrange(1, 50), rng.choice(results), rng.choice(results))
            for ip in rng.choices(ips, weights=weights, k=rng.randrange(0, 30))
        ]
        yield aggregate(reporter, f"d{n}", day, records, domain, org=f"Org {rng.randrange(3)}")
        policies = [
            PolicyReport(
                rng.choice(("sts", "tlsa", "no-policy-found")),
                rng.choice((DOMAIN, "b.example")),
                rng.randrange(1000),
                rng.randrange(10),
                failure_details=tuple(
                    failure(
                        rng.choice(("certificate-expired", "tlsa-invalid")),
                        f"mx{rng.randrange(3)}",
                        1 + n % 5,
                    )
                    for _ in range(rng.randrange(3))
                ),
            )
            for _ in range(rng.randrange(1, 4))
        ]
        yield tls_report(f"t{rng.randrange(4)}@reporter.example", f"t{n}", day, policies)


def test_the_sums_equal_a_group_by_over_the_stored_rows(url: str) -> None:
    rng = random.Random(12)
    first = date(2026, 1, 15)
    reports = list(random_reports(rng, first, 120))
    with session_scope(url) as session:
        for report in reports:
            store.store_report(session, report, RAW)
        for report in reports[::7]:  # duplicates change nothing
            assert isinstance(store.store_report(session, report, RAW), store.Duplicate)
    periods = [(first, first + timedelta(days=119)), (date(2026, 2, 1), date(2026, 3, 31))]
    for _ in range(12):
        since = first + timedelta(days=rng.randrange(-5, 120))
        periods.append((since, since + timedelta(days=rng.randrange(0, 100))))
    with session_scope(url) as session:
        for domain in (DOMAIN, "b.example"):
            for since, until in periods:
                assert store.dmarc_days(session, domain, since, until) == grouped_days(
                    session, domain, since, until
                )
                limit = rng.choice((1, 3, 20, 100))
                expected = grouped_sources(session, domain, since, until, limit)
                assert store.top_sources(session, domain, since, until, limit) == expected
                expected_reporters = grouped_reporters(session, domain, since, until)
                assert store.dmarc_reporters(session, domain, since, until) == expected_reporters
                days, failures = grouped_tls(session, domain, since, until)
                assert store.tls_days(session, domain, since, until) == days
                assert store.tls_failures(session, domain, since, until, limit=100) == failures


def test_long_reporter_text_in_the_sums_is_cut_like_the_rows(session: Session) -> None:
    day = date(2026, 8, 1)
    report = aggregate("a@r.example", "1", day, [record("192.0.2.1", 1)])
    long = replace(report, metadata=replace(report.metadata, email="x" * 600, org_name="O" * 600))
    store.store_report(session, long, RAW)
    [reporter] = store.dmarc_reporters(session, DOMAIN, day, day)
    assert (len(reporter.reporter), len(reporter.org_name)) == (255, 255)
    [source] = store.top_sources(session, DOMAIN, day, day)
    assert source.reporters == (reporter.reporter,)


def answers(url: str, since: date, until: date) -> list[object]:
    with session_scope(url) as session:
        return [
            query(session, domain, since, until)
            for domain in (DOMAIN, "b.example")
            for query in (
                store.dmarc_days,
                store.top_sources,
                store.dmarc_reporters,
                store.tls_days,
                store.tls_failures,
            )
        ]


def test_the_migration_fills_the_sums_of_reports_stored_before_it(url: str) -> None:
    rng = random.Random(13)
    first = date(2026, 1, 15)
    with session_scope(url) as session:
        for report in random_reports(rng, first, 90):
            store.store_report(session, report, RAW)
    periods = [(first, first + timedelta(days=89)), (date(2026, 2, 3), date(2026, 3, 9))]
    before = [answers(url, since, until) for since, until in periods]
    assert any(before[0])
    downgrade_database(url, "0009")  # the reports stay, their sums go
    upgrade_database(url)
    assert [answers(url, since, until) for since, until in periods] == before


def test_sums_stop_at_their_cap(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reporters choose the counts: a sum stops at its cap instead of overflowing its column (which
    would fail every later report with the same key)."""
    monkeypatch.setattr(store, "SUM_CAP", 100)
    day = date(2026, 9, 1)
    for n in range(3):
        report = aggregate("a@r.example", str(n), day, [record("192.0.2.1", 60), record("192.0.2.2", 7)])
        assert isinstance(store.store_report(session, report, RAW), store.Stored)
    assert store.dmarc_days(session, DOMAIN, day, day) == [store.DMARCDay(day, 100, 0)]
    assert [(s.source_ip, s.messages) for s in store.top_sources(session, DOMAIN, day, day)] == [
        ("192.0.2.1", 100),
        ("192.0.2.2", 21),
    ]
    [reporter] = store.dmarc_reporters(session, DOMAIN, day, day)
    assert (reporter.reports, reporter.messages) == (3, 100)
