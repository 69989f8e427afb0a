"""The hourly report run (SPEC R2.3, R2.6-R2.9): intervals over a simulated day (the clock is passed in),
DNS trouble, discards, the 48 h limit, optional evaluations, suppressions, logging with cids, racing
workers on SQLite and PostgreSQL, recovery after a dead run, and the way out: real inbound mail becomes
a report that is delivered to an SMTP peer and read back by parsedmarc, or whose permanent failure
ends as a quiet DSN in the postmaster's `dmarc` sub-mailbox and a suppression."""

from __future__ import annotations

import asyncio
import gzip
import json
import smtplib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import parsedmarc
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from app.cli import main
from app.config import Config, load_config
from app.db import session_factory, session_scope
from app.dmarcreports import job
from app.dmarcreports.evaluation import Evaluation
from app.dmarcreports.evaluations import record_evaluation, store_evaluation
from app.dmarcreports.job import RunSummary, send_dmarc_reports
from app.dns import Resolver
from app.jobs import KEPT_RUNS
from app.migrate import upgrade_database
from app.models import DMARCEvaluation, DMARCReportClaim, JobRun, Mailbox, Message, OutgoingMessage
from app.models.base import utcnow
from app.queue.deliver import deliver
from app.reportsuppress import is_suppressed, suppress
from tasks.schedule import beat_schedule
from tests.reports.test_dmarc_evaluations import evaluation
from tests.reports.test_dmarc_reports import attachment, strictly_parsed
from tests.reports.test_tlsreports import dkim_config
from tests.support.celeryworker import celery_worker, client_for, wait_for_text
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.logcapture import CidLog, captured
from tests.support.pglocks import release_once_read_or_waited_on
from tests.support.smtpfixtures import ThreadedSMTP, make_message, publish_sender_domain, smtp_config_toml
from tests.support.smtppeers import Peer, PeerHandler, smtp_peer

DAY = datetime(2026, 11, 25, tzinfo=UTC)
HOURLY = "v=DMARC1; p=reject; ri=3600; rua=mailto:dmarc@hourly.example"
DAILY = "v=DMARC1; p=quarantine; rua=mailto:dmarc@daily.example"


def migrated(path: Path) -> Config:
    config = load_config(path)
    upgrade_database(config.resolved_database_url)
    return config


def ev(domain: str, when: datetime, ri: int | None = None, **changes: Any) -> dict[str, Any]:
    policy = {**evaluation()["policy"], "ri": ri}
    base = evaluation(
        policy_domain=domain,
        header_from=domain,
        envelope_from=domain,
        evaluated=when.isoformat(),
        rua=[f"mailto:dmarc@{domain}"],
        policy=policy,
    )
    return {**base, **changes}


def store(config: Config, *evaluations: dict[str, Any]) -> None:
    for one in evaluations:
        assert store_evaluation(config, one)


def run(
    config: Config, resolver: Resolver, now: datetime, spacing: timedelta | None = timedelta(0)
) -> RunSummary:
    return asyncio.run(send_dmarc_reports(config, now=now, spacing=spacing, resolver=resolver))


@dataclass
class Queued:
    recipients: list[str]
    rows: list[OutgoingMessage]
    message: bytes
    xml: bytes

    @property
    def report(self) -> dict[str, Any]:
        strictly_parsed(self.xml)
        return parsedmarc.parse_aggregate_report_xml(self.xml.decode(), offline=True)

    @property
    def domain(self) -> str:
        return self.report["policy_published"]["domain"]

    @property
    def messages(self) -> int:
        return sum(r["count"] for r in self.report["records"])


def queued(config: Config) -> list[Queued]:
    with session_scope(config.resolved_database_url) as session:
        rows = list(session.scalars(select(OutgoingMessage).order_by(OutgoingMessage.id)))
    by_path: dict[str, list[OutgoingMessage]] = {}
    for row in rows:
        by_path.setdefault(row.path, []).append(row)
    result = []
    for path, message_rows in by_path.items():
        message = (config.data_dir / path).read_bytes()
        (part,) = [p for p in message_from_bytes(message, policy=default).walk() if p.get_filename()]
        xml = gzip.decompress(part.get_payload(decode=True))
        result.append(Queued([r.recipient for r in message_rows], message_rows, message, xml))
    return result


