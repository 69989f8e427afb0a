"""The periodic jobs, in one registry: the beat schedule (tasks/schedule.py), the status page and
`/metrics` all read their names from here, and each job's run is recorded under `name` in job_runs.

Every run is recorded by `recorded_run`: the report jobs through `report_run`, the skeleton the DMARC
and TLS report runs share (app/dmarcreports/job.py, app/tlsreports/job.py, under the names below),
the other jobs through the task wrapper (tasks/jobruns.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy import Connection, delete, false, func, select, update
from sqlalchemy.orm import Session

from app import metrics
from app.db import session_scope
from app.logs import cid_scope, current_cid
from app.models import JobRun
from app.models.base import utcnow

# How many runs of a job job_runs keeps: the minute jobs would otherwise add 1440 rows a day.
KEPT_RUNS = 20
# The report jobs' names, which their runs are recorded under (SPEC §2 and §5).
DMARC_REPORTS = "send_dmarc_reports"
TLS_REPORTS = "tls_reports"


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
    # SPEC R3.1: Rejects keeps messages to an age and a count ([rejects]).
    Job(
        "remove_old_rejects",
        "Rejects cleanup",
        "tasks.mailboxes.remove_old_rejects",
        Daily(minute=23),
        "message(s) removed",
    ),
    # SPEC R2.3: every whole hour; the task starts the run 30 to 90 s later.
    Job(
        DMARC_REPORTS,
        "DMARC reports",
        "tasks.reports.schedule_dmarc_reports",
        Daily(minute=0),
        report=True,
    ),
    # SPEC R5.2: daily, 4 to 6 minutes after 00:00 UTC (the app's timezone is UTC).
    Job(
        TLS_REPORTS,
        "TLS reports",
        "tasks.tlsreports.send_tls_reports",
        Daily(minute=5, hour=0),
        report=True,
    ),
    Job("post_tls_reports", "TLS report POSTs", "tasks.tlsreports.post_tls_reports", 60.0, "reports posted"),
    # SPEC R6.1: incoming reports whose parse hand-off the broker lost.
    Job(
        "sweep_report_messages",
        "Incoming report sweep",
        "tasks.inreports.sweep_report_messages",
        Daily(minute=37),
        "report message(s) parsed",
    ),
)

JOBS_BY_NAME = {job.name: job for job in JOBS}


def job_named(name: str) -> Job:
    return JOBS_BY_NAME[name]


@dataclass
class Run:
    """One run as it goes: its cid, its start (the run's clock) and what it did, as it will be recorded."""

    cid: str
    started: datetime
    outcome: list[str] = field(default_factory=list)


# Gives a run its start in the transaction that records it (see recorded_run).
Clock = Callable[[Session], datetime]


@contextmanager
def recorded_run(database_url: str, name: str, clock: Clock | None = None) -> Iterator[Run]:
    """Record one run of job `name` (under the current cid, or a fresh one): a row at the start, its
    end and outcome at the end, the oldest runs beyond KEPT_RUNS dropped. The caller appends its
    outcome to the run's `outcome`; a run that raises is recorded as failed.

    `clock`, if given, is called in the transaction that inserts the row, after the insert (on SQLite
    that transaction then holds the write lock): what it returns is the run's start (the TLS report
    job takes the database's date there, once the writers of its table are held back)."""
    job_named(name)  # an unregistered name is a programming error, caught at the first run
    with cid_scope(current_cid.get()) as cid:
        run_id, started = _start_run(database_url, name, cid, clock)
        run = Run(cid, started)
        clock_started, failed = time.monotonic(), False
        try:
            yield run
        except Exception as error:
            failed = True
            run.outcome.append(f"failed: {type(error).__name__}")
            raise
        finally:
            _finish_run(database_url, name, run_id, "; ".join(run.outcome) or "done")
            metrics.job_run(name, failed, time.monotonic() - clock_started)


def _start_run(database_url: str, name: str, cid: str, clock: Clock | None) -> tuple[int, datetime]:
    with session_scope(database_url) as session:
        row = JobRun(job=name, cid=cid, started=utcnow())
        session.add(row)
        session.flush()
        if clock is not None:
            row.started = clock(session)
        return row.id, row.started


def _finish_run(database_url: str, name: str, run_id: int, outcome: str) -> None:
    with session_scope(database_url) as session:
        run = session.get(JobRun, run_id)
        if run is not None:
            run.finished = max(utcnow(), run.started)  # a run's clock may be ahead (tests, runs by hand)
            run.outcome = outcome
        _prune_runs(session, name)


class RunSummary(Protocol):
    """What a report run returns: the run's cid and its outcome in one line (recorded and logged)."""

    cid: str

    def outcome(self) -> str: ...


Summary = TypeVar("Summary", bound=RunSummary)


async def report_run(
    database_url: str,
    name: str,
    work: Callable[[Run], Awaitable[Summary]],
    *,
    log: logging.Logger,
    done: str,
    clock: Clock | None = None,
) -> Summary:
    """One run of a report job, the skeleton both share: under a cid of its own (every line it logs
    carries it), recorded in job_runs with its summary's outcome, logged as `done` % outcome."""
    with cid_scope(), recorded_run(database_url, name, clock) as run:
        summary = await work(run)
        run.outcome.append(summary.outcome())
        log.info(done, summary.outcome())
        return summary


def _prune_runs(session: Session, name: str) -> None:
    """Drop the job's runs beyond the newest KEPT_RUNS (at the end of every recorded run)."""
    kept = select(JobRun.id).where(JobRun.job == name).order_by(JobRun.id.desc()).limit(KEPT_RUNS)
    session.execute(delete(JobRun).where(JobRun.job == name, JobRun.id.not_in(kept.scalar_subquery())))


def latest_runs(session: Session) -> list[JobRun]:
    """The latest run of each job that ever ran, by job name (the status page and /metrics)."""
    latest = select(func.max(JobRun.id)).group_by(JobRun.job).scalar_subquery()
    return list(session.scalars(select(JobRun).where(JobRun.id.in_(latest)).order_by(JobRun.job)))


def probe_write(connection: Connection) -> None:
    """Take the database's write lock on a migrated table, changing no row (the caller rolls back):
    the web health check's proof that the database takes writes, not just reads."""
    connection.execute(update(JobRun).where(false()).values(job=JobRun.job))
