"""What the status page and /metrics show: mail stored today, the outgoing queue, periodic job runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

from sqlalchemy.orm import Session

from app.jobs import JOBS, Job, latest_runs
from app.queue.outgoing import count_due, size_and_oldest
from app.store.mailboxes import count_received_since

# The report jobs the status page names first (SPEC §2 and §5), by their registry name.
REPORT_JOBS = {job.name: job.label for job in JOBS if job.report}


@dataclass(frozen=True)
class JobStatus:
    job: str
    started: datetime
    finished: datetime | None
    outcome: str | None


@dataclass(frozen=True)
class ServerStatus:
    messages_today: int
    queue_size: int
    queue_due: int
    oldest_queued: datetime | None
    # The latest run of each job that ever ran, by job name.
    last_runs: dict[str, JobStatus]

    @property
    def periodic(self) -> list[tuple[Job, JobStatus | None]]:
        """Every registered job, in registry order, with its latest run if it ever ran."""
        return [(job, self.last_runs.get(job.name)) for job in JOBS]


def server_status(session: Session, now: datetime) -> ServerStatus:
    """The counts as of `now` (aware, UTC); "today" is the UTC day."""
    midnight = datetime.combine(now.date(), time.min, tzinfo=now.tzinfo)
    messages_today = count_received_since(session, midnight)
    queue_size, oldest = size_and_oldest(session)
    return ServerStatus(
        messages_today=messages_today,
        queue_size=queue_size,
        queue_due=count_due(session, now),  # the sweep's count: rows a live lease holds are not due
        oldest_queued=oldest,
        last_runs=last_job_runs(session),
    )


def report_runs(last_runs: dict[str, JobStatus]) -> dict[str, JobStatus | None]:
    """The report jobs' latest runs (None: never ran), by label: the status and outgoing pages."""
    return {label: last_runs.get(job) for job, label in REPORT_JOBS.items()}


def last_job_runs(session: Session) -> dict[str, JobStatus]:
    runs = latest_runs(session)
    return {run.job: JobStatus(run.job, run.started, run.finished, run.outcome) for run in runs}
