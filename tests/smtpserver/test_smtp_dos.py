"""Hostile load on the SMTP listener (issue 8, item 6), over real loopback sockets.

Session caps (per address, in all, across worker processes, below the open-file limit), accepting
when out of file descriptors, the listen backlog, pipelined floods, the 421 that drops what was
pipelined after it, the memory budget for message data, and the DATA timeouts. Client sockets may
bind to other loopback addresses (127.0.0.2...) to act as other senders.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.config import Limits
from app.smtpserver.admission import (
    TOO_MANY_FROM_ADDRESS,
    TOO_MANY_SESSIONS,
    SessionCounts,
    SessionGate,
    open_file_session_cap,
)
from app.smtpserver.data import OVER_BUDGET, MemoryBudget, read_message_data
from tests.support.celeryworker import wait_for_text
from tests.support.dnsserver import DNSTestServer
from tests.support.logcapture import captured
from tests.support.smtpfixtures import (
    LineClient,
    ThreadedSMTP,
    make_message,
    stored_messages,
    write_smtp_config,
)
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
POSTWARDEN = str(Path(sys.executable).with_name("postwarden"))
LISTENING = re.compile(r"smtp inbound listening on 127\.0\.0\.1:(\d+)")
TOO_MANY = "421 4.7.0 Too many connections"
SENDER = "alice@sender.example"


class Client(LineClient):
    """LineClient from a chosen loopback source address."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()


def greeted_after_release(port: int, source: str) -> bool:
    client = Client(port, source)
    client.close()
    return client.greeting.startswith("220")


# Session caps, in one process.


