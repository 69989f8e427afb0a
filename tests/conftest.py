"""Shared fixtures: a loopback DNS server, a resolver pointed at it, a test config and database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.dns import Resolver
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
