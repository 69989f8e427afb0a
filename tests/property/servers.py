"""The real services some properties need, for the pytest fixtures and the fuzz runner alike."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import Limits, load_config
from app.smtpserver.protocol import PostwardenSMTP
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import ThreadedSMTP, write_smtp_config


@contextmanager
def running_smtp(directory: Path, dns: DNSTestServer) -> Iterator[ThreadedSMTP]:
    """The SMTP service (inbound and submission, no TLS) with the test config, on loopback."""
    server = ThreadedSMTP(load_config(write_smtp_config(directory, dns, None))).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def smtp_protocol() -> Iterator[PostwardenSMTP]:
    """A protocol instance (no connection) for calling its parser directly; aiosmtpd wants a loop."""
    loop = asyncio.new_event_loop()
    try:
        yield loop.run_until_complete(_new_protocol())
    finally:
        loop.close()


async def _new_protocol() -> PostwardenSMTP:
    return PostwardenSMTP(object(), limits=Limits(), hostname="mx.example")
