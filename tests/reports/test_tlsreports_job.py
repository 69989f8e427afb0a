"""The daily TLS report job (SPEC R5.1 to R5.4) over a real database, the loopback DNS server, the real
queue (message files + rows) and a loopback HTTPS report receiver; the clock is passed in.
"""

from __future__ import annotations

import asyncio
import email
import json
import logging
import smtplib
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dkim.asyncsupport
import parsedmarc
import pytest
import trustme
from click.testing import CliRunner
from sqlalchemy import func, select

from app.auth.dkimkeys import dns_txt_value
from app.cli import main
from app.config import Config, load_config
from app.db import session_factory, session_scope
from app.dbclock import database_now
from app.dns import Resolver
from app.migrate import upgrade_database
from app.models import JobRun, Mailbox, Message, OutgoingMessage, TLSReportPost, TLSResult
from app.queue.deliver import deliver
from app.reportsender import tls_report_sender
from app.reportsuppress import is_suppressed, suppress
from app.tlsreports import job as tlsjob
from app.tlsreports.job import MAX_REPORT_ATTEMPTS, default_spacing, send_tls_reports
from app.tlsreports.message import report_message
from app.tlsreports.posts import HTTPS_RETRY_DELAY, post_due_reports
from app.tlsreports.report import FailureDetail, PolicyRef
from app.tlsreports.results import SessionResult, record_tls_results
from tests.reports.test_tlsreports import (
    attachment,
    check_rfc8460,
    dkim_config,
    report_receiver,
    sample_report,
)
from tests.support.celeryworker import celery_worker, client_for, wait_for_text
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import LOOPBACK_NETWORKS
from tests.support.logcapture import CidLog, captured
from tests.support.pglocks import release_once_read_or_waited_on
from tests.support.smtpfixtures import HOSTNAME, ThreadedSMTP, stored_messages
from tests.support.smtppeers import PeerHandler, smtp_peer

NOW = datetime(2026, 11, 25, 0, 5, tzinfo=UTC)  # the beat runs the job 5 minutes after midnight
YESTERDAY = date(2026, 11, 24)
SPACING = timedelta(minutes=10)

STS_NET = PolicyRef(
    "sts",
    "example.net",
    ("version: STSv1", "mode: enforce", "mx: mx1.example.net", "max_age: 86400"),
    ("mx1.example.net",),
)
TLSA_NET = PolicyRef("tlsa", "mx1.example.net", ("3 1 1 0a0b0c",), ("mx1.example.net",))
EXPIRED = FailureDetail(
    "certificate-expired", "192.0.2.1", "mx1.example.net", "mx1.example.net", "198.51.100.1", "cert expired"
)
NO_STARTTLS = FailureDetail(
    "starttls-not-supported", "192.0.2.1", "mx.example.com", "mx.example.com", "198.51.100.2"
)
TLSA_INVALID = FailureDetail("tlsa-invalid", "192.0.2.1", "mx.example.info", None, "198.51.100.3")


@pytest.fixture
def job_log() -> Iterator[CidLog]:
    with captured("app.tlsreports") as log:
        yield log


def make_config(
    tmp_path: Path, dns: DNSTestServer, https_ca_file: Path, extra: str = "", *, database_url: str = ""
) -> Config:
    """The DKIM test config, trusting the test CA for HTTPS; `extra` continues the [delivery] table."""
    settings = (
        f'\n[delivery]\nca_bundle = "{https_ca_file}"\n'
        f"https_allowed_networks = {json.dumps(LOOPBACK_NETWORKS)}\n" + extra
    )
    config = dkim_config(tmp_path / "config", dns, settings)
    if database_url:
        config = config.model_copy(update={"database_url": database_url})
    upgrade_database(config.resolved_database_url)
    return config


@pytest.fixture
def config(tmp_path: Path, dns: DNSTestServer, https_ca_file: Path) -> Config:
    return make_config(tmp_path, dns, https_ca_file)


def sessions(
    recipient: str,
    domain_policy: PolicyRef,
    host_policy: PolicyRef | None,
    ok: int,
    failures: list[FailureDetail],
) -> list[SessionResult]:
    results = [SessionResult(recipient, domain_policy, host_policy) for _ in range(ok)]
    return results + [SessionResult(recipient, domain_policy, host_policy, f) for f in failures]


def record(config: Config, results: list[SessionResult], day: date = YESTERDAY) -> None:
    with session_scope(config.resolved_database_url) as session:
        record_tls_results(session, results, day=day)


