"""One registry of periodic jobs (app/jobs.py): the beat schedule, the names the jobs record their runs
under, the status page and /metrics agree; runs are recorded and their number bounded."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from app import jobs
from app.config import load_config
from app.db import session_scope
from app.dmarcreports import job as dmarc_job
from app.jobs import JOBS, KEPT_RUNS, Run, recorded_run, report_run
from app.models import JobRun
from app.models.base import utcnow
from app.tlsreports import job as tls_job
from app.web.app import create_app
from tasks.schedule import beat_schedule, celery_schedule
from tests.support.celeryworker import celery_worker, client_for, wait_for_text
from tests.support.dnsserver import DNSTestServer
from tests.support.webclient import log_in, write_web_config
from tests.tasks.test_celery import queue_rows


def test_beat_schedule_is_the_registry() -> None:
    schedule = beat_schedule()
    assert sorted(schedule) == sorted(job.name for job in JOBS)
    for job in JOBS:
        assert schedule[job.name] == {"task": job.task, "schedule": celery_schedule(job.schedule)}
    assert len({job.name for job in JOBS}) == len({job.label for job in JOBS}) == len(JOBS)


def test_report_jobs_record_runs_under_their_registry_names() -> None:
    reports = {job.name for job in JOBS if job.report}
    assert reports == {dmarc_job.JOB_NAME, tls_job.JOB_NAME}


def test_a_run_is_recorded_with_its_outcome_and_old_runs_are_dropped(sqlite_url: str) -> None:
    for i in range(KEPT_RUNS + 5):
        with recorded_run(sqlite_url, "sweep_queue") as run:
            run.outcome.append(f"{i} message(s) due")
    with pytest.raises(RuntimeError), recorded_run(sqlite_url, "post_tls_reports"):
        raise RuntimeError("boom")
    with session_scope(sqlite_url) as session:
        sweeps = session.scalars(select(JobRun).where(JobRun.job == "sweep_queue").order_by(JobRun.id)).all()
        assert len(sweeps) == KEPT_RUNS
        assert sweeps[-1].outcome == f"{KEPT_RUNS + 4} message(s) due" and sweeps[-1].finished is not None
        failed = session.scalars(select(JobRun).where(JobRun.job == "post_tls_reports")).one()
        assert failed.outcome == "failed: RuntimeError" and failed.finished is not None
    with pytest.raises(KeyError):
        jobs.job_named("not_a_job")


@dataclass
class Summary:
    cid: str
    reports: int = 0

    def outcome(self) -> str:
        return f"{self.reports} report(s)"


def test_a_report_run_is_recorded_on_its_clock_with_its_summary_or_as_failed(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The skeleton both report jobs run in (app/jobs.py report_run)."""
    clock = utcnow() + timedelta(days=3)  # a run by hand, ahead of time
    log = logging.getLogger("tests.report_run")

    async def work(run: Run) -> Summary:
        assert run.started == clock
        return Summary(run.cid, 2)

    async def failing(run: Run) -> Summary:
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO, logger=log.name):
        summary = asyncio.run(
            report_run(sqlite_url, "tls_reports", work, log=log, done="done: %s", clock=lambda _: clock)
        )
    with pytest.raises(RuntimeError):
        asyncio.run(report_run(sqlite_url, "send_dmarc_reports", failing, log=log, done="done: %s"))
    assert "done: 2 report(s)" in caplog.messages
    with session_scope(sqlite_url) as session:
        tls = session.scalars(select(JobRun).where(JobRun.job == "tls_reports")).one()
        assert (tls.cid, tls.started, tls.outcome) == (summary.cid, clock, "2 report(s)")
        assert tls.finished is not None and tls.finished >= clock
        dmarc = session.scalars(select(JobRun).where(JobRun.job == "send_dmarc_reports")).one()
        assert dmarc.outcome == "failed: RuntimeError" and dmarc.finished is not None


def test_the_sweep_task_records_its_run_on_a_real_worker(config_file: Path, tmp_path: Path) -> None:
    queue_rows(config_file, due=2, later=1)
    log = tmp_path / "worker.log"
    with celery_worker(config_file, log):
        client_for(config_file).send_task("tasks.mail.sweep_queue")
        wait_for_text(log, "queue sweep: 2 message(s) due")
        wait_for_text(log, "succeeded")
    with session_scope(load_config(config_file).resolved_database_url) as session:
        run = session.scalars(select(JobRun).where(JobRun.job == "sweep_queue")).one()
        assert run.outcome == "2 message(s) due" and run.finished is not None


def test_status_page_and_metrics_name_every_registered_job(tmp_path: Path, dns: DNSTestServer) -> None:
    config = write_web_config(tmp_path / "config", dns.port, {"admin": "a long enough password"})
    now = utcnow()
    with session_scope(config.resolved_database_url) as session:
        session.add(JobRun(job=tls_job.JOB_NAME, cid="t1", started=now - timedelta(minutes=5), finished=now,
                           outcome="2 reports scheduled"))
    with TestClient(create_app(config), base_url="http://127.0.0.1", follow_redirects=False) as client:
        log_in(client, "admin", "a long enough password", "/")
        page = client.get("/").text
        scrape = client.get("/metrics").text
    assert page.count('class="job-run"') == len(JOBS)
    for job in JOBS:
        assert job.label in page and f"<code>{job.name}</code>" in page
        ran = 1 if job.name == tls_job.JOB_NAME else 0
        assert f'postwarden_job_ever_ran{{job="{job.name}"}} {ran}.0' in scrape
    # The TLS report run shows under Reports, not as "never run".
    reports = page.split("<h2>Reports</h2>", 1)[1].split("<h2>", 1)[0]
    assert "2 reports scheduled" in reports and "never run" in reports  # DMARC has not run
    assert f'postwarden_job_last_finished_timestamp_seconds{{job="{tls_job.JOB_NAME}"}}' in scrape
