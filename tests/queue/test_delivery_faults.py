"""Delivery under faults (issue 9): which host's failure decides a bounce, remote text longer than a
column on PostgreSQL, a database that cannot record TLS results.

Real parts: MX hosts on 127.0.0.1 and 127.0.0.2 (aiosmtpd peers, or a raw socket server that only
greets), the test DNS server, SQLite or a fresh PostgreSQL database.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import pytest
from sqlalchemy import select, text

from app.db import engine_for, session_scope
from app.migrate import upgrade_database
from app.models import TLSFailureDetail, TLSResult
from app.tlsreports.report import FailureDetail, PolicyRef
from app.tlsreports.results import SessionResult, record_tls_results
from tests.queue import test_deliver
from tests.queue.test_deliver import DOMAIN, MX, RCPT, World
from tests.support.logcapture import captured
from tests.support.smtppeers import PeerHandler, smtp_peer

world = test_deliver.world  # the fixture

MX1, MX2 = "mx1.example.net", "mx2.example.net"
LONG_NAME = "h" * 300


@dataclass
class Greeter:
    port: int
    connections: int = 0


@contextmanager
def greeter(address: str, port: int, greeting: bytes) -> Iterator[Greeter]:
    """A server on (address, port) that sends `greeting` to each connection and hangs up."""
    listener = socket.create_server((address, port))
    server = Greeter(listener.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with sock:
                server.connections += 1
                with suppress(OSError):
                    sock.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)


def two_mx(world: World, port: int) -> None:
    """mx1 (preferred) on 127.0.0.1, mx2 on 127.0.0.2, both on `port`."""
    world.configure(port)
    world.dns.add(DOMAIN, "MX", f"10 {MX1}.", f"20 {MX2}.")
    world.dns.add(MX1, "A", "127.0.0.1")
    world.dns.add(MX2, "A", "127.0.0.2")


REFUSING_BACKUP = PeerHandler(rcpt_replies={RCPT: "554 5.7.1 Relay access denied"})


# Item 1: a bounce only when every host tried failed for good.


async def test_primary_down_and_backup_refusing_the_recipient_is_retried(world: World) -> None:
    with smtp_peer(None, address="127.0.0.2", handler=REFUSING_BACKUP) as backup:
        two_mx(world, backup.port)  # nothing listens on 127.0.0.1 at that port: mx1 is down
        (queue_id,) = world.queue()
        report = await world.run(queue_id)
    assert report.deferred == [queue_id] and report.failed == []
    (row,) = world.rows()
    assert row.attempts == 1 and row.last_error is not None
    assert "554" in row.last_error and f"{MX1} failed temporarily" in row.last_error
    assert world.mailbox("admin", "Inbox") == []  # no failure DSN


async def test_primary_busy_and_backup_refusing_at_the_greeting_is_retried(world: World) -> None:
    with (
        greeter("127.0.0.2", 0, b"554 5.3.2 not accepting mail\r\n") as backup,
        greeter("127.0.0.1", backup.port, b"421 4.3.2 busy, try later\r\n") as primary,
    ):
        two_mx(world, backup.port)
        (queue_id,) = world.queue()
        report = await world.run(queue_id)
    assert (primary.connections, backup.connections) == (1, 1)
    assert report.deferred == [queue_id] and report.failed == []
    assert world.mailbox("admin", "Inbox") == []


async def test_every_host_refusing_for_good_bounces(world: World) -> None:
    with (
        smtp_peer(None, address="127.0.0.2", handler=REFUSING_BACKUP) as backup,
        greeter("127.0.0.1", backup.port, b"554 5.3.2 not accepting mail\r\n") as primary,
    ):
        two_mx(world, backup.port)
        (queue_id,) = world.queue()
        report = await world.run(queue_id)
    assert primary.connections == 1
    assert report.failed == [queue_id] and world.rows() == []
    ((_, dsn),) = world.mailbox("admin", "Inbox")
    assert b"Action: failed" in dsn and b"554" in dsn


async def test_one_host_refusing_for_good_on_its_second_address_bounces(world: World) -> None:
    """Only another host's temporary failure softens a refusal: the same MX's other address being
    down does not (the host that answered has said no)."""
    with smtp_peer(None, address="127.0.0.2", handler=REFUSING_BACKUP) as host:
        world.configure(host.port)
        world.dns.add(DOMAIN, "MX", f"10 {MX1}.")
        world.dns.add(MX1, "A", "127.0.0.1", "127.0.0.2")  # nothing listens on the first
        (queue_id,) = world.queue()
        report = await world.run(queue_id)
    assert report.failed == [queue_id] and world.rows() == []
    ((_, dsn),) = world.mailbox("admin", "Inbox")
    assert b"Action: failed" in dsn and b"554" in dsn


# Item 2: remote text longer than a column; TLS results that cannot be recorded.


def on_postgresql(world: World, url: str) -> None:
    assert world.config is not None
    world.config = world.config.model_copy(update={"database_url": url})
    upgrade_database(url)


async def test_a_300_character_ehlo_name_on_postgresql_still_delivers(
    world: World, postgres_url: str
) -> None:
    # No STARTTLS under an MTA-STS policy in testing mode: delivered, and the failure recorded with
    # the server's EHLO name, which the column holds 255 characters of.
    with smtp_peer(None, hostname=LONG_NAME) as peer:
        world.configure(peer.port)
        on_postgresql(world, postgres_url)
        world.mx(MX)
        world.mtasts("testing")
        (queue_id,) = world.queue()
        with captured("app.queue.deliver") as log:
            report = await world.run(queue_id)
    assert report.delivered == [queue_id] and len(peer.received) == 1
    assert log.messages("not recorded") == []
    (detail,) = world.failures(DOMAIN, is_host=False)
    assert detail.result_type == "starttls-not-supported"
    assert detail.receiving_mx_helo == LONG_NAME[:255]


def test_tls_results_longer_than_their_columns_are_cut_on_postgresql(postgres_url: str) -> None:
    upgrade_database(postgres_url)
    failure = FailureDetail(
        "certificate-host-mismatch",
        receiving_mx_hostname=LONG_NAME,
        receiving_mx_helo=LONG_NAME,
        sending_ip="1" * 100,
        failure_reason_code="x" * 3000,
    )
    policy = PolicyRef("tlsa", LONG_NAME, ("3 1 1 abcd",), (LONG_NAME,))
    result = SessionResult(DOMAIN, PolicyRef.none_found(DOMAIN), policy, failure=failure)
    with session_scope(postgres_url) as session:
        record_tls_results(session, [result, result])
    with session_scope(postgres_url) as session:
        results = {r.is_host: r for r in session.scalars(select(TLSResult))}
        details = list(session.scalars(select(TLSFailureDetail)))
    assert results[True].policy_domain == LONG_NAME[:255]
    assert (results[True].failure_count, results[False].failure_count) == (2, 2)
    assert {(d.receiving_mx_helo, d.receiving_mx_hostname, d.sending_ip) for d in details} == {
        (LONG_NAME[:255], LONG_NAME[:255], "1" * 64)
    }
    assert {len(d.failure_reason_code or "") for d in details} == {3000}  # Text: kept whole


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_tls_results_that_cannot_be_recorded_do_not_stop_delivery(
    world: World, database: str, request: pytest.FixtureRequest
) -> None:
    with smtp_peer(None) as peer:
        world.configure(peer.port)
        if database == "postgresql":
            on_postgresql(world, request.getfixturevalue("postgres_url"))
        with engine_for(world.url).begin() as connection:
            connection.execute(text("DROP TABLE tls_failure_details"))
            connection.execute(text("DROP TABLE tls_results"))
        world.mx(MX)
        world.mtasts("testing")
        ids = world.queue(recipients=(RCPT, "carol@example.net"))
        with captured("app.queue.deliver") as log:
            report = await world.run(ids[0])
    assert sorted(report.delivered) == ids and len(peer.received) == 1
    assert world.rows() == []
    (line,) = log.messages("not recorded")
    assert line.startswith(f"TLS result for {DOMAIN} via {MX} not recorded: ")
    assert "tls_results" in line and "INSERT" not in line  # the driver's reason, not the statement