def mixed_day(config: Config) -> None:
    """A day of deliveries to five recipient domains through their MX hosts."""
    none_com = PolicyRef.none_found("example.com")
    # As delivery records it: the host's no-policy-found names the host in mx-host.
    host_com = PolicyRef("no-policy-found", "mx.example.com", (), ("mx.example.com",))
    info = PolicyRef.none_found("example.info")
    tlsa_info = PolicyRef("tlsa", "mx.example.info", ("3 1 1 aabb",), ("mx.example.info",))
    record(
        config,
        sessions("example.net", STS_NET, TLSA_NET, 17, [EXPIRED] * 3)
        + sessions("example.com", none_com, host_com, 4, [NO_STARTTLS])
        + sessions("example.info", info, tlsa_info, 2, [TLSA_INVALID] * 2)
        + sessions(
            "ok.example", PolicyRef.none_found("ok.example"), PolicyRef.none_found("mx.ok.example"), 5, []
        )
        + sessions("bad.example", PolicyRef.none_found("bad.example"), None, 0, [NO_STARTTLS]),
    )


def publish_mixed_day(dns: DNSTestServer, receiver_port: int) -> None:
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    dns.txt("_smtp._tls.mx1.example.net", "v=TLSRPTv1; rua=mailto:dane-reports@example.net")
    # example.com publishes nothing; its MX host asks for reports over HTTPS.
    dns.txt(
        "_smtp._tls.mx.example.com", f"v=TLSRPTv1; rua=https://reports.example.com:{receiver_port}/tlsrpt"
    )
    dns.add("reports.example.com", "A", "127.0.0.1")
    # example.info and its MX host share one rua: the host report has nothing left to say.
    dns.txt("_smtp._tls.example.info", "v=TLSRPTv1; rua=mailto:tls@example.info")
    dns.txt("_smtp._tls.mx.example.info", "v=TLSRPTv1;rua=mailto:tls@example.info")
    dns.txt("_smtp._tls.ok.example", "v=TLSRPTv1; rua=mailto:tls@ok.example")
    dns.txt("_smtp._tls.bad.example", "v=TLSRPTv1; rua=mailto:tls@bad.example; broken")


def queued(config: Config) -> dict[str, OutgoingMessage]:
    with session_scope(config.resolved_database_url) as session:
        rows = session.scalars(select(OutgoingMessage).order_by(OutgoingMessage.id))
        return {row.recipient: row for row in rows}


def message_file(config: Config, row: OutgoingMessage) -> Path:
    return config.data_dir / row.path


def posts(config: Config) -> list[TLSReportPost]:
    with session_scope(config.resolved_database_url) as session:
        return list(session.scalars(select(TLSReportPost).order_by(TLSReportPost.id)))


def unsent(config: Config) -> int:
    with session_scope(config.resolved_database_url) as session:
        query = select(func.count()).select_from(TLSResult).where(~TLSResult.recipient_report_sent)
        return session.scalar(query) or 0


def policies_by_domain(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["policy"]["policy-type"], p["policy"]["policy-domain"]): p for p in report["policies"]}


async def verify_dkim(message: bytes, resolver: Resolver) -> list[str]:
    """d= of each signature, after dkimpy verified all of them against the loopback DNS."""
    parsed = email.message_from_bytes(message)
    signatures = [v for k, v in parsed.items() if k.lower() == "dkim-signature"]
    for index in range(len(signatures)):
        assert await dkim.asyncsupport.DKIM(message).verify(idx=index, dnsfunc=resolver.dkim_txt)
    return [
        dict(t.strip().split("=", 1) for t in "".join(s.split()).split(";") if t)["d"] for s in signatures
    ]


