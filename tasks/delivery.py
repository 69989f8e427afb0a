"""Delivery tasks (SPEC §4): deliver a queue row with its batch, refresh cached MTA-STS policies.

Thin: the work is in app/queue/. A task carries only a row id; the row in the database says what
to do, so a repeated, late or lost task message changes nothing (the sweep sends another).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from functools import cache

from app.dns import Resolver, resolver_from_config
from app.logs import cid_scope
from app.queue.deliver import deliver
from app.queue.mtasts import refresh_policies
from app.queue.mtastsfetch import MTASTSSettings
from app.queue.outgoing import remove_orphans
from tasks.celery_app import app, settings
from tasks.jobruns import recorded

log = logging.getLogger(__name__)

# Far longer than any enqueueing transaction between writing a file and committing its rows.
ORPHAN_AGE = timedelta(hours=1)


@cache
def resolver() -> Resolver:
    """One resolver per worker process, so its cache serves every delivery the process makes."""
    return resolver_from_config(settings().dns)


@app.task(name="tasks.delivery.deliver")
def deliver_task(queue_id: int) -> int:
    """Deliver the row and the due rows for the same domain; how many were delivered."""
    with cid_scope():
        report = asyncio.run(deliver(settings(), queue_id, resolver()))
    if report.more_due is not None:
        deliver_task.delay(report.more_due)  # a full batch: more is waiting, no need to wait for the sweep
    return len(report.delivered)


@app.task(name="tasks.delivery.refresh_mtasts_policies")
@recorded("refresh_mtasts_policies")
def refresh_mtasts_policies() -> int:
    """Refresh the cached MTA-STS policies (SPEC R4.3); how many were refreshed."""
    config = settings()
    with cid_scope():
        summary = asyncio.run(
            refresh_policies(
                config.resolved_database_url, resolver(), MTASTSSettings.from_config(config.delivery)
            )
        )
        log.info(
            "mta-sts refresh: checked=%d refreshed=%d deleted=%d failed=%d",
            summary.checked,
            summary.refreshed,
            summary.deleted,
            summary.failed,
        )
    return summary.refreshed


@app.task(name="tasks.delivery.remove_orphan_files")
@recorded("remove_orphan_files")
def remove_orphan_files_task() -> int:
    """Delete queue content (files or database rows) no row needs any more, older than an hour (crash
    leftovers); how many."""
    with cid_scope():
        removed = remove_orphans(settings(), ORPHAN_AGE)
        if removed:
            log.info("queue: removed %d orphaned message content(s)", removed)
    return removed
