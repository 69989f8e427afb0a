"""TLS results add up per (policy domain, UTC day, policy), also with several processes at once."""

from __future__ import annotations

import json
import multiprocessing
from datetime import date

import pytest
from sqlalchemy import select

from app.db import engine_for, session_scope
from app.migrate import upgrade_database
from app.models import TLSFailureDetail, TLSResult
from app.tlsreports.report import FailureDetail, PolicyRef
from app.tlsreports.results import SessionResult, record_tls_results

DAY = date(2026, 11, 25)
STS = PolicyRef(
    "sts", "example.net", ("version: STSv1", "mode: enforce", "mx: mx.example.net"), ("mx.example.net",)
)
TLSA = PolicyRef("tlsa", "mx.example.net", ("3 1 1 aabbcc",))
EXPIRED = FailureDetail(
    "certificate-expired",
    sending_ip="127.0.0.1",
    receiving_mx_hostname="mx.example.net",
    receiving_mx_helo="mx.example.net",
    receiving_ip="127.0.0.2",
    failure_reason_code="certificate has expired (X509 error 10)",
)


def success() -> SessionResult:
    return SessionResult("example.net", STS, TLSA)


def failure() -> SessionResult:
    return SessionResult("example.net", STS, TLSA, EXPIRED)


def rows(url: str) -> dict[tuple[str, bool], TLSResult]:
    with session_scope(url) as session:
        return {(r.policy_domain, r.is_host): r for r in session.scalars(select(TLSResult))}


def details(url: str) -> list[TLSFailureDetail]:
    with session_scope(url) as session:
        return list(session.scalars(select(TLSFailureDetail).order_by(TLSFailureDetail.id)))


def test_domain_and_host_policies_are_counted_separately(sqlite_url: str) -> None:
    with session_scope(sqlite_url) as session:
        record_tls_results(session, [success(), success(), failure()], day=DAY)
    results = rows(sqlite_url)
    assert set(results) == {("example.net", False), ("mx.example.net", True)}
    domain = results["example.net", False]
    assert (domain.policy_type, domain.success_count, domain.failure_count) == ("sts", 2, 1)
    assert json.loads(domain.policy_string) == list(STS.policy_string)
    assert json.loads(domain.mx_host) == ["mx.example.net"]
    host = results["mx.example.net", True]
    assert (host.policy_type, host.recipient_domain, host.success_count, host.failure_count) == (
        "tlsa",
        "example.net",
        2,
        1,
    )
    recorded = details(sqlite_url)
    assert [(d.result_id, d.result_type, d.failed_session_count) for d in recorded] == [
        (domain.id, "certificate-expired", 1),
        (host.id, "certificate-expired", 1),
    ]
    assert recorded[0].receiving_ip == "127.0.0.2"
    assert recorded[0].failure_reason_code == "certificate has expired (X509 error 10)"


def test_equal_failures_add_up_and_different_ones_are_kept_apart(sqlite_url: str) -> None:
    other = FailureDetail("certificate-expired", sending_ip="127.0.0.1", receiving_ip="127.0.0.3")
    with session_scope(sqlite_url) as session:
        record_tls_results(session, [failure(), failure()], day=DAY)
        record_tls_results(session, [SessionResult("example.net", STS, None, other)], day=DAY)
    counts = sorted((d.receiving_ip, d.failed_session_count) for d in details(sqlite_url))
    # Two identical failures for each of the two policies, and the other one for the domain only.
    assert counts == [("127.0.0.2", 2), ("127.0.0.2", 2), ("127.0.0.3", 1)]


def test_a_changed_policy_and_another_day_are_new_rows(sqlite_url: str) -> None:
    testing = PolicyRef("sts", "example.net", ("version: STSv1", "mode: testing"), ("mx.example.net",))
    with session_scope(sqlite_url) as session:
        record_tls_results(session, [success()], day=DAY)
        record_tls_results(session, [SessionResult("example.net", testing, None)], day=DAY)
        record_tls_results(session, [success()], day=date(2026, 11, 26))
    with session_scope(sqlite_url) as session:
        domain_rows = session.scalars(select(TLSResult).where(TLSResult.is_host.is_(False))).all()
    assert sorted((r.day.isoformat(), r.success_count) for r in domain_rows) == [
        ("2026-11-25", 1),
        ("2026-11-25", 1),
        ("2026-11-26", 1),
    ]


def _record_many(url: str, sessions: int) -> None:
    """Run in a separate process: its own engine, one transaction per session as a worker would."""
    for i in range(sessions):
        with session_scope(url) as session:
            record_tls_results(session, [failure() if i % 3 == 0 else success()], day=DAY)
    engine_for(url).dispose()


@pytest.mark.postgres
def test_concurrent_processes_never_lose_a_count(postgres_url: str) -> None:
    upgrade_database(postgres_url)
    engine_for(postgres_url).dispose()  # no pooled connections inherited across the fork
    processes, sessions = 4, 150
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(postgres_url, sessions)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    failures_each = len(range(0, sessions, 3))
    expected_failures = processes * failures_each
    expected_successes = processes * sessions - expected_failures
    for result in rows(postgres_url).values():
        assert (result.success_count, result.failure_count) == (expected_successes, expected_failures)
    assert [d.failed_session_count for d in details(postgres_url)] == [expected_failures] * 2


def test_failures_known_before_connecting_count_for_their_policy_only(sqlite_url: str) -> None:
    fetch_error = FailureDetail("sts-policy-fetch-error", failure_reason_code="HTTP status 404")
    dnssec = FailureDetail("dnssec-invalid", receiving_mx_hostname="mx.example.net")
    with session_scope(sqlite_url) as session:
        # A session that worked, under a domain policy that could not be fetched.
        record_tls_results(
            session, [SessionResult("example.net", STS, TLSA, domain_failure=fetch_error)], day=DAY
        )
        # A host not connected to (its TLSA lookup failed): only the host's failure counts.
        record_tls_results(
            session, [SessionResult("example.net", STS, TLSA, host_failure=dnssec, connected=False)], day=DAY
        )
    results = rows(sqlite_url)
    assert (results["example.net", False].success_count, results["example.net", False].failure_count) == (
        0,
        1,
    )
    assert (results["mx.example.net", True].success_count, results["mx.example.net", True].failure_count) == (
        1,
        1,
    )
    assert sorted(d.result_type for d in details(sqlite_url)) == ["dnssec-invalid", "sts-policy-fetch-error"]
