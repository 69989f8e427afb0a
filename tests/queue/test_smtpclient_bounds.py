"""The SMTP client against hostile or broken MX hosts (issue 8, item 7): endless replies, huge lines,
trickled bytes, silence after the data. Each must end within the bound, with bounded memory and a
temporary failure, so a delivery worker is never held past its lease.

The MX hosts are scripted raw-socket servers on 127.0.0.1, one thread per connection; the client
runs for real against them. Bounds in these tests: transaction_timeout 1 s, command_timeout 5 s (a
server that sends a byte every 50 ms never trips the latter; only the step's deadline stops it).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from app.queue.smtpclient import (
    HELO_NAME_MAX,
    REPLY_LINE_MAX,
    REPLY_MAX,
    REPLY_TEXT_MAX,
    ClientOptions,
    DeliveryError,
    Session,
    Target,
    open_session,
)
from tests.queue.test_deliver import MX, World, world  # noqa: F401 (the fixture)
from tests.queue.test_smtpclient import HOST, OPPORTUNISTIC

DEADLINE = 1.0
SLACK = 1.0  # scheduling on a busy test machine
TRICKLE = 0.05
# How long a trickling server keeps going: far past the deadline, so a client without one shows.
TRICKLE_FOR = 8.0
MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"


@dataclass
class Conn:
    """The server's side of one connection, for the scripts."""

    sock: socket.socket
    stop: threading.Event
    sent: int = 0
    commands: list[bytes] = field(default_factory=list)
    _buffer: bytes = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def command(self) -> bytes:
        """The next command line from the client (CRLF stripped)."""
        while b"\r\n" not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("client closed")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        self.commands.append(line)
        return line

    def until(self, marker: bytes) -> None:
        """Read (and drop) client data up to `marker` (the end of the message data)."""
        while marker not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("client closed")
            self._buffer += data
        self._buffer = self._buffer.split(marker, 1)[1]

    def trickle(self, data: bytes) -> None:
        """`data` one byte at a time, TRICKLE seconds apart, for at most TRICKLE_FOR seconds."""
        ends = time.monotonic() + TRICKLE_FOR
        for i in range(len(data)):
            if self.stop.wait(TRICKLE) or time.monotonic() > ends:
                return
            self.send(data[i : i + 1])

    def take_envelope(self) -> None:
        """MAIL FROM, one RCPT TO and DATA, each accepted."""
        for reply in (b"250 sender ok\r\n", b"250 recipient ok\r\n", b"354 go on\r\n"):
            self.command()
            self.send(reply)

    def greet_and_ehlo(self, ehlo: bytes = b"250-mx.example.net\r\n250 PIPELINING\r\n") -> None:
        self.send(b"220 mx.example.net ESMTP\r\n")
        self.command()
        self.send(ehlo)


Script = Callable[[Conn], None]


@dataclass
class FakeMX:
    port: int
    connections: list[Conn]


@contextmanager
def fake_mx(script: Script) -> Iterator[FakeMX]:
    """A server on 127.0.0.1 running `script` for each connection until the test ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    mx = FakeMX(listener.getsockname()[1], [])
    threads: list[threading.Thread] = []

    def serve(conn: Conn) -> None:
        try:
            script(conn)
            stop.wait(TRICKLE_FOR)  # then hold the connection open, silent
        except OSError:
            pass  # the client hung up: what most tests are about
        finally:
            conn.sock.close()

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            conn = Conn(sock, stop)
            mx.connections.append(conn)
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield mx
    finally:
        stop.set()
        # shutdown() wakes threads blocked in accept() and recv(); close() alone does not.
        for sock in [listener, *(conn.sock for conn in mx.connections)]:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join(timeout=5)
        for thread in threads:
            thread.join(timeout=5)


@pytest.fixture
def options() -> ClientOptions:
    return ClientOptions(
        helo="mail.example.org", connect_timeout=5, command_timeout=5, transaction_timeout=DEADLINE
    )


def connect(mx: FakeMX, options: ClientOptions) -> Session:
    return open_session(Target(HOST, "127.0.0.1", mx.port), OPPORTUNISTIC, options)


@contextmanager
def bounded(seconds: float = DEADLINE + SLACK, memory: int = 1024 * 1024) -> Iterator[None]:
    """The block must end within `seconds`, its Python allocations peaking below `memory` bytes."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert peak < memory, f"peak {peak} bytes"


def transient(raised: pytest.ExceptionInfo[DeliveryError], status: str, text: str) -> None:
    error = raised.value
    assert not error.permanent and error.status == status
    assert text in str(error), str(error)


# Endless and huge replies.


def endless_continuation(conn: Conn) -> None:
    line = b"220-" + b"x" * 1000 + b"\r\n"
    while conn.sent < 20 * 1024 * 1024:  # 20 MiB, then an end: a client without a bound takes it all
        conn.send(line)
    conn.send(b"220 mx.example.net\r\n")


