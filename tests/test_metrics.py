"""Prometheus metrics (app/metrics.py): counted in the processes where things happen, in files each
process writes, and summed by the web process's /metrics; real traffic through the real processes."""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import trustme
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from app.config import load_config
from app.db import session_scope
from app.dns import Resolver
from app.jobs import recorded_run
from app.metrics import JOB_RUNS, JOB_SECONDS, OTHER, REPORTS_SENT, MetricsFiles, tls_policy_type
from app.migrate import upgrade_database
from app.queue.enqueue import Queued, enqueue
from app.queue.outgoing import queue_size
from app.queue.tlspolicy import TLSSettings
from app.web.app import create_app
from tests.imap.conftest import PASSWORD, imap_config
from tests.imap.test_imap_cli import listener_toml, log_lines, start_imap
from tests.reports.test_dmarc_job import DAY, HOURLY, ev, run, store
from tests.smtpserver.test_ratelimit_smtp import smtp_workers
from tests.support.celeryworker import celery_worker, client_for
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import client_tls_context, smtp_config_toml
from tests.support.smtppeers import smtp_peer
from tests.support.waiting import wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# Several processes, one sum.

FORKED_COUNTS = """
import os, sys
from pathlib import Path
from app import metrics
from app.metrics import enable_multiprocess, process_ended
enable_multiprocess(Path(sys.argv[1]), "smtp")
metrics.smtp_session("inbound")  # the parent counts before it forks: not counted again by a child
children = []
for n in (2, 3):
    pid = os.fork()
    if pid == 0:
        for _ in range(n):
            metrics.smtp_reply("inbound", "250 2.0.0 OK")
        metrics.smtp_reply("inbound", "\\x1b[2J250 forged")
        metrics.verdict("accept", "no-bad-signals")
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
    process_ended(pid)
"""


def test_forked_processes_count_into_files_that_the_scrape_sums(tmp_path: Path) -> None:
    root = tmp_path / "metrics"
    stale = root / "smtp" / "counter_1.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by the last run")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", FORKED_COUNTS, str(root)], env=env, check=True, timeout=60)

    assert not stale.exists()  # the service's folder is emptied when it starts
    assert len(list((root / "smtp").glob("counter_*.db"))) == 3  # the parent's and each child's
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsFiles(root))
    scraped = samples(generate_latest(registry).decode())
    assert value(scraped, "postwarden_smtp_sessions_total", listener="inbound") == 1
    assert value(scraped, "postwarden_smtp_replies_total", listener="inbound", code="250") == 5
    assert value(scraped, "postwarden_smtp_replies_total", listener="inbound", code=OTHER) == 2
    assert value(scraped, "postwarden_verdicts_total", action="accept", reason="no-bad-signals") == 2


def test_tls_policy_label_names_the_rule_followed() -> None:
    def settings(**flags: bool) -> TLSSettings:
        base = dict(
            starttls_required=False, verify_pkix=False, verify_dane=False, ignore_verification_errors=False
        )
        return TLSSettings(**{**base, **flags}, server_name="mx.example.net")  # type: ignore[arg-type]

    assert tls_policy_type(None) == "none"
    assert tls_policy_type(settings(verify_dane=True, starttls_required=True)) == "dane"
    assert tls_policy_type(settings(verify_pkix=True, starttls_required=True)) == "mta-sts"
    assert tls_policy_type(settings(verify_pkix=True, ignore_verification_errors=True)) == "mta-sts-testing"
    assert tls_policy_type(settings(starttls_required=True)) == "required"
    assert tls_policy_type(settings()) == "opportunistic"


def counted(metric: MetricWrapperBase, name: str, **labels: str) -> float:
    """A sample of a metric counted in this process (in memory: the tests do not set up files)."""
    found = [s.value for f in metric.collect() for s in f.samples if s.name == name and s.labels == labels]
    return found[0] if found else 0.0


def test_job_runs_are_counted_with_their_outcome_and_duration(url: str) -> None:
    def now() -> tuple[float, float, float]:
        return (
            counted(JOB_RUNS, "postwarden_job_runs_total", job="sweep_queue", outcome="ok"),
            counted(JOB_RUNS, "postwarden_job_runs_total", job="sweep_queue", outcome="failed"),
            counted(JOB_SECONDS, "postwarden_job_run_seconds_count", job="sweep_queue"),
        )

    ok, failed, timed = now()
    with recorded_run(url, "sweep_queue"):
        pass
    with pytest.raises(RuntimeError), recorded_run(url, "sweep_queue"):
        raise RuntimeError("the job failed")
    assert now() == (ok + 1, failed + 1, timed + 2)