async def test_a_day_of_deliveries_gives_each_policy_domain_its_report(
    config: Config, dns: DNSTestServer, resolver: Resolver, https_ca: trustme.CA, job_log: CidLog
) -> None:
    mixed_day(config)
    with report_receiver(https_ca, "reports.example.com") as receiver:
        publish_mixed_day(dns, receiver.port)
        summary = await send_tls_reports(config, NOW, resolver=resolver, spacing=SPACING)

        assert summary.reports == [
            "20261124.example.info@example.org",
            "20261124.example.net@example.org",
            "20261124.mx.example.com@example.org",
            "20261124.mx1.example.net@example.org",
        ]
        mail = queued(config)
        assert set(mail) == {"tls@example.info", "tlsrpt@example.net", "dane-reports@example.net"}
        for row in mail.values():
            assert row.is_tls_report and row.max_attempts == MAX_REPORT_ATTEMPTS and row.require_tls is False
            assert row.sender == "postmaster@example.org"
        # Sends are spread, recipient domains first, in report order: one SPACING apart.
        assert mail["tls@example.info"].next_attempt == NOW
        assert mail["tlsrpt@example.net"].next_attempt == NOW + SPACING
        assert mail["dane-reports@example.net"].next_attempt == NOW + 3 * SPACING

        # The recipient domain's report: its MTA-STS policy and the DANE policy of its MX host.
        message = message_file(config, mail["tlsrpt@example.net"]).read_bytes()
        assert await verify_dkim(message, resolver) == ["example.org", "example.org"]
        _, report = attachment(message)
        check_rfc8460(report, YESTERDAY)
        by_policy = policies_by_domain(report)
        assert set(by_policy) == {("sts", "example.net"), ("tlsa", "mx1.example.net")}
        sts = by_policy[("sts", "example.net")]
        assert sts["summary"] == {"total-successful-session-count": 17, "total-failure-session-count": 3}
        assert sts["failure-details"] == [
            {
                "result-type": "certificate-expired",
                "sending-mta-ip": "192.0.2.1",
                "receiving-mx-hostname": "mx1.example.net",
                "receiving-mx-helo": "mx1.example.net",
                "receiving-ip": "198.51.100.1",
                "failed-session-count": 3,
                "failure-reason-code": "cert expired",
            }
        ]
        assert by_policy[("tlsa", "mx1.example.net")]["policy"]["policy-string"] == ["3 1 1 0a0b0c"]
        parsed = parsedmarc.parse_smtp_tls_report_json(json.dumps(report))
        assert {
            (p["policy_type"], p["successful_session_count"], p["failed_session_count"])
            for p in parsed["policies"]
        } == {
            ("sts", 17, 3),
            ("tlsa", 17, 3),
        }

        # The MX host's own report: its tlsa policy, policy-domain the TLSA base domain (RFC 8460
        # §1.3; not the recipient domain), mx-host the host, as one string.
        _, host_report = attachment(message_file(config, mail["dane-reports@example.net"]).read_bytes())
        check_rfc8460(host_report, YESTERDAY)
        [entry] = host_report["policies"]
        assert entry["policy"] == {
            "policy-type": "tlsa",
            "policy-string": ["3 1 1 0a0b0c"],
            "policy-domain": "mx1.example.net",
            "mx-host": "mx1.example.net",
        }
        assert entry["summary"]["total-failure-session-count"] == 3

        # example.info's report has its own result and its host's; the host report was left out.
        _, info_report = attachment(message_file(config, mail["tls@example.info"]).read_bytes())
        assert set(policies_by_domain(info_report)) == {
            ("no-policy-found", "example.info"),
            ("tlsa", "mx.example.info"),
        }
        assert policies_by_domain(info_report)[("tlsa", "mx.example.info")]["failure-details"][0][
            "result-type"
        ] == ("tlsa-invalid")

        # The https rua: nothing is POSTed before its time, then the report arrives gzipped.
        [post] = posts(config)
        assert (post.url, post.due) == (
            f"https://reports.example.com:{receiver.port}/tlsrpt",
            NOW + 2 * SPACING,
        )
        assert (await post_due_reports(config, NOW + SPACING, resolver=resolver)).posted == []
        done = await post_due_reports(config, NOW + 2 * SPACING, resolver=resolver)
        assert done.posted == ["20261124.mx.example.com@example.org"]
        [received] = receiver.posts
        assert received.content_type == "application/tlsrpt+gzip" and received.report is not None
        check_rfc8460(received.report, YESTERDAY)
        [entry] = received.report["policies"]
        assert entry["policy"] == {
            "policy-type": "no-policy-found",
            "policy-domain": "mx.example.com",
            "mx-host": "mx.example.com",
        }
        assert entry["summary"] == {"total-successful-session-count": 4, "total-failure-session-count": 1}
        assert entry["failure-details"][0]["result-type"] == "starttls-not-supported"
        assert posts(config) == []

    # Every domain without a report says why; an invalid record is a warning.
    skipped = "\n".join(job_log.messages("no report"))
    assert (
        "recipient domain example.com, day 2026-11-24: no report: _smtp._tls.example.com has no TLSRPT record"
        in skipped
    )
    assert (
        "recipient domain ok.example, day 2026-11-24: no report: no failures (10 successful session(s))"
        in skipped
    )
    assert (
        "MX host mx.example.info, day 2026-11-24: no report: every affected recipient domain (example.info)"
        in skipped
    )
    assert (
        "MX host mx.ok.example, day 2026-11-24: no report: _smtp._tls.mx.ok.example has no TLSRPT record"
        in skipped
    )
    [invalid] = [(level, m) for _, level, m in job_log.lines if "bad.example" in m]
    assert invalid[0] == logging.WARNING and "invalid TLSRPT record at _smtp._tls.bad.example" in invalid[1]
    # One cid for the run on its lines, and one per report on the report's line.
    run_lines = [cid for cid, _, m in job_log.lines if "no report" in m or "run finished" in m]
    assert set(run_lines) == {summary.cid}
    report_lines = [(cid, m) for cid, _, m in job_log.lines if "report queued" in m]
    assert len(report_lines) == 4 and all(f" run_cid={summary.cid} " in m for _, m in report_lines)
    assert len({cid for cid, _ in report_lines} - {summary.cid}) == 4

    # A second run, the same day, sends nothing new.
    again = await send_tls_reports(config, NOW + timedelta(hours=1), resolver=resolver, spacing=SPACING)
    assert again.reports == [] and again.skipped == 0
    assert len(queued(config)) == 3 and posts(config) == [] and unsent(config) == 0
    with session_scope(config.resolved_database_url) as session:
        runs = list(session.scalars(select(JobRun).where(JobRun.job == "tls_reports").order_by(JobRun.id)))
    assert [r.cid for r in runs] == [summary.cid, again.cid]
    assert runs[0].outcome is not None and runs[0].outcome.startswith("4 report(s) scheduled, 5 skipped")


