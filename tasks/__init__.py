"""Celery app and tasks (`celery -A tasks worker|beat|flower`). Thin: the work is in app/."""

from tasks.celery_app import app

__all__ = ["app"]
