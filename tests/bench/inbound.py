"""Inbound SMTP throughput: our full inbound listener (`postwarden smtp`) against a bare aiosmtpd sink and
a real Postfix. `--smoke` runs it on tiny data in seconds (tests/test_bench_smoke.py does, in `make test`).

Ours does everything it does in production: SPF, DKIM and DMARC against the loopback DNS server (the
sender domain publishes SPF, DKIM and a DMARC record with rua), Authentication-Results and Received,
durable storage (file fsync'd + row committed before 250), and the DMARC evaluation handed to Celery
(filesystem broker). Postfix (tests/support/postfix.py: its own instance, one smtpd on loopback, no
milters, no DNS, delivery to a Maildir) does no SPF/DKIM/DMARC, and still sets the bar; its rate is
the rate it accepts at (250 once its queue file is fsync'd), and every message must then reach the
Maildir. Each server runs as its own processes and is driven by
  1. `smtp-source -s 10 -m 5000 -F signed.eml` (Postfix's load generator; one DKIM-signed 4 KB
     message, a new connection per message), and
  2. a Python client sending 5,000 DKIM-signed 4 KB messages over 10 sessions (ours and the sink).
Each server first gets 20 messages and is left to go idle (warm-up). Every message must be accepted
(and, for ours, stored). Server CPU is the user + system time of the server's processes (and of those
they reaped) during the run. `--stored N` also measures ours on a store already holding N messages;
`--workers N` runs ours with N SMTP worker processes.
Not a pytest test: run it directly, `.venv/bin/python tests/bench/inbound.py` (or `make bench`). The
last line is the smtp-source result. Without Postfix (or root) a --smoke run says so and leaves it
out; a full run stops.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `app` and `tests` importable

import aiosmtplib  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from app.accounts import ensure_account  # noqa: E402
from app.auth.dkim import sign  # noqa: E402
from app.auth.dkimkeys import dns_txt_value, generate_private_key_pem  # noqa: E402
from app.config import DKIMSelector, load_config  # noqa: E402
from app.db import session_scope  # noqa: E402
from app.migrate import upgrade_database  # noqa: E402
from app.models import Message  # noqa: E402
from app.store.mailboxes import ensure_mailbox, new_message_row, with_uids  # noqa: E402
from tests.bench.args import SMOKE, option  # noqa: E402
from tests.support.configs import write_config  # noqa: E402
from tests.support.dnsserver import DNSTestServer  # noqa: E402
from tests.support.postfix import Postfix, postfix, unavailable  # noqa: E402
from tests.support.proctree import tree_cpu_seconds  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

MESSAGES = 40 if SMOKE else 5000
WARM_UP = 20  # messages each server gets before it is measured (its processes started, caches filled)
SESSIONS = 2 if SMOKE else 10
SIZE = 4096
DISTINCT_SIGNED = 5 if SMOKE else 200
# `--stored N`: also run ours with N messages already in the recipient's Inbox (issue 14: the rate
# with 1,000,000 stored must be within 10 % of an empty store's).
STORED = option("--stored") or 0
# `--workers N`: ours with N SMTP worker processes (default: `postwarden smtp`'s own default).
WORKERS = option("--workers")
PREFILL_CHUNK = 50_000
SENDER_DOMAIN = "sender.example"
SENDER = f"bench@{SENDER_DOMAIN}"
RECIPIENT = "admin@example.org"
TARGET_RATIO = 0.35  # of Postfix's accepted rate (issue 14; the goal is 0.7)
TARGET_CPU_MS = 2.5  # server CPU per message
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
POSTWARDEN = str(Path(sys.executable).with_name("postwarden"))
LISTENING = re.compile(r"smtp inbound listening on 127\.0\.0\.1:(\d+)")

# The baseline: aiosmtpd with a handler that accepts everything and keeps nothing.
BARE_SINK = """
import asyncio, signal, sys
from aiosmtpd.smtp import SMTP