async def test_no_record_means_no_report_and_invalid_record_is_logged(
    config: Config, dns: DNSTestServer, resolver: Resolver, job_log: CidLog
) -> None:
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]))
    record(config, sessions("example.com", PolicyRef.none_found("example.com"), None, 0, [NO_STARTTLS]))
    dns.txt(
        "_smtp._tls.example.com",
        "v=TLSRPTv1; rua=mailto:a@example.com",
        "v=TLSRPTv1; rua=mailto:b@example.com",
    )
    summary = await send_tls_reports(config, NOW, resolver=resolver)
    assert summary.reports == [] and summary.skipped == 2
    assert queued(config) == {} and posts(config) == [] and unsent(config) == 0
    [warning] = [m for _, level, m in job_log.lines if level == logging.WARNING]
    assert "invalid TLSRPT record at _smtp._tls.example.com: 2 TLSRPT records published" in warning


async def test_dns_temporary_error_keeps_results_for_the_next_run(
    config: Config, dns: DNSTestServer, resolver: Resolver, job_log: CidLog
) -> None:
    record(config, sessions("example.net", STS_NET, None, 2, [EXPIRED]))
    dns.servfail("_smtp._tls.example.net")
    first = await send_tls_reports(config, NOW, resolver=resolver)
    assert (first.reports, first.kept) == ([], 1)
    assert unsent(config) == 1
    assert job_log.messages("kept for the next run: DNS")
    dns.clear()
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    dkim_keys_again(config, dns)
    # The next day's run still reports the day before (24 h old): with that day's date range.
    second = await send_tls_reports(config, NOW + timedelta(days=1), resolver=resolver)
    assert second.reports == ["20261124.example.net@example.org"]
    _, report = attachment(message_file(config, queued(config)["tlsrpt@example.net"]).read_bytes())
    check_rfc8460(report, YESTERDAY)


def dkim_keys_again(config: Config, dns: DNSTestServer) -> None:
    """Publish the config's DKIM keys again (after dns.clear())."""
    for selector in config.domains["example.org"].dkim:
        value = dns_txt_value(selector.private_key_file.read_bytes(), selector.algorithm)
        dns.txt(f"{selector.selector}._domainkey.example.org", value)


async def test_results_older_than_48_hours_are_dropped(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]), day=YESTERDAY - timedelta(days=2))
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]), day=YESTERDAY - timedelta(days=1))
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]), day=NOW.date())  # today: not yet
    summary = await send_tls_reports(config, NOW, resolver=resolver)
    assert summary.dropped == 1  # the result of 2026-11-22, whose day ended 50 h 5 min ago
    assert summary.reports == ["20261123.example.net@example.org"]
    with session_scope(config.resolved_database_url) as session:
        days = sorted(session.scalars(select(TLSResult.day)))
    assert days == [date(2026, 11, 23), date(2026, 11, 25)]


async def test_without_dkim_for_the_host_domain_nothing_is_sent(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, job_log: CidLog
) -> None:
    config = load_config(write_config(tmp_path / "config", dns_port=dns.port))  # example.org without DKIM
    upgrade_database(config.resolved_database_url)
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]))
    summary = await send_tls_reports(config, NOW, resolver=resolver)
    assert summary.reports == [] and "has no DKIM selectors" in summary.no_sender
    assert queued(config) == {} and unsent(config) == 1
    [line] = [m for _, level, m in job_log.lines if level == logging.WARNING]
    assert line.startswith("tls reports: nothing sent: domain 'example.org' of mail host 'mail.example.org'")
    assert not any("_smtp._tls" in name for name, _ in dns.queries)  # not even a lookup


async def test_switches(tmp_path: Path, dns: DNSTestServer, resolver: Resolver, https_ca_file: Path) -> None:
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    off = make_config(tmp_path / "off", dns, https_ca_file).model_copy(
        update={"no_outgoing_tls_reports": True}
    )
    record(off, sessions("example.net", STS_NET, None, 3, [EXPIRED]))
    summary = await send_tls_reports(off, NOW, resolver=resolver)
    assert summary.disabled and summary.reports == [] and queued(off) == {}

    everything = make_config(tmp_path / "all", dns, https_ca_file)
    everything = everything.model_copy(update={"outgoing_tls_reports_for_all_success": True})
    record(everything, sessions("example.net", STS_NET, None, 3, []))
    summary = await send_tls_reports(everything, NOW, resolver=resolver)
    assert summary.reports == ["20261124.example.net@example.org"]
    _, report = attachment(message_file(everything, queued(everything)["tlsrpt@example.net"]).read_bytes())
    assert report["policies"][0]["summary"] == {
        "total-successful-session-count": 3,
        "total-failure-session-count": 0,
    }


