"""Seeing, from a test, that a PostgreSQL session waits for a lock another transaction holds."""

from __future__ import annotations

from sqlalchemy import text

from app.config import Config
from app.db import session_scope


def waiting_for_a_lock(config: Config) -> bool:
    """Whether some session of the config's database waits for a lock now."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with session_scope(config.resolved_database_url) as session:
        return bool(session.scalar(text(query)))