def test_endless_continuation_lines_are_cut_at_the_reply_bound(options: ClientOptions) -> None:
    with fake_mx(endless_continuation) as mx, bounded(), pytest.raises(DeliveryError) as raised:
        connect(mx, options)
    transient(raised, "4.4.2", f"reply longer than {REPLY_MAX} octets")
    # The client hung up after a bounded read: the server could not push its 20 MiB.
    assert mx.connections[0].sent < 20 * 1024 * 1024


def test_a_huge_reply_line_is_cut_at_the_line_bound(options: ClientOptions) -> None:
    huge = b"550 " + b"y" * 1_000_000 + b"\r\n"  # made here: the server's memory is not measured

    def huge_rcpt_reply(conn: Conn) -> None:
        conn.greet_and_ehlo(b"250 mx.example.net\r\n")
        conn.command()
        conn.send(b"250 ok\r\n")
        conn.command()
        conn.send(huge)

    with fake_mx(huge_rcpt_reply) as mx:
        session = connect(mx, options)
        with bounded(), pytest.raises(DeliveryError) as raised:
            session.send("a@example.org", ["b@example.net"], MESSAGE)
        session.close()
    transient(raised, "4.4.2", f"reply line longer than {REPLY_LINE_MAX} octets")


# Trickled bytes and silence: the step's deadline.


def test_a_trickled_greeting_is_cut_at_the_deadline(options: ClientOptions) -> None:
    def trickled_greeting(conn: Conn) -> None:
        conn.trickle(b"220-" + b"z" * 200 + b"\r\n" + b"220-slow\r\n" * 100)

    with fake_mx(trickled_greeting) as mx, bounded(), pytest.raises(DeliveryError) as raised:
        connect(mx, options)
    transient(raised, "4.4.1", f"opening the session not done within {DEADLINE:g} s")


def test_a_trickled_mail_reply_is_cut_at_the_deadline(options: ClientOptions) -> None:
    def trickled_mail_reply(conn: Conn) -> None:
        conn.greet_and_ehlo()
        conn.command()
        conn.trickle(b"250-" + b"w" * 2000 + b"\r\n" + b"250-ok\r\n" * 100)

    with fake_mx(trickled_mail_reply) as mx:
        session = connect(mx, options)
        with bounded(), pytest.raises(DeliveryError) as raised:
            session.send("a@example.org", ["b@example.net"], MESSAGE)
        session.close()
    transient(raised, "4.4.1", f"transaction not done within {DEADLINE:g} s")


def test_no_reply_after_the_data_fails_at_the_deadline(options: ClientOptions) -> None:
    def silent_after_data(conn: Conn) -> None:
        conn.greet_and_ehlo()
        conn.take_envelope()
        conn.until(b"\r\n.\r\n")  # the data taken; no reply, ever

    with fake_mx(silent_after_data) as mx:
        session = connect(mx, options)
        with bounded(), pytest.raises(DeliveryError) as raised:
            session.send("a@example.org", ["b@example.net"], MESSAGE)
        with bounded(SLACK):
            session.close()  # the connection is gone: no QUIT waited for
    transient(raised, "4.4.1", f"transaction not done within {DEADLINE:g} s")


def test_a_server_that_reads_the_data_slowly_is_cut_at_the_deadline(options: ClientOptions) -> None:
    def slow_reader(conn: Conn) -> None:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.greet_and_ehlo()
        conn.take_envelope()
        ends = time.monotonic() + TRICKLE_FOR
        while time.monotonic() < ends and not conn.stop.wait(TRICKLE):
            if not conn.sock.recv(512):
                return

    content = MESSAGE + (b"x" * 76 + b"\r\n") * 200_000  # 15 MB: far more than the socket buffers
    with fake_mx(slow_reader) as mx:
        session = connect(mx, options)
        # The memory is the dot-stuffed copy of the message, as before; time is what this is about.
        with bounded(memory=3 * len(content)), pytest.raises(DeliveryError) as raised:
            session.send("a@example.org", ["b@example.net"], content)
        session.close()
    transient(raised, "4.4.1", f"transaction not done within {DEADLINE:g} s")


def test_an_unanswered_quit_is_waited_for_only_as_long_as_the_last_step_left(
    options: ClientOptions,
) -> None:
    def silent_at_quit(conn: Conn) -> None:
        conn.greet_and_ehlo()
        conn.take_envelope()
        conn.until(b"\r\n.\r\n")
        conn.send(b"250 queued\r\n")
        conn.command()  # QUIT: never answered

    with fake_mx(silent_at_quit) as mx:
        session = connect(mx, options)
        [result] = session.send("a@example.org", ["b@example.net"], MESSAGE)
        with bounded():  # not command_timeout (5 s): the lease must cover a step and its QUIT
            session.close()
        assert mx.connections[0].commands[-1].upper() == b"QUIT"
    assert result.delivered