async def test_suppressed_addresses_get_no_report(
    config: Config, dns: DNSTestServer, resolver: Resolver, job_log: CidLog
) -> None:
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net,mailto:other@example.net")
    dns.txt("_smtp._tls.example.com", "v=TLSRPTv1; rua=mailto:Only@Example.com")
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]))
    record(config, sessions("example.com", PolicyRef.none_found("example.com"), None, 0, [NO_STARTTLS]))
    with session_scope(config.resolved_database_url) as session:
        suppress(session, "tlsrpt", "tlsrpt@example.net", NOW + timedelta(days=3), "bounces")
        suppress(session, "tlsrpt", "only@example.com", NOW + timedelta(days=3))
    summary = await send_tls_reports(config, NOW, resolver=resolver)
    assert summary.reports == ["20261124.example.net@example.org"]
    assert set(queued(config)) == {"other@example.net"}
    assert job_log.messages("not sending to tlsrpt@example.net: on the suppression list")
    assert job_log.messages(
        "example.com, day 2026-11-24: no report: every rua address is on the suppression list"
    )
    # The message names only the address it goes to.
    message = message_file(config, queued(config)["other@example.net"]).read_bytes()
    assert email.message_from_bytes(message)["To"] == "other@example.net"


async def test_https_failure_is_retried_once_later_that_day(
    config: Config, dns: DNSTestServer, resolver: Resolver, https_ca: trustme.CA, job_log: CidLog
) -> None:
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]))
    record(config, sessions("example.com", PolicyRef.none_found("example.com"), None, 0, [NO_STARTTLS]))
    dns.add("reports.example.com", "A", "127.0.0.1")
    with report_receiver(https_ca, "reports.example.com") as receiver:
        url = f"https://reports.example.com:{receiver.port}/r"
        dns.txt("_smtp._tls.example.net", f"v=TLSRPTv1; rua={url}?d=net")
        dns.txt("_smtp._tls.example.com", f"v=TLSRPTv1; rua={url}?d=com")
        await send_tls_reports(config, NOW, resolver=resolver, spacing=timedelta(0))
        receiver.status = 503
        first = await post_due_reports(config, NOW, resolver=resolver)
        assert sorted(first.retrying) == [
            "20261124.example.com@example.org",
            "20261124.example.net@example.org",
        ]
        assert [p.due for p in posts(config)] == [NOW + HTTPS_RETRY_DELAY] * 2
        assert "HTTP 503" in (posts(config)[0].last_error or "")
        assert (await post_due_reports(config, NOW + HTTPS_RETRY_DELAY / 2, resolver=resolver)).posted == []
        # The receiver is back for one of them only: one report arrives, the other is given up.
        receiver.status = 200
        retry_at = NOW + HTTPS_RETRY_DELAY
        await_one = await post_due_reports(config, retry_at, resolver=resolver, limit=1)
        receiver.status = 500
        last = await post_due_reports(config, retry_at, resolver=resolver)
    assert len(await_one.posted) == 1 and len(last.dropped) == 1
    assert posts(config) == []
    assert [p.status for p in receiver.posts] == [503, 503, 200, 500]
    [error] = [m for _, level, m in job_log.lines if level == logging.ERROR]
    assert "not delivered to" in error and "after 2 attempts, dropped: POST" in error and "HTTP 500" in error