def test_sent_dmarc_reports_are_counted_by_kind_and_way(
    config_file: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    config = load_config(config_file)
    dns.txt("_dmarc.hourly.example", HOURLY)
    store(config, ev("hourly.example", DAY + timedelta(minutes=10), ri=3600))
    store(config, ev("hourly.example", DAY + timedelta(minutes=20), ri=3600, source_ip="192.0.2.99"))
    before = counted(REPORTS_SENT, "postwarden_reports_sent_total", kind="dmarc", via="mail")
    summary = run(config, resolver, DAY + timedelta(hours=1, seconds=45))
    assert len(summary.reports) == 1
    assert counted(REPORTS_SENT, "postwarden_reports_sent_total", kind="dmarc", via="mail") == before + 1


# Real traffic: `postwarden smtp` with two workers, a prefork Celery worker delivering to a peer.


def send_inbound(port: int, count: int) -> None:
    """`count` messages to admin@, each in a session of its own, and one refused recipient."""
    for i in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("someone@example.com", ["admin@example.org"], f"Subject: {i}\r\n\r\nhello\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.com")
        client.mail("someone@example.com")
        assert client.rcpt("nobody@example.org")[0] == 550


def test_real_traffic_moves_the_scraped_counters(tmp_path: Path, dns: DNSTestServer) -> None:
    dns.add("example.net", "MX", "10 mx.example.net.")
    dns.add("mx.example.net", "A", "127.0.0.1")
    with smtp_peer() as peer:
        extra = smtp_config_toml(None) + f"\n[delivery]\nsmtp_port = {peer.port}\n"
        config_file = write_config(tmp_path / "config", extra, dns_port=dns.port)
        config = load_config(config_file)
        upgrade_database(config.resolved_database_url)
        web = TestClient(create_app(config))
        with smtp_workers(config_file, tmp_path / "smtp.log", workers=2) as port:
            before = samples(web.get("/metrics").text)
            send_inbound(port, 3)
            after = samples(web.get("/metrics").text)

        def inbound(name: str, **labels: str) -> float:
            return moved(before, after, f"postwarden_{name}", listener="inbound", **labels)

        assert inbound("smtp_sessions_total") == 4
        assert inbound("smtp_replies_total", code="220") == 4
        assert inbound("smtp_replies_total", code="550") == 1
        assert inbound("smtp_replies_total", code="354") == 3
        assert inbound("smtp_transactions_total", result="accepted") == 3
        assert inbound("smtp_data_seconds_count") == 3
        assert (
            moved(before, after, "postwarden_verdicts_total", action="accept", reason="no-bad-signals") == 3
        )

        with session_scope(config.resolved_database_url) as session:
            for i in range(2):
                enqueue(
                    session,
                    config,
                    Queued(b"Subject: out\r\n\r\nbody\r\n", "admin@example.org", [f"r{i}@example.net"]),
                )
        assert value(samples(web.get("/metrics").text), "postwarden_outgoing_queue_size") == 2
        client = client_for(config_file)
        with celery_worker(config_file, tmp_path / "worker.log", concurrency=2):
            client.send_task("tasks.mail.sweep_queue")

            def delivered() -> bool:
                with session_scope(config.resolved_database_url) as session:
                    return queue_size(session) == 0

            wait_until(delivered, timeout=30, what="queue delivered")
            wait_until(lambda: len(peer.handler.received) == 2, what="peer received both")
            scraped = samples(web.get("/metrics").text)
    assert value(scraped, "postwarden_deliveries_total", result="delivered", tls_policy="opportunistic") == 2
    assert value(scraped, "postwarden_job_runs_total", job="sweep_queue", outcome="ok") >= 1
    assert value(scraped, "postwarden_outgoing_queue_size") == 0
    assert value(scraped, "postwarden_outgoing_queue_oldest_age_seconds") == 0


def test_imap_sessions_are_counted_by_postwarden_imap(
    tmp_path: Path, tls_files: tuple[Path, Path], tls_ca: trustme.CA
) -> None:
    imap_config(tmp_path / "config")
    path = tmp_path / "config" / "postwarden.toml"
    path.write_text(path.read_text() + listener_toml("imaps", *tls_files))
    web = TestClient(create_app(load_config(path)))
    process = start_imap(path)
    try:
        (port,) = log_lines(process, r"imap listening on 127\.0\.0\.1:(\d+)")
        for _ in range(2):
            client = imaplib.IMAP4_SSL(
                "127.0.0.1", int(port), ssl_context=client_tls_context(tls_ca), timeout=10
            )
            assert client.login("admin", PASSWORD)[0] == "OK"
            client.logout()
        scraped = samples(web.get("/metrics").text)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert value(scraped, "postwarden_imap_sessions_total", listener="imaps") == 2
