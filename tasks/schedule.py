"""The beat schedule, built from the job registry (app/jobs.py)."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from app.jobs import JOBS, Daily


def beat_schedule() -> dict[str, dict[str, Any]]:
    return {job.name: {"task": job.task, "schedule": celery_schedule(job.schedule)} for job in JOBS}


def celery_schedule(schedule: float | Daily) -> float | crontab:
    if isinstance(schedule, Daily):
        return crontab(minute=schedule.minute, hour="*" if schedule.hour is None else schedule.hour)
    return schedule
