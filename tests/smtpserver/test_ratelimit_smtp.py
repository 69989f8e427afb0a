"""Delivery rate limits on the inbound listener (SPEC R3.1) over real loopback sockets: the 452 at MAIL
FROM and after DATA, another /26 unaffected, submission not limited, across worker processes of the
real `postwarden smtp` with its log rate-limited, and swaks seeing the 452. Loopback is exempt by
default, so these configs exempt nothing; clients bind to 127.0.0.x to act as other senders."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.config import load_config
from app.migrate import upgrade_database
from app.smtpserver.ratelimit import RateLimiter
from tests.smtpserver.test_smtp_dos import LISTENING, POSTWARDEN, Client, body, wait_until
from tests.smtpserver.test_smtp_protocol_peers import needs_swaks, swaks
from tests.support.celeryworker import wait_for_text
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.logcapture import captured
from tests.support.smtpfixtures import ThreadedSMTP, make_message, smtp_config_toml, stored_messages

SENDER = "alice@sender.example"
NOW = 20_000 * 86400 + 30.0  # a fixed clock for the threaded server: no window ends during a test


def too_fast(range_label: str, limit: str) -> str:
    return f"452 4.3.2 Rate limit reached for your address range ({range_label}): {limit}; try again later"


def ratelimits_toml(**tables: dict[str, int]) -> str:
    lines = "[ratelimits]\nexempt_networks = []\n"
    for name, limits in tables.items():
        lines += f"[ratelimits.{name}]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items())
    return lines


def write_ratelimited_config(directory: Path, dns: DNSTestServer, **tables: dict[str, int]) -> Path:
    path = write_config(directory, smtp_config_toml(None) + ratelimits_toml(**tables), dns_port=dns.port)
    upgrade_database(load_config(path).resolved_database_url)
    return path


@pytest.fixture
def ratelimited(tmp_path: Path, dns: DNSTestServer) -> Iterator[Callable[..., ThreadedSMTP]]:
    """Start a threaded service with these [ratelimits] tables and a fixed clock."""
    started: list[ThreadedSMTP] = []

    def start(**tables: dict[str, int]) -> ThreadedSMTP:
        path = write_ratelimited_config(tmp_path / f"config{len(started)}", dns, **tables)
        server = ThreadedSMTP(load_config(path))
        server.service.rate_limiter.clock = lambda: NOW
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def send(client: Client, message: bytes | None = None) -> str:
    """One transaction on an open session: the MAIL FROM reply if it is not 250, else the final one."""
    reply = client.command(f"MAIL FROM:<{SENDER}>")
    if not reply.startswith("250"):
        return reply
    assert client.command("RCPT TO:<admin@example.org>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send((message or make_message(SENDER, "admin@example.org")) + b".\r\n")
    return client.reply()


def one_message(port: int, source: str) -> str:
    client = session(port, source)
    try:
        return send(client)
    finally:
        client.close()


def session(port: int, source: str) -> Client:
    client = Client(port, source)
    assert client.command("EHLO client.sender.example").startswith("250")
    return client


def test_messages_over_a_limit_get_452_at_mail_and_another_26_is_not_affected(
    ratelimited: Callable[..., ThreadedSMTP],
) -> None:
    server = ratelimited(ipv4_32={"messages_per_minute": 2}, ipv4_26={"messages_per_minute": 3})
    first = session(server.inbound_port, "127.0.0.2")
    assert [send(first)[:3] for _ in range(2)] == ["250", "250"]
    refusal = too_fast("IPv4 /32", "2 messages per minute")
    with captured("app.smtpserver") as log:
        assert send(first) == refusal
    assert log.messages(f"inbound rate limit ip=127.0.0.2 reply={refusal!r}")
    neighbour = session(server.inbound_port, "127.0.0.3")  # the same /26
    assert send(neighbour).startswith("250")
    assert send(neighbour) == too_fast("IPv4 /26", "3 messages per minute")
    other = session(server.inbound_port, "127.0.0.65")  # another /26
    assert [send(other)[:3] for _ in range(2)] == ["250", "250"]
    assert len(stored_messages(server)) == 5
    assert first.command("NOOP").startswith("250"), "the session goes on"


def test_octets_over_a_limit_get_452_after_data_and_the_message_is_not_stored(
    ratelimited: Callable[..., ThreadedSMTP],
) -> None:
    server = ratelimited(ipv4_32={"bytes_per_minute": 100_000})
    client = session(server.inbound_port, "127.0.0.2")
    assert send(client, body(60_000)).startswith("250")
    with captured("app.smtpserver") as log:
        assert send(client, body(60_000)) == too_fast("IPv4 /32", "100000 octets per minute")
    assert log.messages("result=rate-limited")
    assert len(stored_messages(server)) == 1
    assert send(client, body(30_000)).startswith("250"), "a message that fits still does"
    assert send(client, body(10_000)) == too_fast("IPv4 /32", "100000 octets per minute")


def test_refused_messages_are_not_counted_and_submission_has_no_rate_limit(
    ratelimited: Callable[..., ThreadedSMTP],
) -> None:
    server = ratelimited(ipv4_32={"messages_per_minute": 1})
    client = session(server.inbound_port, "127.0.0.2")
    assert send(client, b"bare\nLF\r\n").startswith("500 5.5.2")
    assert send(client).startswith("250")
    assert send(client) == too_fast("IPv4 /32", "1 messages per minute")
    submission = [server.service.handler_for(x) for x in server.config.listeners if x.kind == "submission"]
    assert [h.rate_limiter for h in submission] == [None]
    assert isinstance(server.service.handler_for(server.config.listeners[0]).rate_limiter, RateLimiter)


@needs_swaks
@pytest.mark.peer
def test_swaks_sees_the_452(ratelimited: Callable[..., ThreadedSMTP]) -> None:
    server = ratelimited(ipv4_32={"messages_per_day": 1})
    first = swaks(server.inbound_port, "--from", SENDER, "--to", "admin@example.org")
    assert first.returncode == 0, first.stdout + first.stderr
    second = swaks(server.inbound_port, "--from", SENDER, "--to", "admin@example.org")
    assert second.returncode != 0
    assert f"<** {too_fast('IPv4 /32', '1 messages per day')}" in second.stdout


# Across worker processes: the real `postwarden smtp`, with the wall clock.


@contextmanager
def smtp_workers(config_file: Path, log: Path, workers: int) -> Iterator[int]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [POSTWARDEN, "smtp", "--workers", str(workers)],
            env={**os.environ, "POSTWARDEN_CONFIG": str(config_file)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield int(LISTENING.findall(wait_for_text(log, "smtp ready", process=process))[0])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_limits_hold_across_worker_processes_and_refusals_are_logged_rate_limited(
    tmp_path: Path, dns: DNSTestServer
) -> None:
    # Per-day limits: the wall clock's day ends at UTC midnight, not within this test (wait if close).
    wait_until(lambda: time.time() % 86400 < 86400 - 60, timeout=70, what="a UTC day with a minute left")
    config_file = write_ratelimited_config(tmp_path / "cfg", dns, ipv4_32={"messages_per_day": 4})
    log = tmp_path / "smtp.log"
    with smtp_workers(config_file, log, workers=2) as port:
        # A session each: the kernel hands them to either worker, and the count is over both.
        replies = [one_message(port, "127.0.0.2") for _ in range(6)]
        assert [r[:3] for r in replies] == ["250"] * 4 + ["452"] * 2
        assert replies[4] == too_fast("IPv4 /32", "4 messages per day")
        assert one_message(port, "127.0.0.65").startswith("250")
        for _ in range(11):  # a flood of refusals; max_errors ends a session after 6, so 5 in each
            flooder = session(port, "127.0.0.2")
            flooder.send(f"MAIL FROM:<{SENDER}>\r\n" * 5)
            assert [flooder.reply()[:3] for _ in range(5)] == ["452"] * 5
            flooder.close()
        wait_until(lambda: "rate limit ip=127.0.0.2" in log.read_text(), what="the refusals logged")
    logged = [line for line in log.read_text().splitlines() if "rate limit ip=127.0.0.2" in line]
    assert 2 <= len(logged) <= 2 * 20, "57 refusals, at most a burst of 20 per worker in a 10 s window"
