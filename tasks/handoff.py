"""The SMTP process's hand-offs to Celery, in one place: the task publisher child
(app/smtpserver/handoff.py) calls `publish` with what has gathered. Evaluations cross the broker in
their one serialised form, Evaluation.to_json(); the task reads them back with Evaluation.from_json.
A report message crosses as its file id and kind (ReportMessage.from_args reads them back).
"""

from __future__ import annotations

import logging
from typing import Any

from app.smtpserver.handoff import Batch

log = logging.getLogger(__name__)


def publish(batch: Batch) -> None:
    """Publish a batch: one record_dmarc_evaluation task for all its evaluations, one parse task per
    report message (each idempotent on its own), one queue sweep for any number of wake-ups. A broker
    failure is logged and that work dropped (best effort: a report message stays in its mailbox)."""
    # Imported here: the SMTP supervisor names this function for its child, and only the child (which
    # has set POSTWARDEN_CONFIG by now) should load Celery.
    from tasks.inreports import parse_report_message
    from tasks.mail import record_dmarc_evaluation, sweep_queue

    if batch.evaluations:
        domains = ", ".join(sorted({e.policy_domain for e in batch.evaluations}))
        count = len(batch.evaluations)
        # An explicit argsrepr spares Celery a safe repr of every dict.
        _send(
            record_dmarc_evaluation,
            f"{count} dmarc evaluation(s) ({domains})",
            args=tuple(e.to_json() for e in batch.evaluations),
            argsrepr=f"({count} evaluations)",
        )
    for report in batch.reports:
        _send(parse_report_message, f"report message {report.file_id}", args=(report.file_id, report.kind))
    if batch.wake_queue:
        _send(sweep_queue, "queue wake-up")


def _send(task: Any, what: str, **options: Any) -> None:
    try:
        task.apply_async(retry=False, **options)
    except Exception as error:
        log.error("%s not published: %s", what, error)
