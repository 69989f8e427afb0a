"""`/health` checks the write path (issue 9): a database that reads but refuses writes is an error, the
reply is status only, and a missing SQLite file is reported, never created."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.config import load_config
from app.db import engine_for
from app.migrate import upgrade_database
from app.web.app import HEALTH_PROBE_SECONDS, create_app
from tests.support.configs import write_config
from tests.support.dbfaults import pool_connection_opened_read_only, postgres_read_only, traversable_dir

OK = (200, {"status": "ok", "database": "ok"})
ERROR = (503, {"status": "error", "database": "error"})


def health(client: TestClient) -> tuple[int, object]:
    response = client.get("/health")
    return response.status_code, response.json()


def health_within(client: TestClient, expected: tuple[int, object]) -> tuple[int, object]:
    """/health polled until it answers `expected` or HEALTH_PROBE_SECONDS and a margin have passed
    (the web reuses a probe's answer that long); the last answer."""
    deadline = time.monotonic() + HEALTH_PROBE_SECONDS + 3
    answer = health(client)
    while answer != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = health(client)
    return answer


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = traversable_dir()
    yield path
    shutil.rmtree(path)


def test_health_fails_while_postgres_refuses_writes_and_recovers(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade_database(postgres_url)
    config = load_config(write_config(tmp_path / "cfg", database_url=postgres_url))
    with TestClient(create_app(config)) as client:
        assert health_within(client, OK) == OK
        postgres_read_only(postgres_url, True, end_sessions=True)
        assert health_within(client, ERROR) == ERROR, "reads work, writes do not: not healthy"
        assert "read-only transaction" in caplog.text, "the reason is logged"
        postgres_read_only(postgres_url, False, end_sessions=False)
        assert health_within(client, OK) == OK, "writable again: healthy without a restart"


def test_health_fails_while_sqlite_is_read_only_and_recovers(shared_dir: Path) -> None:
    database = shared_dir / "postwarden.db"
    url = f"sqlite:///{database}"
    upgrade_database(url)
    config = load_config(write_config(shared_dir / "cfg", database_url=url))
    other_process = sqlite3.connect(database)
    other_process.execute("SELECT count(*) FROM job_runs").fetchall()
    try:
        with TestClient(create_app(config)) as client:
            database.chmod(0o444)
            pool_connection_opened_read_only(url)
            assert health_within(client, ERROR) == ERROR
            database.chmod(0o644)
            assert health_within(client, OK) == OK
    finally:
        other_process.close()
        engine_for(url).dispose()


def test_health_reports_a_missing_database_without_creating_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_config(tmp_path / "cfg"))
    database = config.data_dir / "postwarden.db"
    with TestClient(create_app(config)) as client:
        assert health_within(client, ERROR) == ERROR
        assert health_within(client, ERROR) == ERROR
    assert not database.exists()
    assert f"database file {database} does not exist" in caplog.text
    assert "alembic upgrade head" in caplog.text
