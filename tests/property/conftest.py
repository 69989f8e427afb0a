"""Fixtures of the property tests: one SMTP service per module (hypothesis runs many examples in one
test, so a function-scoped service would be shared by all of them anyway)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dnsserver import DNSTestServer
from tests.property.servers import running_smtp
from tests.smtpfixtures import ThreadedSMTP


@pytest.fixture(scope="module")
def smtp_server(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer
) -> Iterator[ThreadedSMTP]:
    with running_smtp(tmp_path_factory.mktemp("smtp"), dns_server) as server:
        yield server