async def test_racing_runs_send_each_report_once(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    for i in range(12):
        dns.txt(f"_smtp._tls.d{i}.example", f"v=TLSRPTv1; rua=mailto:tls@d{i}.example")
        record(
            config, sessions(f"d{i}.example", PolicyRef.none_found(f"d{i}.example"), None, 1, [NO_STARTTLS])
        )
    first, second = await asyncio.gather(
        send_tls_reports(config, NOW, resolver=resolver), send_tls_reports(config, NOW, resolver=resolver)
    )
    assert sorted(first.reports + second.reports) == sorted(
        f"20261124.d{i}.example@example.org" for i in range(12)
    )
    assert len(queued(config)) == 12


@pytest.mark.postgres
async def test_racing_runs_on_postgresql(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, https_ca_file: Path, postgres_url: str
) -> None:
    config = make_config(tmp_path, dns, https_ca_file, database_url=postgres_url)
    for i in range(12):
        dns.txt(f"_smtp._tls.d{i}.example", f"v=TLSRPTv1; rua=https://r.example/{i}")
        record(
            config, sessions(f"d{i}.example", PolicyRef.none_found(f"d{i}.example"), None, 1, [NO_STARTTLS])
        )
    runs = await asyncio.gather(*(send_tls_reports(config, NOW, resolver=resolver) for _ in range(3)))
    reports = [r for run in runs for r in run.reports]
    assert sorted(reports) == sorted(f"20261124.d{i}.example@example.org" for i in range(12))
    assert len(posts(config)) == 12 and unsent(config) == 0


# One clock, and results that come late (item 6 of issue 9).


async def test_results_recorded_after_their_day_was_reported_get_a_report_of_their_own_id(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]))
    first = await send_tls_reports(config, NOW, resolver=resolver)
    assert first.reports == ["20261124.example.net@example.org"]
    # A result of the same day, recorded after its report went (say a run by hand ahead of time).
    record(config, sessions("example.net", PolicyRef.none_found("example.net"), None, 0, [NO_STARTTLS]))
    late = await send_tls_reports(config, NOW + timedelta(hours=1), resolver=resolver)
    assert late.reports == [f"20261124.{late.cid}.example.net@example.org"], "never the first report's id"
    with session_scope(config.resolved_database_url) as session:
        rows = list(session.scalars(select(OutgoingMessage).order_by(OutgoingMessage.id)))
    assert len(rows) == 2
    part, report = attachment(message_file(config, rows[1]).read_bytes())
    check_rfc8460(report, YESTERDAY)
    assert report["report-id"] == late.reports[0]
    assert [p["policy"]["policy-type"] for p in report["policies"]] == ["no-policy-found"]
    start = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp())
    assert part.get_filename() == f"example.org!example.net!{start}!{start + 86399}!{late.cid}.json.gz"
    assert unsent(config) == 0


