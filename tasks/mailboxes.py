"""Mailbox upkeep tasks: the hourly cleanup of each account's Rejects mailbox (SPEC R3.1).

Thin: the work is in app/store/mailboxes.py.
"""

from __future__ import annotations

from app.store.mailboxes import remove_old_rejects
from tasks.celery_app import app, settings
from tasks.jobruns import recorded


@app.task(name="tasks.mailboxes.remove_old_rejects")
@recorded("remove_old_rejects")
def remove_old_rejects_task() -> int:
    """Remove rejects older than `[rejects] keep_days` or beyond `keep_max` per account; how many."""
    return remove_old_rejects(settings())
