"""The composition root: the one module of app/ that reaches into tasks/ (and through it Celery, kombu).

app/ holds the mail logic and never imports Celery, kombu or tasks/ (tests/test_layers.py checks
every other module); the commands that start or check Celery's side get it through these functions.
Each imports when called, so the other commands do not load Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI loads the SMTP code only for `postwarden smtp`
    from app.smtpserver.handoff import Publish


def celery_publish() -> Publish:
    """How `postwarden smtp`'s task publisher child hands work to Celery."""
    from tasks.handoff import publish

    return publish


def broker_problem(broker_url: str) -> str | None:
    """Why Celery could not use this broker URL (no transport for its scheme), or None."""
    from tasks.celery_app import broker_problem

    return broker_problem(broker_url)
