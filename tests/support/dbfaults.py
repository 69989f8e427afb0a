"""Database faults as they happen in production, reproduced without mocks (the tests run as root).

`pool_connection_opened_read_only`: SQLite opens a file its process cannot write read-only, silently,
and that connection refuses every write even after the file is writable again. Root may write any
file, so the connection is opened from a thread whose filesystem uid is nobody's (setfsuid is per
thread on Linux and drops root's file capabilities for that thread only).

`postgres_read_only`: `ALTER DATABASE ... SET default_transaction_read_only`, which new sessions take.
"""

from __future__ import annotations

import ctypes
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from app.db import engine_for

NOBODY = 65534


def traversable_dir() -> Path:
    """A directory that a thread with nobody's filesystem uid can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pw-dbfault-"))
    path.chmod(0o755)
    return path


def pool_connection_opened_read_only(url: str) -> None:
    """Leave in `url`'s pool one connection that SQLite opened read-only (the file must be 0444 now)."""
    libc = ctypes.CDLL(None, use_errno=True)
    failure: list[BaseException] = []

    def open_as_nobody() -> None:
        libc.setfsuid(NOBODY)
        try:
            with engine_for(url).connect() as connection:
                connection.execute(text("SELECT 1"))
        except BaseException as e:  # reported to the test's thread below
            failure.append(e)
        finally:
            libc.setfsuid(0)

    engine_for(url).dispose()
    thread = threading.Thread(target=open_as_nobody)
    thread.start()
    thread.join(timeout=30)
    assert not failure, failure


@contextmanager
def admin_connection(url: str) -> Iterator[object]:
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            yield connection
    finally:
        admin.dispose()


def postgres_read_only(url: str, read_only: bool, *, end_sessions: bool) -> None:
    """Set the database's default_transaction_read_only; `end_sessions` ends its open sessions."""
    name = make_url(url).database
    with admin_connection(url) as connection:
        value = "on" if read_only else "off"
        connection.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}'))
        if end_sessions:
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": name},
            )
