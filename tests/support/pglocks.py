"""Seeing, from a test, that a PostgreSQL session waits for a lock another transaction holds."""

from __future__ import annotations

import time
from threading import Event

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


def release_once_read_or_waited_on(config: Config, read_done: Event, release: Event) -> None:
    """Set `release` (a slow writer's cue to commit) once the run under test has read, or once some
    session waits for the writer's lock; at the latest after a minute, so a test cannot hang."""
    deadline = time.monotonic() + 60
    while not (read_done.is_set() or waiting_for_a_lock(config)) and time.monotonic() < deadline:
        time.sleep(0.02)
    release.set()
