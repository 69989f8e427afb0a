"""Incoming report tasks (SPEC R6.1): parse and store the report of a stored message, and the sweep for
report messages whose hand-off was lost. Thin: the work is app/inreports/intake.py's."""

from __future__ import annotations

from app.inreports.intake import ReportMessage, parse_stored_report, sweep_report_messages
from tasks.celery_app import app, settings
from tasks.jobruns import recorded


@app.task(name="tasks.inreports.parse_report_message")
def parse_report_message(file_id: str, kind: str) -> str:
    """What became of the message's report: stored, duplicate (a second run), refused or missing."""
    return parse_stored_report(settings(), ReportMessage.from_args(file_id, kind))


@app.task(name="tasks.inreports.sweep_report_messages")
@recorded("sweep_report_messages")
def sweep_report_messages_task() -> int:
    """Parse report messages whose hand-off was lost; how many."""
    return sweep_report_messages(settings())
