"""Fixtures of the property tests, one per module (hypothesis runs many examples in one test, so a
function-scoped one would be shared by all of them anyway): the SMTP service, and a protocol instance
whose path parser is called directly. tests/fuzz/run.py uses the same context managers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.smtpserver.protocol import PostwardenSMTP
from tests.property.servers import running_smtp, smtp_protocol
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import ThreadedSMTP


@pytest.fixture(scope="module")
def smtp_server(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer
) -> Iterator[ThreadedSMTP]:
    with running_smtp(tmp_path_factory.mktemp("smtp"), dns_server) as server:
        yield server


@pytest.fixture(scope="module")
def protocol() -> Iterator[PostwardenSMTP]:
    with smtp_protocol() as instance:
        yield instance
