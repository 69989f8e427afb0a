"""DMARC report tasks (SPEC R2.3): the hourly run, started 30 to 90 s after the whole hour. Thin: the
work is in app/dmarcreports/."""

from __future__ import annotations

import asyncio

from app.dmarcreports.job import send_dmarc_reports, start_delay
from tasks.celery_app import app, settings


@app.task(name="tasks.reports.schedule_dmarc_reports")
def schedule_dmarc_reports() -> None:
    """Beat calls this at the whole hour; the run itself starts after the jitter, holding no worker."""
    send_dmarc_reports_task.apply_async(countdown=start_delay())


@app.task(name="tasks.reports.send_dmarc_reports")
def send_dmarc_reports_task() -> list[str]:
    """One run; the ids of the reports queued."""
    return asyncio.run(send_dmarc_reports(settings())).reports