def test_per_address_cap(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(max_sessions_per_ip=3)
    held = [Client(server.inbound_port) for _ in range(3)]
    assert all(c.greeting.startswith("220") for c in held)
    refused = Client(server.inbound_port)
    assert refused.greeting.startswith(f"{TOO_MANY} from your address")
    assert refused.closed_by_server()
    other = Client(server.inbound_port, "127.0.0.2")
    assert other.greeting.startswith("220"), "another address is not affected"
    assert other.command("EHLO other.example").startswith("250")
    held.pop().close()
    wait_until(lambda: greeted_after_release(server.inbound_port, "127.0.0.1"), what="a freed place")


def test_cap_on_all_sessions_counts_every_listener(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(max_sessions=4, max_sessions_per_ip=10)
    held = [Client(server.inbound_port, f"127.0.0.{i}") for i in (2, 3)]
    held += [Client(server.submission_port, f"127.0.0.{i}") for i in (4, 5)]
    assert all(c.greeting.startswith("220") for c in held)
    for port in (server.inbound_port, server.submission_port):
        refused = Client(port, "127.0.0.6")
        assert refused.greeting == f"{TOO_MANY}; try again later"
        assert refused.closed_by_server()
    held[0].command("QUIT")
    wait_until(lambda: greeted_after_release(server.inbound_port, "127.0.0.6"), what="a freed place")


def test_refused_connections_are_logged(
    smtp_factory: Callable[..., ThreadedSMTP],
) -> None:
    server = smtp_factory(max_sessions_per_ip=1)
    holder = Client(server.inbound_port)
    with captured("app.smtpserver") as log:
        for _ in range(5):
            assert Client(server.inbound_port).greeting.startswith(TOO_MANY)
    refusals = log.messages("refused connection from 127.0.0.1")
    assert len(refusals) == 5
    holder.close()


# Across worker processes and within the open-file limit: the real `postwarden smtp`.


@contextmanager
def smtp_process(
    tmp_path: Path, dns: DNSTestServer, workers: int, open_files: int | None = None, **limits: object
) -> Iterator[tuple[int, Path]]:
    """`postwarden smtp` with these limits (and RLIMIT_NOFILE, soft and hard, if given); yields its
    inbound port and log file."""
    config_file = write_smtp_config(tmp_path / "cfg", dns, None, **limits)
    log = tmp_path / "smtp.log"

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [POSTWARDEN, "smtp", "--workers", str(workers)],
            env={**os.environ, "POSTWARDEN_CONFIG": str(config_file)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit_files,
        )
    try:
        text = wait_for_text(log, "smtp ready", process=process)
        yield int(LISTENING.findall(text)[0]), log
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_caps_hold_across_worker_processes(tmp_path: Path, dns: DNSTestServer) -> None:
    with smtp_process(tmp_path, dns, workers=2, max_sessions=6, max_sessions_per_ip=4) as (port, _):
        # One at a time: each answer comes after the worker counted the session, so the next
        # connection, whichever worker takes it, sees that count.
        first = [Client(port, "127.0.0.2") for _ in range(6)]
        assert [c.greeting[:3] for c in first] == ["220"] * 4 + ["421"] * 2
        assert first[4].greeting.startswith(f"{TOO_MANY} from your address")
        second = [Client(port, "127.0.0.3") for _ in range(3)]
        assert [c.greeting[:3] for c in second] == ["220", "220", "421"]
        assert second[2].greeting == f"{TOO_MANY}; try again later"
        for client in first + second:
            client.close()
        wait_until(lambda: greeted_after_release(port, "127.0.0.3"), what="places freed in every worker")


def test_sessions_stay_below_the_open_file_limit(tmp_path: Path, dns: DNSTestServer) -> None:
    open_files = 128
    cap = open_files - 32 - 32  # a quarter (at least 32) spare, plus one accept batch
    limits = {"max_sessions": 5000, "max_sessions_per_ip": 5000}
    with smtp_process(tmp_path, dns, workers=1, open_files=open_files, **limits) as (port, log):
        assert f"at most {cap} sessions per worker process" in log.read_text()
        held = [Client(port, "127.0.0.2") for _ in range(cap)]
        assert all(c.greeting.startswith("220") for c in held)
        # A flood of connections beyond the cap: each is answered, none waits for a timeout.
        started = time.monotonic()
        for _ in range(200):
            refused = Client(port, "127.0.0.3", timeout=5)
            assert refused.greeting.startswith(TOO_MANY)
            refused.close()
        assert time.monotonic() - started < 20
        assert held[0].command("NOOP").startswith("250"), "held sessions still work"
        held[0].close()
        wait_until(lambda: greeted_after_release(port, "127.0.0.4"), what="a freed place")
        text = log.read_text()
        assert "Traceback" not in text and "Too many open files" not in text
        assert len(text.splitlines()) < 80, "the refusals are logged rate-limited"
        for client in held[1:]:
            client.close()


def test_accept_pauses_instead_of_spinning_when_out_of_file_descriptors(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with log.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.support.acceptorchild"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
        )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert select.select([child.stdout], [], [], 20)[0], "the child did not start"
        port = int(child.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
        started = time.monotonic()
        wait_until(lambda: log.read_text().count("not accepting") >= 4, what="four pauses")
        elapsed = time.monotonic() - started
        lines = log.read_text().splitlines()
        assert all("failed (Too many open files); not accepting for 0.5 s" in line for line in lines)
        assert len(lines) <= elapsed / 0.5 + 2, "one line per pause, not one per accept() attempt"
        child.stdin.write(b"free\n")
        child.stdin.flush()
        assert [c.recv(100) for c in clients] == [b"220 ready\r\n"] * 5, "queued clients are served"
    finally:
        child.kill()
        child.wait(timeout=10)


def test_listen_backlog_takes_a_burst_of_a_thousand(tmp_path: Path, dns: DNSTestServer) -> None:
    count = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 200), hard))
    limits = {"listen_backlog": 1024, "max_sessions": 2000, "max_sessions_per_ip": 2000}
    with smtp_process(tmp_path, dns, workers=1, **limits) as (port, _):
        sockets = []
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        try:
            greeted = greetings_within(sockets, timeout=5.0)
        finally:
            for sock in sockets:
                sock.close()
    # asyncio's create_server(sock=) listened again with a backlog of 100: a quarter waited for
    # SYN retries and had no greeting after 10 s.
    assert greeted == count


def greetings_within(sockets: list[socket.socket], timeout: float) -> int:
    waiting = {sock.fileno(): sock for sock in sockets}
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    greeted = 0
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for fd, _event in poller.poll(100):
            if waiting.pop(fd).recv(200).startswith(b"220"):
                greeted += 1
            poller.unregister(fd)
    return greeted


