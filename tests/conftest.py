"""Shared fixtures: a loopback DNS server, a resolver pointed at it, a test config and database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import load_config
from app.dns import Resolver
from app.migrate import upgrade_database
from tests.configs import write_config
from tests.dnsserver import DNSTestServer


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


@pytest.fixture
def config_file(tmp_path: Path, dns: DNSTestServer) -> Path:
    """A valid config (tests/configs.py) using the loopback DNS server, with a migrated SQLite DB."""
    path = write_config(tmp_path / "config", dns_port=dns.port)
    upgrade_database(load_config(path).resolved_database_url)
    return path
