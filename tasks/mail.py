"""Tasks around mail: DMARC evaluation bookkeeping and the outgoing queue sweep."""

from __future__ import annotations

import logging
from typing import Any

from app.db import session_scope
from app.dmarcreports.evaluations import store_evaluation
from app.queue.outgoing import count_due
from tasks.celery_app import app, settings

log = logging.getLogger(__name__)


@app.task(name="tasks.mail.record_dmarc_evaluation")
def record_dmarc_evaluation(evaluation: dict[str, Any]) -> bool:
    """Store a DMARC evaluation for aggregate reporting (SPEC R2.1/R2.2); whether it was stored."""
    return store_evaluation(settings(), evaluation)


@app.task(name="tasks.mail.sweep_queue")
def sweep_queue() -> int:
    """Find queue rows that are due (DESIGN.md: the DB is the truth, the broker only wakes workers)."""
    with session_scope(settings().resolved_database_url) as session:
        due = count_due(session)
    log.info("queue sweep: %d message(s) due", due)
    return due