# What the remote text becomes.


def test_reply_text_is_printable_ascii_on_one_line_and_bounded(options: ClientOptions) -> None:
    hostile = b"550 5.1.1 bad\x1b[31m red\x00 nul \xc3\xa9t\xc3\xa9 \xe2\x80\xaeevil\r\n"

    def hostile_text(conn: Conn) -> None:
        conn.greet_and_ehlo(b"250-" + b"h" * 3000 + b"\x07\r\n250 PIPELINING\r\n")
        conn.command()
        conn.send(b"250 ok\r\n")
        conn.command()
        conn.send(hostile)
        conn.command()
        conn.send(b"554 5.5.1 no valid recipients\r\n")
        conn.command()
        conn.send(b"250 reset\r\n")
        conn.command()
        conn.send(b"221 bye\r\n")

    with fake_mx(hostile_text) as mx:
        session = connect(mx, options)
        assert session.info.receiving_helo == "h" * HELO_NAME_MAX
        [result] = session.send("a@example.org", ["b@example.net"], MESSAGE)
        session.close()
    reply = result.reply
    assert (reply.code, reply.status) == (550, "5.1.1")
    assert reply.text == "5.1.1 bad [31m red nul ?t? ?evil"
    assert result.reply.diagnostic == "smtp; 550 5.1.1 bad [31m red nul ?t? ?evil"
    # A long reply (here the pipelined DATA reply, for every recipient) is cut.
    with fake_mx(_long_data_reply) as mx:
        session = connect(mx, options)
        [result] = session.send("a@example.org", ["b@example.net"], MESSAGE)
        session.close()
    assert result.reply.code == 554
    assert len(result.reply.text) == REPLY_TEXT_MAX and result.reply.text.endswith("...")
    assert result.reply.text.isascii() and result.reply.text.isprintable()


def _long_data_reply(conn: Conn) -> None:
    conn.greet_and_ehlo()
    for _ in ("MAIL", "RCPT", "DATA"):
        conn.command()
    conn.send(b"250 ok\r\n250 ok\r\n" + b"554-" + b"no " * 900 + b"\r\n554 no\r\n")
    conn.command()
    conn.send(b"250 reset\r\n")
    conn.command()
    conn.send(b"221 bye\r\n")


def test_plain_text_after_the_starttls_go_ahead_is_not_a_reply_under_tls(
    https_ca: trustme.CA, options: ClientOptions, tmp_path: Path
) -> None:
    """Response injection: a reply sent in plain text with the 220 must not be read after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    https_ca.issue_cert(HOST).configure_cert(context)

    def injecting(conn: Conn) -> None:
        conn.greet_and_ehlo(b"250-mx.example.net\r\n250 STARTTLS\r\n")
        conn.command()
        conn.send(b"220 go ahead\r\n250 injected\r\n")
        conn.sock = context.wrap_socket(conn.sock, server_side=True)
        conn.command()
        conn.send(b"250-mx.example.net\r\n250 SIZE 100000\r\n")
        conn.take_envelope()
        conn.until(b"\r\n.\r\n")
        conn.send(b"250 queued\r\n")
        conn.command()
        conn.send(b"221 bye\r\n")

    with fake_mx(injecting) as mx:
        session = connect(mx, options)
        assert session.info.tls_version is not None
        [result] = session.send("a@example.org", ["b@example.net"], MESSAGE)
        session.close()
    assert result.delivered
    # The MAIL command carried SIZE: the client knew the EHLO reply under TLS, not the injected one.
    mail = mx.connections[0].commands[3]
    assert mail.startswith(b"MAIL FROM:<a@example.org> SIZE=")


# The delivery worker: a hostile MX defers the row within the bound, with a clear reason.


async def test_delivery_to_a_trickling_mx_is_deferred_within_the_bound(world: World) -> None:  # noqa: F811
    def trickled_rcpt_reply(conn: Conn) -> None:
        conn.greet_and_ehlo(b"250 mx.example.net\r\n")
        conn.command()
        conn.send(b"250 ok\r\n")
        conn.command()
        conn.trickle(b"250-" + b"v" * 3000 + b"\r\n")

    with fake_mx(trickled_rcpt_reply) as mx:
        world.configure(mx.port, f"transaction_timeout = {DEADLINE}\n")
        world.mx(MX)
        (queue_id,) = world.queue()
        start = time.monotonic()
        report = await world.run(queue_id)
        elapsed = time.monotonic() - start
    assert report.deferred == [queue_id]
    assert elapsed < DEADLINE + SLACK + 1.0  # one transaction's bound, plus DNS and the database
    (row,) = world.rows()
    assert row.last_error is not None
    assert row.last_error.endswith(f"transaction not done within {DEADLINE:g} s")
