"""Database engine and sessions: SQLite by default, PostgreSQL by URL.

Only the migrations (`alembic upgrade head`, `postwarden quickstart`) create a SQLite file: every other
process opening a missing one would get an empty database and fail later with obscure errors.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, CursorResult, Engine, Result, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_TIMEOUT = 30  # seconds a statement waits for another process's write lock
PG_READ_ONLY_TRANSACTION = "25006"  # SQLSTATE read_only_sql_transaction
MISSING_DATABASE_HINT = "create it with `alembic upgrade head` (or `postwarden quickstart` for a new setup)"


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # WAL lets the web and CLI read while the SMTP process writes; synchronous=FULL keeps a
    # committed row durable across power loss, which the 250 reply promises (SPEC R1.6).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, *, create: bool = False) -> Engine:
    """An engine for `url`; a SQLite file must exist unless `create` (the migrations only)."""
    if url.startswith("sqlite"):
        path = _sqlite_file(url)
        if path is None or create:
            engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT})
        else:
            engine = create_engine(url, creator=_open_existing(path))
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    event.listen(engine, "handle_error", _discard_read_only_connection)
    return engine


def _sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names; None for an in-memory database or a URI given to SQLite as it is."""
    parsed = make_url(url)
    if parsed.database in (None, "", ":memory:") or parsed.query.get("uri"):
        return None
    return parsed.database


def _open_existing(path: str) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        # The check gives the clear message; mode=rw makes SQLite itself refuse to create the file.
        if not os.path.exists(path):
            raise sqlite3.OperationalError(f"database file {path} does not exist; {MISSING_DATABASE_HINT}")
        uri = f"file:{quote(os.path.abspath(path))}?mode=rw"
        return sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT, check_same_thread=False)

    return connect


def _discard_read_only_connection(context: ExceptionContext) -> None:
    """Treat "read-only" errors as a lost connection, so the pool opens new ones.

    They belong to the connection, not the statement: SQLite opens a file it cannot write read-only
    and stays so after the file is writable again; a PostgreSQL session keeps the
    default_transaction_read_only it started with. Kept in the pool, such a connection failed every
    write until a restart."""
    error = context.original_exception
    sqlite_code = getattr(error, "sqlite_errorcode", None)
    if (sqlite_code is not None and sqlite_code & 0xFF == sqlite3.SQLITE_READONLY) or (
        getattr(error, "sqlstate", None) == PG_READ_ONLY_TRANSACTION
    ):
        context.is_disconnect = True


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine (and pool) per URL per process."""
    return make_engine(url)


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def affected_rows(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE changed: `Session.execute` is typed as returning a plain `Result`,
    but a DML statement's result is a `CursorResult`, which alone counts them."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"{type(result).__name__} is not the result of an UPDATE or DELETE")
    return result.rowcount


def upsert_insert(session: Session | Connection, table: Any) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which has `on_conflict_do_update` (atomic upserts on both backends)."""
    dialect = (session.dialect if isinstance(session, Connection) else session.get_bind().dialect).name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upserts need SQLite or PostgreSQL, not {dialect}")


def insert_once(session: Session, row: object) -> bool:
    """Add the mapped `row` and flush it in a savepoint; False if another process inserted the same
    row first (a unique key), the session being as it was."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True