@pytest.mark.postgres
async def test_a_result_still_being_written_is_waited_for_and_joins_its_days_one_report(
    tmp_path: Path,
    dns: DNSTestServer,
    resolver: Resolver,
    https_ca_file: Path,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivery's result, counted under the database's date, is not yet committed when the run
    starts: the run waits for it, so the day gets one report with it, not a second one later."""
    config = make_config(tmp_path, dns, https_ca_file, database_url=postgres_url)
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    with session_scope(config.resolved_database_url) as session:
        today = database_now(session).date()
        record_tls_results(session, sessions("example.net", STS_NET, None, 1, [EXPIRED]))
    inserted, release, committed, read_done = (threading.Event() for _ in range(4))

    def slow_delivery() -> None:
        with session_factory(config.resolved_database_url)() as session:
            record_tls_results(session, sessions("example.net", STS_NET, TLSA_NET, 0, [EXPIRED]))
            inserted.set()
            release.wait(60)
            session.commit()
        committed.set()

    read_rows = tlsjob.report_rows

    def rows_then_the_late_commit(*args: Any) -> Any:
        found = read_rows(*args)
        read_done.set()
        assert committed.wait(60)
        return found

    monkeypatch.setattr(tlsjob, "report_rows", rows_then_the_late_commit)
    releaser = threading.Thread(target=release_once_read_or_waited_on, args=(config, read_done, release))
    threads = [threading.Thread(target=slow_delivery), releaser]
    threads[0].start()
    assert inserted.wait(30)
    threads[1].start()
    # The job runs on a day after the results (its clock is given, the recording's is the database's).
    tomorrow = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC) + timedelta(minutes=5)
    first = await send_tls_reports(config, tomorrow, resolver=resolver)
    for thread in threads:
        thread.join(timeout=60)
    again = await send_tls_reports(config, tomorrow + timedelta(hours=1), resolver=resolver)
    assert (first.reports, again.reports) == ([f"{today:%Y%m%d}.example.net@example.org"], [])
    (row,) = queued(config).values()
    _, report = attachment(message_file(config, row).read_bytes())
    sts = policies_by_domain(report)[("sts", "example.net")]
    assert sts["summary"]["total-failure-session-count"] == 2, "the late-committed session is in it"


def test_default_spacing_fits_four_hours() -> None:
    assert default_spacing(1) == timedelta(minutes=5)
    assert default_spacing(0) == timedelta(minutes=5)
    assert default_spacing(480) == timedelta(seconds=30)
    assert default_spacing(100_000) * 100_000 <= timedelta(hours=4)


def test_spread_never_goes_past_four_hours(config: Config, dns: DNSTestServer, resolver: Resolver) -> None:
    for i in range(3):
        dns.txt(f"_smtp._tls.d{i}.example", f"v=TLSRPTv1; rua=https://r.example/{i}")
        record(
            config, sessions(f"d{i}.example", PolicyRef.none_found(f"d{i}.example"), None, 0, [NO_STARTTLS])
        )
    asyncio.run(send_tls_reports(config, NOW, resolver=resolver, spacing=timedelta(hours=3)))
    assert [p.due for p in posts(config)] == [NOW, NOW + timedelta(hours=3), NOW + timedelta(hours=4)]


# The CLI.


def run_cli(config: Config, *args: str) -> Any:
    """Invoke `postwarden`; the root logger's set-up (send-reports installs its own) is put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return CliRunner().invoke(main, ["--config", str(config.data_dir.parent / "postwarden.toml"), *args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_cli_results_send_reports_and_suppressions(
    config: Config, dns: DNSTestServer, https_ca: trustme.CA
) -> None:
    # The CLI runs on the real clock: the results are of the real yesterday.
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    record(config, sessions("example.net", STS_NET, TLSA_NET, 2, [EXPIRED]), day=yesterday)
    dns.add("reports.example.net", "A", "127.0.0.1")
    with report_receiver(https_ca) as receiver:
        dns.txt("_smtp._tls.example.net", f"v=TLSRPTv1; rua=https://reports.example.net:{receiver.port}/r")
        listed = run_cli(config, "tlsrpt", "results", "example.net", "--day", f"{yesterday}", "--json")
        assert listed.exit_code == 0, listed.output
        rows = json.loads(listed.output)
        assert [(r["policy_type"], r["policy_domain"], r["successful"], r["failed"]) for r in rows] == [
            ("sts", "example.net", 2, 1),
            ("tlsa", "mx1.example.net", 2, 1),
        ]
        assert rows[0]["failure_details"][0]["result_type"] == "certificate-expired"
        assert not rows[0]["recipient_report_sent"]

        text = run_cli(config, "tlsrpt", "results", "mx1.example.net")
        assert (
            "tlsa mx1.example.net (MX host): 2 ok, 1 failed; report pending, host report pending"
            in text.output
        )
        assert "certificate-expired x1 mx1.example.net 198.51.100.1" in text.output
        assert (
            run_cli(config, "tlsrpt", "results", "--day", "2001-01-01").output
            == "no TLS results on 2001-01-01\n"
        )

        sent = run_cli(config, "tlsrpt", "send-reports", "--now", "--json")
        assert sent.exit_code == 0, sent.output
        outcome = json.loads(sent.stdout)
        assert outcome["reports"] == [f"{yesterday:%Y%m%d}.example.net@example.org"]
        assert outcome["https"]["posted"] == outcome["reports"]
        assert len(receiver.posts) == 1
        again = run_cli(config, "tlsrpt", "send-reports", "--now")
        assert "0 report(s) scheduled" in again.output

    added = run_cli(
        config,
        "tlsrpt",
        "suppress",
        "add",
        "Reports@Example.net",
        "--until",
        "2099-01-31",
        "--comment",
        "full",
    )
    assert (
        added.exit_code == 0
        and "suppressed reports@example.net until 2099-01-31T23:59:59+00:00" in added.output
    )
    listing = json.loads(run_cli(config, "tlsrpt", "suppress", "list", "--json").output)
    assert [(e["address"], e["comment"]) for e in listing] == [("reports@example.net", "full")]
    bad = run_cli(config, "tlsrpt", "suppress", "add", "not-an-address")
    assert bad.exit_code == 1 and "is not an address of the form localpart@domain" in bad.output
    past = run_cli(config, "tlsrpt", "suppress", "add", "a@example.net", "--until", "2001-01-01")
    assert past.exit_code == 1 and "is in the past" in past.output
    assert run_cli(config, "tlsrpt", "suppress", "remove", "reports@example.net").exit_code == 0
    missing = run_cli(config, "tlsrpt", "suppress", "remove", "reports@example.net")
    assert missing.exit_code == 1 and "is not on the TLS reports suppression list" in missing.output
    assert run_cli(config, "tlsrpt", "suppress", "list").output == "no suppressed addresses\n"


def test_beat_runs_the_job_minutes_after_midnight_utc() -> None:
    from tasks.schedule import beat_schedule

    schedule = beat_schedule()["tls_reports"]
    assert schedule["task"] == "tasks.tlsreports.send_tls_reports"
    cron = schedule["schedule"]
    assert cron.hour == {0} and cron.minute == {5}
    assert beat_schedule()["post_tls_reports"]["task"] == "tasks.tlsreports.post_tls_reports"


# Reports about our own MX host (SPEC R5.5): `host_tlsrpt` receives them.


def test_host_tlsrpt_address_receives_reports_over_smtp(
    smtp: ThreadedSMTP, tmp_path: Path, dns: DNSTestServer
) -> None:
    """The base config has host_tlsrpt = {admin, tlsrpt, TLSRPT}: a report mailed to tlsrpt@<mail host>
    by a real SMTP client lands in that mailbox, intact."""
    assert smtp.config.host_tlsrpt is not None
    address = f"{smtp.config.host_tlsrpt.localpart}@{HOSTNAME}"
    submitter = tls_report_sender(dkim_config(tmp_path / "reporter", dns))
    report = sample_report()
    message = report_message(report, report.gzipped(), submitter, [address], datetime.now(UTC))
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("mx.reporter.example")
        assert client.sendmail("postmaster@example.org", [address], message) == {}
    [stored] = stored_messages(smtp)
    assert stored.mailbox == "TLSRPT"
    assert stored.content.endswith(message)
    _, document = attachment(stored.content)
    assert document == report.to_json()