def test_backlog_beyond_somaxconn_is_reported(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with captured("app.smtpserver") as log:
        smtp_factory(listen_backlog=min(somaxconn + 1, 65535))
    assert log.messages(f"kernel caps it at net.core.somaxconn = {somaxconn}")


# Pipelined floods.


def test_pipelined_noop_flood_does_not_stall_other_sessions(
    smtp_factory: Callable[..., ThreadedSMTP],
) -> None:
    server = smtp_factory()
    flood = Client(server.inbound_port)
    count = 200_000
    replies = bytearray()

    def read_replies() -> None:
        while len(replies) < count * len(b"250 2.0.0 OK\r\n"):
            data = flood.sock.recv(1 << 20)
            if not data:
                return
            replies.extend(data)

    reader = threading.Thread(target=read_replies)
    reader.start()
    other = Client(server.inbound_port, "127.0.0.2")
    threading.Thread(target=flood.sock.sendall, args=(b"NOOP\r\n" * count,), daemon=True).start()
    worst = 0.0
    while reader.is_alive():
        started = time.monotonic()
        assert other.command("NOOP").startswith("250")
        worst = max(worst, time.monotonic() - started)
    reader.join()
    assert replies.count(b"\r\n") == count
    print(f"NOOP flood of {count}: another session waited at most {worst * 1000:.1f} ms")
    assert worst < 0.25, f"another session waited {worst:.3f} s for a NOOP reply"


def test_commands_pipelined_after_a_421_are_not_run(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(max_errors=3)
    client = Client(server.inbound_port)
    assert client.command("EHLO client.sender.example").startswith("250")
    assert client.command(f"MAIL FROM:<{SENDER}>").startswith("250")
    refused = "".join(f"RCPT TO:<n{i}@relay.example>\r\n" for i in range(3))
    after = "".join(f"RCPT TO:<after{i}@relay.example>\r\n" for i in range(20))
    with captured("app.smtpserver") as log:
        client.send(refused + after)
        replies = [client.reply() for _ in range(5)]
        assert client.closed_by_server()
    assert [r[:3] for r in replies] == ["550", "550", "550", "421", ""]
    assert log.messages("n2@relay.example"), "the refused recipients are logged"
    assert not log.messages("after"), "nothing pipelined after the 421 reached the handler"


def test_malformed_paths_and_sizes_get_a_reply_not_a_traceback(
    smtp_factory: Callable[..., ThreadedSMTP],
) -> None:
    client = Client(smtp_factory(max_errors=20).inbound_port)
    assert client.command("EHLO client.sender.example").startswith("250")
    with captured("app.smtpserver") as log:
        for path in ("<", "<@", "<a@"):
            assert client.command(f"MAIL FROM:{path}").startswith("553 5.1.3")
        for size in ("\u00b2", "1" * 30, "١٢"):
            assert client.command(f"MAIL FROM:<{SENDER}> SIZE={size}").startswith("501 5.5.4")
        assert client.command(f"MAIL FROM:<{SENDER}> SIZE=1000").startswith("250")
    assert not [line for _, level, line in log.lines if level >= logging.ERROR]


# Memory for message data.


def open_data(port: int, source: str = "127.0.0.1") -> Client:
    client = Client(port, source)
    assert client.command("EHLO client.sender.example").startswith("250")
    assert client.command(f"MAIL FROM:<{SENDER}>").startswith("250")
    assert client.command("RCPT TO:<admin@example.org>").startswith("250")
    assert client.command("DATA").startswith("354")
    return client


def body(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return make_message(SENDER, "admin@example.org", body="") + line * (size // len(line))


def test_memory_budget_answers_452_and_is_given_back(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(max_message_size=200_000, data_memory_budget=250_000)
    budget = server.service.budget
    first = open_data(server.inbound_port)
    first.send(body(180_000))
    wait_until(lambda: budget.used >= 170_000, what="the first message read")
    second = open_data(server.inbound_port, "127.0.0.2")
    second.send(body(100_000) + b".\r\n")
    assert second.reply() == OVER_BUDGET
    first.send(b".\r\n")
    assert first.reply().startswith("250")
    assert budget.used == 0
    assert second.command(f"MAIL FROM:<{SENDER}>").startswith("250")
    assert second.command("RCPT TO:<admin@example.org>").startswith("250")
    assert second.command("DATA").startswith("354")
    second.send(body(100_000) + b".\r\n")
    assert second.reply().startswith("250"), "the budget was given back"
    assert len(stored_messages(server)) == 2


def test_memory_budget_refuses_a_declared_size_at_once(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(max_message_size=200_000, data_memory_budget=250_000)
    holder = open_data(server.inbound_port)
    holder.send(body(180_000))
    wait_until(lambda: server.service.budget.used >= 170_000, what="the first message read")
    client = Client(server.inbound_port, "127.0.0.2")
    assert client.command("EHLO client.sender.example").startswith("250")
    assert client.command(f"MAIL FROM:<{SENDER}> SIZE=100000").startswith("250")
    assert client.command("RCPT TO:<admin@example.org>").startswith("250")
    assert client.command("DATA") == OVER_BUDGET, "no 354: the declared size does not fit"
    holder.close()
    wait_until(lambda: server.service.budget.used == 0, what="the budget given back by a lost session")


async def test_data_reader_charges_and_gives_back_the_budget() -> None:
    async def read(stream: bytes, budget: MemoryBudget) -> tuple[bytes, str | None, int]:
        reader = asyncio.StreamReader(limit=64)
        reader.feed_data(stream)
        reader.feed_eof()
        data = await read_message_data(reader, max_size=10_000, max_line_length=1000, budget=budget)
        return data.content, data.problem, data.held

    budget = MemoryBudget(1000)
    content, problem, held = await read(b"a\r\n..b\r\n" * 50 + b".\r\n", budget)
    assert (content, problem) == (b"a\r\n.b\r\n" * 50, None)
    assert held == budget.used == 400, "the bytes read are charged until given back"
    assert (await read(b"c" * 900 + b"\r\n.\r\n", budget))[1:] == (OVER_BUDGET, 0)
    assert budget.used == 400, "data over the budget holds nothing"
    budget.give_back(held)
    reader = asyncio.StreamReader()
    reader.feed_data(b"d" * 500)
    reader.feed_eof()
    with pytest.raises(ConnectionResetError):
        await read_message_data(reader, max_size=10_000, max_line_length=1000, budget=budget)
    assert budget.used == 0, "a lost connection gives back what it held"


# DATA timeouts.


def test_slow_data_that_keeps_flowing_is_not_cut(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(idle_timeout=1.0, data_timeout=1.0)
    client = open_data(server.inbound_port)
    client.send(make_message(SENDER, "admin@example.org", body=""))
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # three times both timeouts, a line every 0.25 s
        client.send(b"a slow line\r\n")
        time.sleep(0.25)
    client.send(b".\r\n")
    assert client.reply().startswith("250")
    assert client.command("NOOP").startswith("250")


def test_data_that_stops_flowing_is_cut(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(idle_timeout=30.0, data_timeout=0.5)
    client = open_data(server.inbound_port)
    client.send(b"Subject: stalled\r\n")
    started = time.monotonic()
    assert client.reply() == "421 4.4.2 No message data for 0.5 s"
    assert client.closed_by_server()
    assert time.monotonic() - started < 5


def test_data_has_a_total_deadline(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(data_timeout=1.0, data_total_timeout=1.5)
    client = open_data(server.inbound_port)
    started = time.monotonic()
    while not select.select([client.sock], [], [], 0.2)[0]:  # a line every 0.2 s until the reply
        assert time.monotonic() - started < 10, "no reply"
        client.send(b"trickle\r\n")
    reply = client.reply()
    assert reply == "421 4.4.2 Message data not complete in 1.5 s"
    assert 1.4 < time.monotonic() - started < 5


def test_session_counts_group_ipv6_by_64_and_forget_a_dead_worker() -> None:
    counts = SessionCounts(slots=2)
    assert counts.bucket("2001:db8:1:2::1") == counts.bucket("2001:db8:1:2:ffff::9")
    assert counts.bucket("::ffff:192.0.2.7") == counts.bucket("192.0.2.7")
    gate = SessionGate(Limits(max_sessions=3, max_sessions_per_ip=2), counts, open_file_cap=100)
    first = gate.admit("2001:db8:1:2::1")
    counts.slot = 1  # another worker, same memory
    assert isinstance(first, int) and gate.admit("2001:db8:1:2::2") == first
    assert gate.admit("2001:db8:1:2::3") == TOO_MANY_FROM_ADDRESS, "the /64 is full over both workers"
    assert isinstance(gate.admit("2001:db8:9::1"), int)
    assert gate.admit("192.0.2.1") == TOO_MANY_SESSIONS
    counts.clear(1)  # the second worker died with its two sessions
    assert (counts.total(), counts.in_bucket(first)) == (1, 1)
    assert isinstance(gate.admit("2001:db8:1:2::3"), int)


def test_open_file_cap_leaves_room() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 0 < open_file_session_cap() <= soft * 3 // 4
    assert Limits().data_memory_budget >= Limits().max_message_size
