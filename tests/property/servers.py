"""The real services some properties need, for the pytest fixtures and the fuzz runner alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import load_config
from tests.dnsserver import DNSTestServer
from tests.smtpfixtures import ThreadedSMTP, write_smtp_config


@contextmanager
def running_smtp(directory: Path, dns: DNSTestServer) -> Iterator[ThreadedSMTP]:
    """The SMTP service (inbound and submission, no TLS) with the test config, on loopback."""
    server = ThreadedSMTP(load_config(write_smtp_config(directory, dns, None))).start()
    try:
        yield server
    finally:
        server.stop()