def count(config: Config, model: type[Any] = DMARCEvaluation) -> int:
    with session_scope(config.resolved_database_url) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def cid_log() -> Iterator[CidLog]:
    with captured("app.dmarcreports") as log:
        yield log


@pytest.fixture
def config(config_file: Path) -> Config:
    return load_config(config_file)


# Intervals over a simulated day.


def test_two_domains_with_different_intervals_over_a_day(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_dmarc.hourly.example", HOURLY)
    dns.txt("_dmarc.daily.example", DAILY)
    per_run: list[list[str]] = []
    for hour in range(24):
        start = DAY + timedelta(hours=hour)
        store(
            config,
            ev("hourly.example", start + timedelta(minutes=10), ri=3600),
            ev("hourly.example", start + timedelta(minutes=40), ri=3600, source_ip="192.0.2.99"),
            ev("daily.example", start + timedelta(minutes=20)),
        )
        summary = run(config, resolver, start + timedelta(hours=1, seconds=45))
        per_run.append(summary.reports)
    assert [len(r) for r in per_run] == [1] * 23 + [2], "hourly every run, daily at midnight only"
    assert all(
        r.split(".")[:2] == [f"{DAY + timedelta(hours=h + 1):%Y%m%d}", f"{(h + 1) % 24:02d}"]
        for h, reports in enumerate(per_run)
        for r in reports
    )
    reports = queued(config)
    hourly = [q for q in reports if q.domain == "hourly.example"]
    daily = [q for q in reports if q.domain == "daily.example"]
    assert len(hourly) == 24 and len(daily) == 1
    for hour, q in enumerate(hourly):
        meta = q.report["report_metadata"]
        begin = DAY + timedelta(hours=hour)
        assert (meta["begin_date"], meta["end_date"]) == (
            f"{begin:%Y-%m-%d %H}:00:00",
            f"{begin:%Y-%m-%d %H}:59:59",
        )
        assert (q.messages, len(q.report["records"])) == (2, 2)
    (day_report,) = daily
    assert (
        day_report.report["report_metadata"]["begin_date"],
        day_report.report["report_metadata"]["end_date"],
    ) == (
        "2026-11-25 00:00:00",
        "2026-11-25 23:59:59",
    )
    assert (day_report.messages, len(day_report.report["records"])) == (24, 1), "identical rows merge"
    assert day_report.report["policy_published"]["p"] == "quarantine"
    assert count(config) == 0


# What each run does with a domain.


def test_dns_temporary_error_keeps_evaluations_and_the_next_run_reports_them_from_their_start(
    config: Config, dns: DNSTestServer, resolver: Resolver, cid_log: CidLog
) -> None:
    store(config, ev("hourly.example", DAY + timedelta(hours=10, minutes=5), ri=3600))
    dns.servfail("_dmarc.hourly.example")
    summary = run(config, resolver, DAY + timedelta(hours=11, seconds=40))
    assert (summary.reports, summary.kept) == ([], ["hourly.example"])
    assert count(config) == 1
    assert cid_log.messages(
        "dmarc report postponed to the next run policy_domain=hourly.example reason=DNS temporary"
    )
    dns.clear()
    dns.txt("_dmarc.hourly.example", HOURLY)
    store(config, ev("hourly.example", DAY + timedelta(hours=11, minutes=5), ri=3600))
    assert len(run(config, resolver, DAY + timedelta(hours=12, seconds=40)).reports) == 1
    (q,) = queued(config)
    meta = q.report["report_metadata"]
    assert (meta["begin_date"], meta["end_date"]) == ("2026-11-25 10:00:00", "2026-11-25 11:59:59")
    assert q.messages == 2 and count(config) == 0


def test_domains_without_record_or_rua_lose_their_evaluations(
    config: Config, dns: DNSTestServer, resolver: Resolver, cid_log: CidLog
) -> None:
    dns.txt("_dmarc.norua.example", "v=DMARC1; p=reject")
    store(config, ev("norua.example", DAY + timedelta(hours=3)), ev("gone.example", DAY + timedelta(hours=4)))
    summary = run(config, resolver, DAY + timedelta(days=1, seconds=50))
    assert summary.reports == [] and sorted(summary.discarded) == ["gone.example", "norua.example"]
    assert count(config) == 0 and queued(config) == []
    assert cid_log.messages(
        "dmarc evaluations discarded domain=norua.example reason='no rua in its DMARC record'"
    )
    assert cid_log.messages("dmarc evaluations discarded domain=gone.example reason='no DMARC record'")


def test_evaluations_older_than_48_hours_are_dropped_and_current_intervals_wait(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_dmarc.hourly.example", HOURLY)
    now = DAY + timedelta(days=3, hours=5, seconds=45)
    store(
        config,
        ev("hourly.example", now - timedelta(hours=49), ri=3600),  # too old to report
        ev("hourly.example", now - timedelta(hours=2), ri=3600),  # ended: reported
        ev("hourly.example", now - timedelta(seconds=10), ri=3600),  # the current hour: not yet
    )
    summary = run(config, resolver, now)
    assert (summary.purged, len(summary.reports)) == (1, 1)
    assert queued(config)[0].messages == 1
    assert count(config) == 1


def test_optional_evaluations_alone_cause_no_report_but_are_included_in_one(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_dmarc.hourly.example", HOURLY)
    store(
        config,
        *[ev("hourly.example", DAY + timedelta(hours=1, minutes=m), ri=3600, optional=True) for m in (1, 2)],
    )
    assert run(config, resolver, DAY + timedelta(hours=2, seconds=30)).reports == []
    assert count(config) == 2, "kept: a later non-optional evaluation takes them along"
    store(config, ev("hourly.example", DAY + timedelta(hours=2, minutes=1), ri=3600))
    assert len(run(config, resolver, DAY + timedelta(hours=3, seconds=30)).reports) == 1
    (q,) = queued(config)
    assert q.messages == 3 and count(config) == 0


def test_skipped_addresses_are_logged_with_their_reason_and_the_run_has_one_cid(
    config: Config, dns: DNSTestServer, resolver: Resolver, cid_log: CidLog
) -> None:
    dns.txt(
        "_dmarc.hourly.example",
        "v=DMARC1; p=reject; ri=3600; rua=mailto:a@hourly.example,mailto:b@hourly.example,"
        "mailto:x@vendor.example,https://hourly.example/r",
    )
    with session_scope(config.resolved_database_url) as session:
        suppress(session, "dmarc", "a@hourly.example", utcnow() + timedelta(days=1), "bounces")
    store(config, ev("hourly.example", DAY + timedelta(hours=6, minutes=1), ri=3600))
    cid_log.lines.clear()
    summary = run(config, resolver, DAY + timedelta(hours=7, seconds=40))
    (report_id,) = summary.reports
    (q,) = queued(config)
    assert q.recipients == ["b@hourly.example"]
    (error,) = q.report["report_metadata"]["errors"]
    assert "vendor.example has not agreed to receive reports for hourly.example" in error
    assert "only mailto: report URIs are supported" in error
    skipped = cid_log.messages("dmarc report address skipped policy_domain=hourly.example")
    assert len(skipped) == 3
    assert any("address=a@hourly.example reason=on the suppression list" in s for s in skipped)
    assert any("address=mailto:x@vendor.example reason=" in s for s in skipped)
    (line,) = cid_log.messages("dmarc report queued")
    report_cid = report_id.rsplit(".", 1)[1]
    assert line == (
        f"dmarc report queued domain=hourly.example report_cid={report_cid} report_id={report_id} "
        "recipients=b@hourly.example rows=1 messages=1 due=07:00:40"
    )
    cids = {cid for cid, _, _ in cid_log.lines}
    assert cids == {summary.cid}, "every line of the run carries its cid"
    with session_scope(config.resolved_database_url) as session:
        (job,) = session.scalars(select(JobRun)).all()
    assert (job.job, job.cid, job.finished is not None) == ("send_dmarc_reports", summary.cid, True)
    assert job.outcome is not None and job.outcome.startswith("1 reports queued")


def test_every_address_suppressed_means_no_report(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_dmarc.hourly.example", HOURLY)
    with session_scope(config.resolved_database_url) as session:
        suppress(session, "dmarc", "dmarc@hourly.example", utcnow() + timedelta(days=1))
    store(config, ev("hourly.example", DAY + timedelta(hours=6, minutes=1), ri=3600))
    summary = run(config, resolver, DAY + timedelta(hours=7, seconds=40))
    assert (summary.reports, summary.discarded, count(config)) == ([], ["hourly.example"], 0)


def test_reports_are_spread_over_the_hour_at_most_five_minutes_apart(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    now = DAY + timedelta(hours=1, seconds=45)
    domains = [f"d{i}.example" for i in range(3)]
    for domain in domains:
        dns.txt(f"_dmarc.{domain}", f"v=DMARC1; p=none; ri=3600; rua=mailto:dmarc@{domain}")
        store(config, ev(domain, DAY + timedelta(minutes=5), ri=3600))
    run(config, resolver, now, spacing=None)
    due = sorted(q.rows[0].next_attempt for q in queued(config))
    assert due == [now, now + timedelta(minutes=5), now + timedelta(minutes=10)]


def test_off_switch_sends_nothing_and_drops_what_was_stored(config: Config, resolver: Resolver) -> None:
    store(config, ev("hourly.example", DAY, ri=3600))
    disabled = config.model_copy(update={"no_outgoing_dmarc_reports": True})
    summary = run(disabled, resolver, DAY + timedelta(hours=5))
    assert (summary.reports, summary.purged, count(config), queued(config)) == ([], 1, 0, [])


def test_many_domains_left_alone_are_deleted_by_their_claims_instead(
    config: Config, dns: DNSTestServer, resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job, "MAX_EXCLUDED", 0)
    dns.txt("_dmarc.hourly.example", HOURLY)
    dns.servfail("_dmarc.later.example")
    store(config, ev("hourly.example", DAY, ri=3600), ev("later.example", DAY, ri=3600))
    summary = run(config, resolver, DAY + timedelta(hours=1, seconds=30))
    assert (len(summary.reports), summary.kept, summary.deleted) == (1, ["later.example"], 1)
    with session_scope(config.resolved_database_url) as session:
        assert session.scalars(select(DMARCEvaluation.policy_domain)).all() == ["later.example"]
        assert all(c.evaluations_deleted for c in session.scalars(select(DMARCReportClaim)))


def test_an_unreadable_dkim_key_keeps_the_evaluations_with_an_error(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, cid_log: CidLog
) -> None:
    config = dkim_config(tmp_path / "dkim", dns)
    upgrade_database(config.resolved_database_url)
    (tmp_path / "dkim" / "rsa1.pem").unlink()
    dns.txt("_dmarc.hourly.example", HOURLY)
    store(config, ev("hourly.example", DAY, ri=3600))
    summary = run(config, resolver, DAY + timedelta(hours=1, seconds=30))
    assert (summary.reports, summary.kept, count(config)) == ([], ["hourly.example"], 1)
    (line,) = cid_log.messages("dmarc report not signed, kept for the next run policy_domain=hourly.example")
    assert "rsa1.pem" in line


# Two workers, and a worker that died.


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def racing_config(request: pytest.FixtureRequest, tmp_path: Path, dns: DNSTestServer) -> Config:
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    return migrated(write_config(tmp_path / "race", database_url=url, dns_port=dns.port))


def test_racing_runs_in_the_same_hour_send_each_report_once(
    racing_config: Config, dns: DNSTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = racing_config
    domains = [f"race{i}.example" for i in range(30)]
    for domain in domains:
        dns.txt(f"_dmarc.{domain}", f"v=DMARC1; p=none; ri=3600; rua=mailto:dmarc@{domain}")
        store(config, *[ev(domain, DAY + timedelta(minutes=m), ri=3600) for m in (1, 2, 3)])
    # Both workers have read the evaluations before either claims one: the race is certain.
    both_read = threading.Barrier(2, timeout=60)
    outcomes = job._Run.outcomes

    async def outcomes_after_both_read(
        self: job._Run, pending: Iterator[list[job.DomainRows]], fetch: asyncio.Future[list[job.DomainRows]]
    ) -> AsyncIterator[list[job.Outcome]]:
        waiting = True
        async for batch in outcomes(self, pending, fetch):
            if waiting:
                both_read.wait()  # blocks this run's loop: each run has its own thread
                waiting = False
            yield batch

    monkeypatch.setattr(job._Run, "outcomes", outcomes_after_both_read)
    summaries: list[RunSummary] = []

    def worker() -> None:
        resolver = Resolver(nameservers=["127.0.0.1"], port=dns.port, timeout=2.0, cache=False)
        summaries.append(run(config, resolver, DAY + timedelta(hours=1, seconds=45)))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(summaries) == 2
    reports = queued(config)
    assert sorted(q.domain for q in reports) == sorted(domains), "each domain reported exactly once"
    assert all(q.messages == 3 for q in reports)
    assert sum(len(s.reports) for s in summaries) == len(domains)
    assert sum(len(s.claimed_elsewhere) for s in summaries) == len(domains), "the loser of each claim skips"
    assert count(config) == 0
    with session_scope(config.resolved_database_url) as session:
        claims = list(session.scalars(select(DMARCReportClaim)))
    assert len(claims) == len(domains) and all(c.evaluations_deleted for c in claims)


@pytest.mark.postgres
def test_an_evaluation_committed_out_of_id_order_is_reported_not_deleted_unread(
    postgres_url: str,
    tmp_path: Path,
    dns: DNSTestServer,
    resolver: Resolver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL hands out ids at insert and commits in any order: the evaluation given the lower id
    commits last, between the run's read and its delete. It must be read (reported) or left alone."""
    config = migrated(write_config(tmp_path / "pg", database_url=postgres_url, dns_port=dns.port))
    dns.txt("_dmarc.hourly.example", HOURLY)
    when = DAY + timedelta(hours=1, minutes=5)
    inserted, release, committed, read_done = (threading.Event() for _ in range(4))

    def slow_writer() -> None:  # e.g. a store task whose transaction is still open
        with session_factory(config.resolved_database_url)() as session:
            hourly = ev("hourly.example", when, ri=3600, source_ip="192.0.2.7")
            record_evaluation(session, config, Evaluation.from_json(hourly))
            inserted.set()
            release.wait(60)
            session.commit()
        committed.set()

    delete_done = job._Run.delete_done

    def delete_after_the_late_commit(self: job._Run) -> None:
        read_done.set()
        assert committed.wait(60)
        delete_done(self)

    monkeypatch.setattr(job._Run, "delete_done", delete_after_the_late_commit)
    releaser = threading.Thread(target=release_once_read_or_waited_on, args=(config, read_done, release))
    threads = [threading.Thread(target=slow_writer), releaser]
    threads[0].start()
    assert inserted.wait(30)
    store(config, ev("hourly.example", when, ri=3600))  # a higher id, committed first
    threads[1].start()
    summary = run(config, resolver, DAY + timedelta(hours=2, seconds=45))
    for thread in threads:
        thread.join(timeout=60)
    assert len(summary.reports) == 1
    (report,) = queued(config)
    ips = sorted(r["source"]["ip_address"] for r in report.report["records"])
    assert (ips, report.messages, count(config)) == (["192.0.2.10", "192.0.2.7"], 2, 0)


def test_a_run_that_died_after_claiming_is_finished_by_the_next_without_a_second_report(
    config: Config, dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_dmarc.hourly.example", HOURLY)
    store(config, ev("hourly.example", DAY + timedelta(hours=1, minutes=1), ri=3600))
    run_hour = DAY + timedelta(hours=2)
    with session_scope(config.resolved_database_url) as session:
        max_id = session.scalar(select(func.max(DMARCEvaluation.id)))
        session.add(
            DMARCReportClaim(
                policy_domain="hourly.example",
                run_hour=run_hour,
                run_cid="dead",
                max_id=max_id,
                report_id="r",
            )
        )
    # A late evaluation of the same hour, stored after the dead run saw the table.
    store(config, ev("hourly.example", DAY + timedelta(hours=1, minutes=59), ri=3600))
    summary = run(config, resolver, run_hour + timedelta(minutes=1))
    assert summary.reports == [] and summary.claimed_elsewhere == ["hourly.example"]
    assert summary.deleted == 1, "the dead run's claimed evaluation is deleted, not reported again"
    assert count(config) == 1
    assert queued(config) == []
    assert len(run(config, resolver, run_hour + timedelta(hours=1, minutes=1)).reports) == 1
    (late,) = queued(config)
    assert late.messages == 1 and count(config) == 0


# The CLI.


def test_cli_send_reports_now(config_file: Path, config: Config, dns: DNSTestServer) -> None:
    dns.txt("_dmarc.hourly.example", HOURLY)
    store(config, ev("hourly.example", utcnow() - timedelta(hours=2), ri=3600))
    result = CliRunner().invoke(
        main, ["--config", str(config_file), "dmarc", "send-reports", "--now", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert len(summary["reports"]) == 1 and summary["discarded"] == []
    (q,) = queued(config)
    assert q.rows[0].next_attempt <= utcnow()


def test_cli_suppression_list(config_file: Path) -> None:
    def postwarden(*args: str) -> Any:
        return CliRunner().invoke(main, ["--config", str(config_file), "dmarc", "suppress", *args])

    added = postwarden("add", "Reports@Example.NET", "--until", "2099-01-31", "--comment", "bounces")
    assert added.exit_code == 0 and "suppressed reports@example.net until 2099-01-31T23:59:59" in added.output
    listed = postwarden("list", "--json")
    assert [(e["address"], e["comment"]) for e in json.loads(listed.output)] == [
        ("reports@example.net", "bounces")
    ]
    assert "reports@example.net  until 2099-01-31" in postwarden("list").output
    past = postwarden("add", "x@example.net", "--until", "2001-01-01")
    assert past.exit_code == 1 and "--until 2001-01-01 is in the past" in past.output
    bad = postwarden("add", "not-an-address")
    assert bad.exit_code == 1 and "'not-an-address' is not an address" in bad.output
    assert postwarden("remove", "reports@example.net").exit_code == 0
    missing = postwarden("remove", "reports@example.net")
    assert missing.exit_code == 1 and "not on the DMARC reports suppression list" in missing.output
    assert "no suppressed addresses" in postwarden("list").output
    with session_scope(load_config(config_file).resolved_database_url) as session:
        suppress(session, "tlsrpt", "other@example.net", utcnow() + timedelta(days=1))
    assert "no suppressed addresses" in postwarden("list").output, "TLS report suppressions are apart"


# Celery: the beat entry and the task on a real worker.


def test_beat_starts_a_run_every_whole_hour_after_30_to_90_seconds() -> None:
    entry = beat_schedule()["send_dmarc_reports"]
    assert entry["task"] == "tasks.reports.schedule_dmarc_reports"
    assert (entry["schedule"].minute, len(entry["schedule"].hour)) == ({0}, 24)
    assert all(30 <= job.start_delay() <= 90 for _ in range(200))


def test_the_report_task_runs_on_a_worker(
    config_file: Path, config: Config, dns: DNSTestServer, tmp_path: Path
) -> None:
    dns.txt("_dmarc.hourly.example", HOURLY)
    store(config, ev("hourly.example", utcnow() - timedelta(hours=2), ri=3600))
    log = tmp_path / "worker.log"
    with celery_worker(config_file, log):
        client_for(config_file).send_task("tasks.reports.send_dmarc_reports")
        wait_for_text(log, "dmarc report run done: 1 reports queued")
    assert [q.domain for q in queued(config)] == ["hourly.example"]


# From inbound mail to delivered reports and failures.

DELIVERY = """
[delivery]
smtp_port = {port}
connect_timeout = 5
command_timeout = 5
"""


@asynccontextmanager
async def mail_world(
    tmp_path: Path, dns: DNSTestServer, tls_files: tuple[Path, Path], policy: str, peer: PeerHandler
) -> AsyncIterator[tuple[ThreadedSMTP, Peer]]:
    """Our inbound listener, and an SMTP peer as sender.example's MX (publishing `policy`)."""
    with smtp_peer(None, handler=peer) as mx:
        toml = smtp_config_toml(tls_files) + DELIVERY.format(port=mx.port)
        config = migrated(write_config(tmp_path / "e2e", toml, dns_port=dns.port))
        server = await asyncio.to_thread(lambda: ThreadedSMTP(config).start())
        publish_sender_domain(dns, "sender.example", policy)
        dns.add("sender.example", "MX", "10 mx.sender.example.")
        dns.add("mx.sender.example", "A", "127.0.0.1")
        try:
            yield server, mx
        finally:
            await asyncio.to_thread(server.stop)


def receive_mail(server: ThreadedSMTP, count_: int) -> None:
    with smtplib.SMTP("127.0.0.1", server.inbound_port, timeout=10) as client:
        client.ehlo("client.sender.example")
        for _ in range(count_):
            message = make_message("alice@sender.example", "admin@example.org")
            assert client.sendmail("alice@sender.example", ["admin@example.org"], message) == {}
    for handed_on in server.evaluations:
        store_evaluation(server.config, json.loads(json.dumps(handed_on)))
    server.evaluations.clear()


def mailbox(config: Config, name: str) -> list[tuple[Message, bytes]]:
    with session_scope(config.resolved_database_url) as session:
        query = select(Message).join(Mailbox, Message.mailbox_id == Mailbox.id).where(Mailbox.name == name)
        return [(m, (config.data_dir / m.path).read_bytes()) for m in session.scalars(query)]


def report_rows(config: Config) -> list[int]:
    """The queued report rows, made due now: the job ran on a clock an hour ahead of the real one."""
    with session_scope(config.resolved_database_url) as session:
        session.execute(update(OutgoingMessage).values(next_attempt=utcnow()))
        return list(session.scalars(select(OutgoingMessage.id).where(OutgoingMessage.is_dmarc_report)))


async def test_inbound_mail_is_reported_an_hour_later_and_parsedmarc_reads_the_delivered_report(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, tls_files: tuple[Path, Path]
) -> None:
    policy = "v=DMARC1; p=reject; ri=3600; rua=mailto:dmarc@sender.example"
    async with mail_world(tmp_path, dns, tls_files, policy, PeerHandler()) as (server, peer):
        await asyncio.to_thread(receive_mail, server, 3)
        config = server.config
        summary = await send_dmarc_reports(
            config, now=utcnow() + timedelta(hours=1), spacing=timedelta(0), resolver=resolver
        )
        (queue_id,) = report_rows(config)
        delivery = await deliver(config, queue_id, resolver)
    assert delivery.delivered == [queue_id]
    (received,) = peer.received
    assert (received.mail_from, received.rcpt_tos) == (
        "postmaster@mail.example.org",
        ["dmarc@sender.example"],
    )
    parsed = parsedmarc.parse_report_email(received.content, offline=True)
    assert parsed["report_type"] == "aggregate"
    report = parsed["report"]
    assert report["report_metadata"]["report_id"] == summary.reports[0]
    ((record,),) = [report["records"]]
    assert (record["count"], record["source"]["ip_address"]) == (3, "127.0.0.1")
    assert (record["policy_evaluated"]["disposition"], record["policy_evaluated"]["spf"]) == ("pass", "pass")
    # Real SMTP: SPF checked the HELO name too, and RFC 9990 reports only the mfrom result.
    (strict,) = strictly_parsed(attachment(received.content)[1]).records
    assert [(r.scope.value if r.scope else None) for r in strict.auth_results.spf] == ["mfrom"]


async def test_permanent_failure_ends_quietly_in_the_postmaster_dmarc_mailbox_and_suppresses_the_address(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, tls_files: tuple[Path, Path], cid_log: CidLog
) -> None:
    refusing = PeerHandler(rcpt_replies={"dmarc@sender.example": "550 5.1.1 no such mailbox"})
    policy = "v=DMARC1; p=none; ri=3600; rua=mailto:dmarc@sender.example"
    async with mail_world(tmp_path, dns, tls_files, policy, refusing) as (server, _):
        await asyncio.to_thread(receive_mail, server, 1)
        config = server.config
        now = utcnow() + timedelta(hours=1)
        await send_dmarc_reports(config, now=now, spacing=timedelta(0), resolver=resolver)
        (queue_id,) = report_rows(config)
        delivery = await deliver(config, queue_id, resolver)
        assert delivery.failed == [queue_id]
        await asyncio.to_thread(receive_mail, server, 1)
        second = await send_dmarc_reports(
            config, now=now + timedelta(hours=1), spacing=timedelta(0), resolver=resolver
        )
    assert report_rows(config) == [], "never back into the queue"
    assert all(b"Report Domain" not in raw for _, raw in mailbox(config, "Inbox")), "not to the Inbox"
    ((dsn, raw),) = mailbox(config, "Postmaster/dmarc")
    assert dsn.seen, "delivered quietly"
    assert b"Action: failed" in raw and b"dmarc@sender.example" in raw
    with session_scope(config.resolved_database_url) as session:
        assert is_suppressed(session, "dmarc", "dmarc@sender.example")
    assert (second.reports, second.discarded) == ([], ["sender.example"])
    assert cid_log.messages("address=dmarc@sender.example reason=on the suppression list")


def test_the_hourly_run_keeps_only_the_newest_runs(config: Config, resolver: Resolver) -> None:
    """One recorded run an hour must not pile up: the job prunes as every recorded job does."""
    for hour in range(KEPT_RUNS + 2):
        run(config, resolver, utcnow() + timedelta(hours=hour))
    with session_scope(config.resolved_database_url) as session:
        runs = session.scalars(select(JobRun).where(JobRun.job == job.JOB_NAME)).all()
    assert len(runs) == KEPT_RUNS