class Sink:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        Sink.count += 1
        return "250 OK"

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink(), hostname="sink"), "127.0.0.1", 0)
    print("port", server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print("count", Sink.count, flush=True)

asyncio.run(main())
"""


@dataclass(frozen=True)
class Server:
    port: int
    pid: int


@dataclass(frozen=True)
class Run:
    seconds: float
    server_cpu: float  # CPU seconds the server's processes used meanwhile

    @property
    def rate(self) -> float:
        return MESSAGES / self.seconds

    @property
    def cpu_ms_per_message(self) -> float:
        return self.server_cpu / MESSAGES * 1000


def warm_up(server: Server, message_file: Path) -> None:
    """WARM_UP messages, then wait until the server's processes are idle: what a server does once
    (starting helper processes, importing, filling caches) is not counted against its messages."""
    run_smtp_source(server.port, message_file, WARM_UP)
    last = [tree_cpu_seconds(server.pid)]

    def idle() -> bool:
        time.sleep(0.3)  # the interval the CPU use is sampled over
        now = tree_cpu_seconds(server.pid)
        used, last[0] = now - last[0], now
        return used < 0.03

    wait_until(idle, 60, "the server idle after its warm-up")


def measure(server: Server, client: Callable[[int], object]) -> Run:
    cpu, started = tree_cpu_seconds(server.pid), time.perf_counter()
    client(server.port)
    return Run(time.perf_counter() - started, tree_cpu_seconds(server.pid) - cpu)


@contextmanager
def bare_sink() -> Iterator[tuple[Server, list[int]]]:
    """The sink process; yields it and a list that holds its message count after it stops."""
    process = subprocess.Popen([sys.executable, "-c", BARE_SINK], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline().split()[1])
    count: list[int] = []
    try:
        yield Server(port, process.pid), count
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        count.append(int(out.split()[-1]))


@contextmanager
def postwarden_smtp(config_file: Path, log: Path) -> Iterator[Server]:
    env = {**os.environ, "POSTWARDEN_CONFIG": str(config_file)}
    with log.open("wb") as out:
        command = [POSTWARDEN, "smtp"] + ([] if WORKERS is None else ["--workers", str(WORKERS)])
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "smtp ready" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"postwarden smtp did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield Server(int(LISTENING.findall(log.read_text())[0]), process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def run_smtp_source(port: int, message_file: Path, count: int = MESSAGES) -> None:
    """`message_file` is sent as it is (smtp-source turns its LF line ends into CRLF)."""
    command = [SMTP_SOURCE, "-s", str(SESSIONS), "-m", str(count), "-F", str(message_file)]
    command += ["-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or done.stderr:
        raise SystemExit(f"smtp-source failed ({done.returncode}): {done.stderr[-2000:]}")


async def _send_session(port: int, messages: list[bytes]) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="client.sender.example")
    await client.connect()
    for message in messages:
        # aiosmtplib raises on a refused sender or DATA; refused recipients come back here.
        refused, _reply = await client.sendmail(SENDER, [RECIPIENT], message)
        if refused:
            raise SystemExit(f"recipient refused: {refused}")
    await client.quit()


def run_python_client(port: int, messages: list[bytes]) -> None:
    async def run() -> None:
        await asyncio.gather(*(_send_session(port, messages[i::SESSIONS]) for i in range(SESSIONS)))

    asyncio.run(run())


def signed_messages(key_file: Path) -> list[bytes]:
    """5,000 4 KB messages, DKIM-signed (rsa-sha256, relaxed/relaxed) by the sender domain.

    200 distinct messages are signed and sent in turn: the server verifies every signature anew
    either way (its DKIM key cache holds the public key, not results)."""
    selector = DKIMSelector(selector="bench", algorithm="rsa", private_key_file=key_file)
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * (SIZE // len(line))
    messages = []
    for number in range(DISTINCT_SIGNED):
        message = (
            f"From: Bench <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench {number}\r\n"
            f"Message-ID: <bench-{number}@{SENDER_DOMAIN}>\r\n"
            f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n{body}"
        ).encode()
        messages.append(sign(message, SENDER_DOMAIN, [selector]) + message)
    return [messages[i % DISTINCT_SIGNED] for i in range(MESSAGES)]


def publish_sender(dns: DNSTestServer, key_pem: bytes) -> None:
    dns.txt(SENDER_DOMAIN, "v=spf1 ip4:127.0.0.1 -all")
    dns.txt(f"_dmarc.{SENDER_DOMAIN}", f"v=DMARC1; p=reject; rua=mailto:dmarc@{SENDER_DOMAIN}")
    dns.txt(f"bench._domainkey.{SENDER_DOMAIN}", dns_txt_value(key_pem, "rsa"))


def stored_count(database_url: str) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def our_store(directory: Path, dns_port: int, stored: int = 0) -> tuple[Path, str]:
    """Our config (an inbound listener on a free port) and migrated database, with `stored` messages."""
    listener = '[[listeners]]\nkind = "inbound"\nport = 0\n'
    config_file = write_config(directory, listener, dns_port=dns_port)
    database_url = load_config(config_file).resolved_database_url
    upgrade_database(database_url)
    if stored:
        prefill(database_url, stored)
    return config_file, database_url


def compare_stored(directory: Path, dns_port: int, empty: Run) -> None:
    """Ours on a store holding STORED messages, with the smtp-source load; against the `empty` run."""
    config_file, database_url = our_store(directory, dns_port, STORED)
    with postwarden_smtp(config_file, directory / "smtp.log") as server:
        message_file = directory.parent / "signed.eml"
        warm_up(server, message_file)
        run = measure(server, lambda port: run_smtp_source(port, message_file))
    if stored_count(database_url) != STORED + WARM_UP + MESSAGES:
        raise SystemExit(f"with {STORED} stored, not every message was stored")
    print(
        f"with {STORED} stored: inbound {run.rate:.0f} msg/s ({run.cpu_ms_per_message:.2f} ms CPU/msg), "
        f"ratio to an empty store {run.rate / empty.rate:.2f} (target >= 0.9)",
        flush=True,
    )


def prefill(database_url: str, count: int) -> None:
    """`count` message rows in the recipient's Inbox, each with its own Message-ID and UID and one of
    5,000 senders, inserted with executemany in chunks; rows only (the inbound path reads no earlier
    message's file). Their UIDs are claimed as the store claims them (with_uids)."""
    account, mailbox = "admin", "Inbox"  # RECIPIENT's, as tests/support/configs.py configures it
    started = time.perf_counter()
    with session_scope(database_url) as session:
        account_id = ensure_account(session, account).id
        mailbox_id = ensure_mailbox(session, account_id, mailbox)
    for first in range(0, count, PREFILL_CHUNK):
        with session_scope(database_url) as session:
            rows = [
                _stored_row(n, account_id, mailbox_id)
                for n in range(first, min(count, first + PREFILL_CHUNK))
            ]
            session.execute(insert(Message.__table__), with_uids(session, rows))
    print(f"prefilled {count} messages in {time.perf_counter() - started:.0f} s", flush=True)


def _stored_row(n: int, account_id: int, mailbox_id: int) -> dict[str, object]:
    domain = f"sender{n % 500}.example"
    columns = {
        "message_id": f"<stored-{n}@{domain}>",
        "subject": f"stored {n}",
        "content_hash": f"{n:064x}",
        "msg_from": f"user{n % 5000}@{domain}",
        "msg_from_domain": domain,
        "mail_from": f"user{n % 5000}@{domain}",
        "remote_ip": f"192.0.{n % 250}.{n % 200 + 1}",
        "dmarc_result": "pass",
    }
    path = f"messages/20261101/stored{n:09d}"
    return new_message_row(
        columns, account_id=account_id, mailbox_id=mailbox_id, destined_mailbox_id=None, path=path, size=SIZE
    )


def report(name: str, ours: Run, bare: Run, reference: Run | None = None) -> None:
    """Print one comparison."""
    against = (
        ""
        if reference is None
        else f"; postfix {reference.rate:.0f} msg/s, ratio {ours.rate / reference.rate:.2f}"
    )
    print(
        f"{name}: inbound {ours.rate:.0f} msg/s ({ours.cpu_ms_per_message:.2f} ms CPU/msg), "
        f"bare aiosmtpd {bare.rate:.0f} msg/s ({bare.cpu_ms_per_message:.2f} ms CPU/msg); "
        f"throughput ratio {ours.rate / bare.rate:.2f}, "
        f"CPU ratio {bare.server_cpu / ours.server_cpu:.2f}{against}",
        flush=True,
    )


def measure_postfix(message_file: Path) -> Run | None:
    """Postfix's run with the smtp-source load; None (with a note) where it cannot run, in --smoke."""
    problem = unavailable()
    if problem is not None:
        if not SMOKE:
            raise SystemExit(f"cannot run the reference Postfix: {problem}")
        print(f"note: no Postfix comparison: {problem}", flush=True)
        return None
    with postfix(RECIPIENT.rpartition("@")[2]) as reference:
        server = Server(reference.port, reference.master_pid())
        warm_up(server, message_file)
        run = measure(server, lambda port: run_smtp_source(port, message_file))
        delivered = _wait_delivered(reference)
    print(
        f"postfix: {run.rate:.0f} msg/s accepted ({run.cpu_ms_per_message:.2f} ms CPU/msg while accepting), "
        f"{delivered} delivered to its Maildir",
        flush=True,
    )
    return run


def _wait_delivered(reference: Postfix) -> int:
    try:
        wait_until(
            lambda: reference.delivered() >= WARM_UP + MESSAGES, 120, "postfix delivered every message"
        )
    except AssertionError:
        raise SystemExit(
            f"postfix delivered {reference.delivered()} of {WARM_UP + MESSAGES}:\n{reference.log()}"
        ) from None
    return reference.delivered()


def headline(ours: Run, bare: Run, reference: Run | None) -> str:
    if reference is None:
        against = "postfix not run, ratio to postfix n/a"
    else:
        against = f"postfix {reference.rate:.0f} msg/s, ratio to postfix {ours.rate / reference.rate:.2f}"
    return (
        f"inbound: {ours.rate:.0f} msg/s, bare aiosmtpd {bare.rate:.0f} msg/s, "
        f"ratio {ours.rate / bare.rate:.2f}, {against}, cpu {ours.cpu_ms_per_message:.2f} ms/msg "
        f"(target ratio to postfix >= {TARGET_RATIO}, cpu <= {TARGET_CPU_MS} ms)"
    )


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="postwarden-bench-"))
    dns = DNSTestServer().start()
    try:
        key_pem = generate_private_key_pem("rsa")
        key_file = work / "dkim.pem"
        key_file.write_bytes(key_pem)
        publish_sender(dns, key_pem)
        started = time.perf_counter()
        messages = signed_messages(key_file)
        print(f"signed {DISTINCT_SIGNED} messages in {time.perf_counter() - started:.1f} s", flush=True)
        message_file = work / "signed.eml"
        message_file.write_bytes(messages[0].replace(b"\r\n", b"\n"))

        def source(port: int) -> None:
            run_smtp_source(port, message_file)

        def python_client(port: int) -> None:
            run_python_client(port, messages)

        with bare_sink() as (server, bare_count):
            warm_up(server, message_file)
            bare_source = measure(server, source)
            bare_python = measure(server, python_client)
        if bare_count != [WARM_UP + 2 * MESSAGES]:
            raise SystemExit(f"the bare sink counted {bare_count}, expected {WARM_UP + 2 * MESSAGES}")
        reference = measure_postfix(message_file)

        config_file, database_url = our_store(work / "config", dns.port)
        with postwarden_smtp(config_file, work / "smtp.log") as server:
            warm_up(server, message_file)
            ours_source = measure(server, source)
            after_source = stored_count(database_url)
            ours_python = measure(server, python_client)
            after_python = stored_count(database_url)
        if (after_source, after_python) != (WARM_UP + MESSAGES, WARM_UP + 2 * MESSAGES):
            raise SystemExit(f"stored {after_source} then {after_python} messages; expected every one")

        if STORED:
            compare_stored(work / "stored", dns.port, ours_source)
        report("python client, DKIM-signed", ours_python, bare_python)
        report("smtp-source, DKIM-signed", ours_source, bare_source, reference)
        print(headline(ours_source, bare_source, reference))
    finally:
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
