"""The periodic jobs, in one registry: the beat schedule (tasks/schedule.py), the status page and
`/metrics` all read their names from here, and each job's run is recorded under `name` in job_runs.

The DMARC and TLS report runs record themselves (app/dmarcreports/job.py, app/tlsreports/job.py,
under the names below); the other jobs are recorded by the task wrapper (tasks/jobruns.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import session_scope
from app.logs import cid_scope, current_cid
from app.models import JobRun
from app.models.base import utcnow

# How many runs of a job job_runs keeps: the minute jobs would otherwise add 1440 rows a day.
KEPT_RUNS = 20


@dataclass(frozen=True)
class Daily:
    """A time of day (UTC) or, without an hour, a minute of every hour: beat turns it into a crontab
    (tasks/schedule.py), so app/ stays free of Celery."""

    minute: int
    hour: int | None = None


@dataclass(frozen=True)
class Job:
    name: str  # in job_runs.job and the `job` label of /metrics
    label: str  # what the status page calls it
    task: str  # the Celery task beat sends
    schedule: float | Daily  # seconds between runs, or a time of every hour or day (UTC)
    counted: str = ""  # what the task's returned count counts, for the recorded outcome
    report: bool = False  # listed under "Reports" on the status page


JOBS: tuple[Job, ...] = (
    Job("sweep_queue", "Outgoing queue sweep", "tasks.mail.sweep_queue", 60.0, "message(s) due"),
    # SPEC R4.3: cached policies are re-fetched about daily (the refresh skips fresh ones).
    Job(
        "refresh_mtasts_policies",
        "MTA-STS policy refresh",
        "tasks.delivery.refresh_mtasts_policies",
        Daily(minute=17),
        "policies refreshed",
    ),
    Job(
        "remove_orphan_files",
        "Orphaned queue file removal",
        "tasks.delivery.remove_orphan_files",
        Daily(minute=47),
        "files removed",
    ),
    # SPEC R2.3: every whole hour; the task starts the run 30 to 90 s later.
    Job(
        "send_dmarc_reports",
        "DMARC reports",
        "tasks.reports.schedule_dmarc_reports",
        Daily(minute=0),
        report=True,
    ),
    # SPEC R5.2: daily, 4 to 6 minutes after 00:00 UTC (the app's timezone is UTC).
    Job(
        "tls_reports",
        "TLS reports",
        "tasks.tlsreports.send_tls_reports",
        Daily(minute=5, hour=0),
        report=True,
    ),
    Job("post_tls_reports", "TLS report POSTs", "tasks.tlsreports.post_tls_reports", 60.0, "reports posted"),
)

JOBS_BY_NAME = {job.name: job for job in JOBS}


def job_named(name: str) -> Job:
    return JOBS_BY_NAME[name]


@contextmanager
def recorded_run(database_url: str, name: str) -> Iterator[list[str]]:
    """Record one run of job `name` (under the current cid, or a fresh one): a row at the start, its
    end and outcome at the end, the oldest runs beyond KEPT_RUNS dropped. The caller appends its
    outcome to the yielded list."""
    job_named(name)  # an unregistered name is a programming error, caught at the first run
    with cid_scope(current_cid.get()) as cid:
        with session_scope(database_url) as session:
            run = JobRun(job=name, cid=cid, started=utcnow())
            session.add(run)
            session.flush()
            run_id = run.id
        outcome: list[str] = []
        try:
            yield outcome
        except Exception as error:
            outcome.append(f"failed: {type(error).__name__}")
            raise
        finally:
            finish_run(database_url, name, run_id, "; ".join(outcome) or "done")


def finish_run(database_url: str, name: str, run_id: int, outcome: str) -> None:
    with session_scope(database_url) as session:
        run = session.get(JobRun, run_id)
        if run is not None:
            run.finished = utcnow()
            run.outcome = outcome
        prune_runs(session, name)


def prune_runs(session: Session, name: str) -> None:
    """Drop the job's runs beyond the newest KEPT_RUNS (every job that records runs calls this)."""
    kept = select(JobRun.id).where(JobRun.job == name).order_by(JobRun.id.desc()).limit(KEPT_RUNS)
    session.execute(delete(JobRun).where(JobRun.job == name, JobRun.id.not_in(kept.scalar_subquery())))
