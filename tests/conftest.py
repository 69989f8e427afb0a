"""Shared fixtures: a loopback DNS server, a resolver pointed at it, a test config and database."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from app.config import load_config
from app.db import engine_for
from app.dns import Resolver
from app.migrate import upgrade_database
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer

POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"

# SMTP test fixtures (certificates, a running SMTP service, raw client) and the HTTPS server for
# MTA-STS policies live in their own modules.
pytest_plugins = ["tests.support.smtpfixtures", "tests.support.httpsserver"]


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DNSTestServer]:
    server = DNSTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def dns(dns_server: DNSTestServer) -> Iterator[DNSTestServer]:
    """The loopback DNS server, emptied for this test."""
    dns_server.clear()
    yield dns_server
    dns_server.clear()


@pytest.fixture
def resolver(dns: DNSTestServer) -> Resolver:
    """A resolver that asks only the loopback DNS server, trusts its AD bit and caches nothing."""
    return Resolver(nameservers=["127.0.0.1"], port=dns.port, timeout=1.0, trust_dnssec=True, cache=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file with all migrations applied."""
    url = f"sqlite:///{tmp_path / 'postwarden.db'}"
    upgrade_database(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each kind (the sqlite_url fixture migrates; postgres_url is empty)."""
    database_url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    if request.param == "postgresql":
        upgrade_database(database_url)
    return database_url


@pytest.fixture
def config_file(tmp_path: Path, dns: DNSTestServer) -> Path:
    """A valid config (tests/support/configs.py) using the loopback DNS server, with a migrated SQLite DB."""
    path = write_config(tmp_path / "config", dns_port=dns.port)
    upgrade_database(load_config(path).resolved_database_url)
    return path


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    name = f"pw_test_{secrets.token_hex(4)}"
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        pytest.fail(f"PostgreSQL at {POSTGRES_SERVER} is not reachable (.ci/run starts it): {e}")
    url = f"{POSTGRES_SERVER}/{name}"
    yield url
    engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
