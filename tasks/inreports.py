"""Incoming report tasks (SPEC R6.1): parse and store the report of a stored message. Thin: the work is
app/inreports/intake.py's."""

from __future__ import annotations

from app.inreports.intake import ReportMessage, parse_stored_report
from tasks.celery_app import app, settings


@app.task(name="tasks.inreports.parse_report_message")
def parse_report_message(file_id: str, kind: str) -> str:
    """What became of the message's report: stored, duplicate (a second run), refused or missing."""
    return parse_stored_report(settings(), ReportMessage.from_args(file_id, kind))
