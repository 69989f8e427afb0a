"""Delivery to Postfix's smtp-sink, a peer no one here wrote: what it captured must be what we sent.

smtp-sink announces PIPELINING and 8BITMIME, dumps every transaction with its envelope, and can be
told to reject or drop chosen commands (`-r`: 4xx, `-f`: 5xx, `-q`: disconnect without a reply).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from app.config import Config, load_config
from app.db import session_scope
from app.dns import Resolver
from app.migrate import upgrade_database
from app.models import OutgoingMessage, TLSResult
from app.queue.deliver import deliver
from app.queue.enqueue import Queued, enqueue
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not os.path.exists(SINK), reason="smtp-sink is missing (apt-get install postfix)"),
]


@contextmanager
def smtp_sink(*options: str) -> Iterator[tuple[int, Path]]:
    """smtp-sink on a free loopback port, dumping each transaction into a file; (port, dump dir)."""
    # Run as root, smtp-sink drops to `nobody`, who cannot enter pytest's private tmp_path.
    dump = Path(tempfile.mkdtemp(prefix="pw-smtp-sink-"))
    dump.chmod(0o777)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    args = [SINK, *user, "-h", "mx.example.net", "-d", f"{dump}/%H%M%S.", *options, f"127.0.0.1:{port}", "64"]
    sink = subprocess.Popen(args, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert sink.poll() is None, sink.stderr.read() if sink.stderr else b""
                assert time.monotonic() < deadline, "smtp-sink did not start"
                time.sleep(0.02)
        yield port, dump
    finally:
        sink.kill()
        sink.wait()
        shutil.rmtree(dump, ignore_errors=True)


def captured(dump: Path) -> list[tuple[str, list[str], bytes]]:
    """(MAIL arguments, RCPT arguments, message with LF line ends) of each dumped transaction."""
    transactions = []
    for path in sorted(dump.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        lines = path.read_bytes().split(b"\n")
        received = next(i for i, line in enumerate(lines) if line.startswith(b"Received: "))
        head = [line.decode() for line in lines[:received]]
        mail = next(line.split(": ", 1)[1] for line in head if line.startswith("X-Mail-Args: "))
        rcpts = [line.split(": ", 1)[1] for line in head if line.startswith("X-Rcpt-Args: ")]
        # smtp-sink ends the dump with an empty line of its own.
        transactions.append((mail, rcpts, b"\n".join(lines[received + 3 : -2]) + b"\n"))
    return transactions


def setup(tmp_path: Path, dns: DNSTestServer, port: int) -> Config:
    config_file = write_config(tmp_path / "config", f"\n[delivery]\nsmtp_port = {port}\n", dns_port=dns.port)
    config = load_config(config_file)
    upgrade_database(config.resolved_database_url)
    dns.add("example.net", "MX", "10 mx.example.net.")
    dns.add("mx.example.net", "A", "127.0.0.1")
    return config


def queue(config: Config, content: bytes, *recipients: str) -> list[int]:
    with session_scope(config.resolved_database_url) as session:
        return enqueue(session, config, Queued(content, "admin@example.org", recipients))


def message(i: int, body: str = "Hello.") -> bytes:
    return (
        f"From: admin@example.org\r\nSubject: {i}\r\nMessage-ID: <{i}@example.org>\r\n\r\n{body}\r\n".encode()
    )


def test_smtp_sink_receives_every_message_as_sent_over_one_session(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    with smtp_sink() as (port, dump):
        config = setup(tmp_path, dns, port)
        contents = [message(i) for i in range(8)]
        contents.append(message(8, ".a line that starts with a dot\r\n..and two"))
        contents.append(message(9, "grüße aus Köln"))  # 8-bit: BODY=8BITMIME (smtp-sink announces it)
        ids = [queue(config, content, f"r{i}@example.net")[0] for i, content in enumerate(contents)]
        ids += queue(config, message(10), "a@example.net", "b@example.net")
        report = asyncio.run(deliver(config, ids[0], resolver))
        assert sorted(report.delivered) == sorted(ids)
        transactions = captured(dump)
    # Keyed by Message-ID: the dump files' order is not necessarily the sending order.
    by_id = {
        content.split(b"Message-ID: ")[1].split(b"\n")[0]: (mail, rcpts, content)
        for mail, rcpts, content in transactions
    }
    sent = [*contents, message(10)]
    assert len(transactions) == len(sent) == len(by_id)
    for i, content in enumerate(sent):
        mail, rcpts, received = by_id[f"<{i}@example.org>".encode()]
        assert received == content.replace(b"\r\n", b"\n")
        assert mail == ("<admin@example.org> BODY=8BITMIME" if i == 9 else "<admin@example.org>")
        assert rcpts == (["<a@example.net>", "<b@example.net>"] if i == 10 else [f"<r{i}@example.net>"])
    with session_scope(config.resolved_database_url) as session:
        assert session.scalars(select(OutgoingMessage)).all() == []
        domain = session.scalars(select(TLSResult).where(~TLSResult.is_host)).one()
    # One session for all of them; smtp-sink offers no STARTTLS, which is what it recorded.
    assert (domain.policy_type, domain.success_count, domain.failure_count) == ("no-policy-found", 0, 1)


@pytest.mark.parametrize(
    ("option", "outcome", "status"),
    [("-r", "deferred", "4.3.0"), ("-f", "failed", "5.3.0")],
    ids=["soft-reject-rcpt", "hard-reject-rcpt"],
)
def test_smtp_sink_rejections(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, option: str, outcome: str, status: str
) -> None:
    # -r/-f turn PIPELINING off: this is the one-command-at-a-time path against a real peer.
    with smtp_sink(option, "rcpt") as (port, dump):
        config = setup(tmp_path, dns, port)
        (queue_id,) = queue(config, message(1), "r@example.net")
        report = asyncio.run(deliver(config, queue_id, resolver))
        assert captured(dump) == []
    assert getattr(report, outcome) == [queue_id]
    with session_scope(config.resolved_database_url) as session:
        rows = session.scalars(select(OutgoingMessage)).all()
    if outcome == "deferred":
        assert status in (rows[0].last_error or "")
    else:
        assert rows == []


def test_connection_dropped_after_the_data_is_a_temporary_failure(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    """smtp-sink takes the message and hangs up without a reply: we cannot know, so we retry."""
    with smtp_sink("-q", ".") as (port, dump):
        config = setup(tmp_path, dns, port)
        (queue_id,) = queue(config, message(1), "r@example.net")
        report = asyncio.run(deliver(config, queue_id, resolver))
        assert len(captured(dump)) == 1  # the peer has it: the retry will be a duplicate, as SMTP allows
    assert report.deferred == [queue_id]
    with session_scope(config.resolved_database_url) as session:
        (row,) = session.scalars(select(OutgoingMessage)).all()
    assert row.attempts == 1 and "4.4.2" not in (row.last_error or "x")
