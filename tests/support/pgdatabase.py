"""Throwaway PostgreSQL databases on the local server, for the benchmarks (tests use the conftest fixture)."""

from __future__ import annotations

import time

from sqlalchemy import text

from app.db import engine_for

POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _admin_run(statement: str) -> None:
    admin = engine_for(f"{POSTGRES_SERVER}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(statement))


def new_database(prefix: str) -> str:
    """A new, empty database named `prefix` and the time; its URL."""
    name = f"{prefix}_{int(time.time())}"
    _admin_run(f'CREATE DATABASE "{name}"')
    return f"{POSTGRES_SERVER}/{name}"


def drop_database(url: str) -> None:
    engine_for(url).dispose()
    _admin_run(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