# Where the mail flows: the queued report delivered over SMTP (app/queue/deliver.py) to a peer.

# More [delivery] settings (make_config opens the table): the peer's port for every MX.
DELIVERY = "smtp_port = {port}\nconnect_timeout = 5\ncommand_timeout = 5\n"


def publish_mx(dns: DNSTestServer, domain: str) -> None:
    dns.add(domain, "MX", f"10 mx.{domain}.")
    dns.add(f"mx.{domain}", "A", "127.0.0.1")


async def test_queued_report_is_delivered_signed_and_its_own_tls_is_not_recorded(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, https_ca_file: Path
) -> None:
    with smtp_peer(None) as peer:  # no STARTTLS: the report goes anyway (TLS-Required: No)
        config = make_config(tmp_path, dns, https_ca_file, DELIVERY.format(port=peer.port))
        record(config, sessions("example.net", STS_NET, TLSA_NET, 5, [EXPIRED]))
        dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tls@example.net")
        publish_mx(dns, "example.net")
        summary = await send_tls_reports(config, NOW, resolver=resolver)
        [row] = queued(config).values()
        delivery = await deliver(config, row.id, resolver)
    assert delivery.delivered == [row.id]
    [received] = peer.received
    assert (received.mail_from, received.rcpt_tos) == ("postmaster@example.org", ["tls@example.net"])
    assert b"TLS-Required" not in received.content.split(b"\r\n\r\n", 1)[0]  # removed by delivery (RFC 8689)
    assert await verify_dkim(received.content, resolver) == ["example.org", "example.org"]
    parsed = parsedmarc.parse_report_email(received.content, offline=True)
    assert parsed["report_type"] == "smtp_tls"
    assert parsed["report"]["report_id"] == summary.reports[0]
    assert {(p["policy_type"], p["failed_session_count"]) for p in parsed["report"]["policies"]} == {
        ("sts", 1),
        ("tlsa", 1),
    }
    with session_scope(config.resolved_database_url) as session:
        # Only yesterday's two results: the report's own delivery (today, no TLS) was not recorded.
        assert session.scalar(select(func.count()).select_from(TLSResult)) == 2


async def test_undeliverable_report_ends_quietly_in_postmaster_tlsrpt_and_the_address_is_suppressed(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, https_ca_file: Path, job_log: CidLog
) -> None:
    refusing = PeerHandler(rcpt_replies={"tls@example.net": "550 5.1.1 no such mailbox"})
    with smtp_peer(None, handler=refusing) as peer:
        config = make_config(tmp_path, dns, https_ca_file, DELIVERY.format(port=peer.port))
        record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]))
        dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tls@example.net")
        publish_mx(dns, "example.net")
        await send_tls_reports(config, NOW, resolver=resolver)
        [row] = queued(config).values()
        assert (await deliver(config, row.id, resolver)).failed == [row.id]
    assert queued(config) == {}, "the DSN never goes back into the queue"
    with session_scope(config.resolved_database_url) as session:
        query = select(Message, Mailbox.name).join(Mailbox, Message.mailbox_id == Mailbox.id)
        [(dsn, mailbox)] = session.execute(query).all()
        assert mailbox == "Postmaster/tlsrpt" and dsn.seen
        assert b"Action: failed" in (config.data_dir / dsn.path).read_bytes()
        assert is_suppressed(session, "tlsrpt", "tls@example.net")
    # The next day's report skips the suppressed address, and says so.
    record(config, sessions("example.net", STS_NET, None, 1, [EXPIRED]), day=NOW.date())
    again = await send_tls_reports(config, NOW + timedelta(days=1), resolver=resolver)
    assert again.reports == [] and queued(config) == {}
    assert job_log.messages("not sending to tls@example.net: on the suppression list")


def test_the_daily_task_runs_on_a_worker(tmp_path: Path, dns: DNSTestServer, https_ca_file: Path) -> None:
    """The beat's task name reaches a real Celery worker (filesystem broker), which runs the job."""
    config = make_config(tmp_path, dns, https_ca_file)
    dns.txt("_smtp._tls.example.net", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    record(
        config,
        sessions("example.net", STS_NET, None, 1, [EXPIRED]),
        day=datetime.now(UTC).date() - timedelta(days=1),
    )
    config_file = config.data_dir.parent / "postwarden.toml"
    log = tmp_path / "worker.log"
    with celery_worker(config_file, log):
        client_for(config_file).send_task("tasks.tlsreports.send_tls_reports")
        wait_for_text(log, "tls reports: run finished: 1 report(s) scheduled")
    assert set(queued(config)) == {"tlsrpt@example.net"}
