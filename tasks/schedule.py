"""The beat schedule, built from the job registry (app/jobs.py)."""

from __future__ import annotations

from typing import Any

from app.jobs import JOBS


def beat_schedule() -> dict[str, dict[str, Any]]:
    return {job.name: {"task": job.task, "schedule": job.schedule} for job in JOBS}
