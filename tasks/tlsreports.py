"""TLS report tasks (SPEC R5): the daily job and the POSTs to https rua. Thin: the work is in app/."""

from __future__ import annotations

import asyncio
import logging

from app.models.base import utcnow
from app.tlsreports.job import send_tls_reports
from app.tlsreports.posts import post_due_reports
from tasks.celery_app import app, settings
from tasks.jobruns import recorded

log = logging.getLogger(__name__)


@app.task(name="tasks.tlsreports.send_tls_reports")
def send_tls_reports_task() -> list[str]:
    """Reports for the previous UTC day(s); the ids of the reports scheduled."""
    summary = asyncio.run(send_tls_reports(settings()))  # on the database's clock
    return summary.reports


@app.task(name="tasks.tlsreports.post_tls_reports")
@recorded("post_tls_reports")
def post_tls_reports_task() -> int:
    """POST the reports to https rua whose time has come; how many were accepted."""
    summary = asyncio.run(post_due_reports(settings(), utcnow()))
    return len(summary.posted)
