"""Beat tasks whose runs are recorded in job_runs under their registry name (app/jobs.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from app.jobs import job_named, recorded_run
from tasks.celery_app import settings


def recorded(name: str) -> Callable[[Callable[[], int]], Callable[[], int]]:
    """Wrap a task that returns a count: its run, outcome ("3 message(s) due") or failure is recorded."""
    job = job_named(name)

    def wrap(task: Callable[[], int]) -> Callable[[], int]:
        @functools.wraps(task)
        def run() -> int:
            with recorded_run(settings().resolved_database_url, job.name) as run:
                count = task()
                run.outcome.append(f"{count} {job.counted}")
            return count

        return run

    return wrap
