"""Inbound SMTP throughput: a bare aiosmtpd sink against our full inbound listener (`postwarden smtp`).
`--smoke` runs it on tiny data in seconds (tests/test_bench_smoke.py does, in `make test`).

Ours does everything it does in production: SPF, DKIM and DMARC against the loopback DNS server (the
sender domain publishes SPF, DKIM and a DMARC record with rua), Authentication-Results and Received,
durable storage (file fsync'd + row committed before 250), and the DMARC evaluation handed to Celery
(filesystem broker). Each server runs as its own process and is driven by
  1. `smtp-source -s 10 -m 5000 -l 4096` (Postfix), and
  2. a Python client sending 5,000 DKIM-signed 4 KB messages over 10 sessions.
Every message must be accepted (and, for ours, stored). Not a pytest test: run it directly,
`.venv/bin/python tests/bench/inbound.py` (or `make bench`). The last line is the smtp-source result.
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
from sqlalchemy import func, select  # noqa: E402

from app.auth.dkim import sign  # noqa: E402
from app.auth.dkimkeys import dns_txt_value, generate_private_key_pem  # noqa: E402
from app.config import DKIMSelector, load_config  # noqa: E402
from app.db import session_scope  # noqa: E402
from app.migrate import upgrade_database  # noqa: E402
from app.models import Message  # noqa: E402
from tests.bench.args import SMOKE  # noqa: E402
from tests.support.configs import write_config  # noqa: E402
from tests.support.dnsserver import DNSTestServer  # noqa: E402

MESSAGES = 40 if SMOKE else 5000
SESSIONS = 2 if SMOKE else 10
SIZE = 4096
DISTINCT_SIGNED = 5 if SMOKE else 200
SENDER_DOMAIN = "sender.example"
SENDER = f"bench@{SENDER_DOMAIN}"
RECIPIENT = "admin@example.org"
TARGET_RATIO = 0.35
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


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process and all its descendants, from /proc (Linux)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid = int(entry.name)
        parents[pid], ticks[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


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
        process = subprocess.Popen([POSTWARDEN, "smtp"], env=env, stdout=out, stderr=subprocess.STDOUT)
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


def run_smtp_source(port: int) -> None:
    command = [SMTP_SOURCE, "-s", str(SESSIONS), "-m", str(MESSAGES), "-l", str(SIZE)]
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

    dkimpy signs in pure Python (~13 ms each), so 200 distinct messages are signed and sent in turn:
    the server verifies every signature anew either way."""
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


def report(name: str, ours: Run, bare: Run) -> float:
    """Print one comparison; the throughput ratio."""
    ratio = ours.rate / bare.rate
    print(
        f"{name}: inbound {ours.rate:.0f} msg/s ({ours.cpu_ms_per_message:.2f} ms CPU/msg), "
        f"bare aiosmtpd {bare.rate:.0f} msg/s ({bare.cpu_ms_per_message:.2f} ms CPU/msg); "
        f"throughput ratio {ratio:.2f}, CPU ratio {bare.server_cpu / ours.server_cpu:.2f} "
        f"(target {TARGET_RATIO})",
        flush=True,
    )
    return ratio


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

        with bare_sink() as (server, bare_count):
            bare_source = measure(server, run_smtp_source)
            bare_python = measure(server, lambda port: run_python_client(port, messages))
        if bare_count != [2 * MESSAGES]:
            raise SystemExit(f"the bare sink counted {bare_count}, expected {2 * MESSAGES}")

        listener = '[[listeners]]\nkind = "inbound"\nport = 0\n'
        config_file = write_config(work / "config", listener, dns_port=dns.port)
        database_url = load_config(config_file).resolved_database_url
        upgrade_database(database_url)
        with postwarden_smtp(config_file, work / "smtp.log") as server:
            ours_source = measure(server, run_smtp_source)
            after_source = stored_count(database_url)
            ours_python = measure(server, lambda port: run_python_client(port, messages))
            after_python = stored_count(database_url)
        if (after_source, after_python) != (MESSAGES, 2 * MESSAGES):
            raise SystemExit(f"stored {after_source} then {after_python} messages; expected every one")

        report("python client, DKIM-signed", ours_python, bare_python)
        ratio = report("smtp-source", ours_source, bare_source)
        ours, bare = ours_source.rate, bare_source.rate
        print(f"inbound: {ours:.0f} msg/s, bare aiosmtpd {bare:.0f} msg/s, ratio {ratio:.2f}")
    finally:
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
