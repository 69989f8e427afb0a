"""Fixtures of the postmaster pages' tests (test_web_outgoing.py, test_web_queue.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.config import Config
from app.web.app import create_app
from tests.support.adminweb import admin_web_config
from tests.support.dnsserver import DNSTestServer


@pytest.fixture
def database() -> str:
    """SQLite; a test parametrized with adminweb.BOTH_DATABASES runs on PostgreSQL too."""
    return "sqlite"


@pytest.fixture
def admin_config(request: pytest.FixtureRequest, tmp_path: Path, dns: DNSTestServer, database: str) -> Config:
    """The web test config: admin is the postmaster, bob is not; on `database`."""
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    return admin_web_config(tmp_path, dns.port, url)


@pytest.fixture
def admin_client(admin_config: Config) -> TestClient:
    """A client of the app on admin_config, not logged in, redirects not followed."""
    return TestClient(create_app(admin_config), base_url="http://127.0.0.1", follow_redirects=False)
