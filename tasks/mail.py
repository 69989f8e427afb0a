"""Tasks around mail: DMARC evaluation bookkeeping and the outgoing queue sweep."""

from __future__ import annotations

import logging
from typing import Any

from app.db import session_scope
from app.dmarcreports.evaluations import store_evaluations
from app.queue.outgoing import count_due, due_wakeups
from tasks.celery_app import app, settings
from tasks.delivery import deliver_task
from tasks.jobruns import recorded

log = logging.getLogger(__name__)


@app.task(name="tasks.mail.record_dmarc_evaluation")
def record_dmarc_evaluation(*evaluations: dict[str, Any]) -> int:
    """Store DMARC evaluations (each Evaluation.to_json()) for aggregate reporting (SPEC R2.1/R2.2); how
    many were stored. The SMTP process sends what it has gathered as one task (tasks/handoff.py): one
    broker message, one transaction."""
    return store_evaluations(settings(), evaluations)


@app.task(name="tasks.mail.sweep_queue")
@recorded("sweep_queue")
def sweep_queue() -> int:
    """Wake workers for due rows no worker holds (DESIGN.md: the DB is the truth, the broker only
    wakes workers): one deliver task per batch of a recipient domain. A lost task message, a broker
    restart or a killed worker (its lease expires) thus only delays mail."""
    config = settings()
    with session_scope(config.resolved_database_url) as session:
        due = count_due(session)
        wakeups = due_wakeups(session, config.delivery.batch_size)
    for queue_id in wakeups:
        deliver_task.delay(queue_id)
    log.info("queue sweep: %d message(s) due, %d delivery task(s) sent", due, len(wakeups))
    return due
