"""Chaos driver (issue 9, item 8): mail streams in over many sessions while the SMTP process group, a
Celery worker and a throwaway Redis (the broker) are each killed with SIGKILL and restarted at random
points. tests/test_chaos.py runs it; `CHAOS_MESSAGES=3000 pytest tests/test_chaos.py -s` runs it bigger.

Message n is sent inbound (even n, to admin@example.org) or submitted with AUTH over STARTTLS (odd n, to
r<n>@example.net, whose MX is the sink in this process). A client that gets no 250 (connection lost,
4xx) sends message n again; each try carries its own `X-Chaos-Attempt: n.a` field, so what the store
and the sink hold can be told apart per try:

- the try that got the 250 must be stored exactly once (inbound: one Message row and its file) and
  delivered at least once (submission: received by the sink); zero is lost, two stored is a duplicate;
- a try without a 250 may or may not be stored/queued (the server may have committed it and died before
  the client read the reply), but at most once: counted as "unacknowledged but stored/delivered";
- the sink receiving a try more than once is a redelivery, which at-least-once delivery allows
  (a worker killed after the peer's 250 and before the row's commit); counted, not failed.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import select

from app.config import Config
from app.db import engine_for, session_scope
from app.models import Message
from app.queue.outgoing import queue_size
from tests.support.celeryworker import CELERY, wait_for_text
from tests.support.smtppeers import PeerHandler

POSTWARDEN = str(Path(sys.executable).with_name("postwarden"))
INBOUND_SENDER = "alice@sender.example"
SUBMITTER = ("bob", "secret password", "bob@example.org")
_ATTEMPT = re.compile(rb"^X-Chaos-Attempt: (\d+)\.(\d+)\r?$", re.MULTILINE)
Try = tuple[int, int]  # (message number, attempt number)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def attempt_of(content: bytes) -> Try | None:
    match = _ATTEMPT.search(content)
    return (int(match.group(1)), int(match.group(2))) if match else None


class Process:
    """A server run as its own process group, so that SIGKILL takes its children too (a crash)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path, ready: str) -> None:
        self.name, self.command, self.env, self.logs, self.ready = name, command, env, logs, ready
        self.runs = 0
        self.exits: list[int] = []  # return codes of runs that ended without being killed
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        log = self.logs / f"{self.name}-{self.runs}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for_text(log, self.ready, timeout=60, process=self.process)

    def revive(self) -> None:
        """What a process manager (systemd's Restart=) does: start again what ended by itself."""
        if self.process is not None and self.process.poll() is not None:
            self.exits.append(self.process.returncode)
            self.start()

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:  # ended by itself since the last look
            self.exits.append(self.process.returncode)
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)


def redis_process(port: int, logs: Path) -> Process:
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(logs)]  # fmt: skip
    return Process("redis", command, dict(os.environ), logs, "Ready to accept connections")


def smtp_process(config_file: Path, logs: Path) -> Process:
    env = {**os.environ, "POSTWARDEN_CONFIG": str(config_file)}
    return Process("smtp", [POSTWARDEN, "smtp", "--workers", "2"], env, logs, "smtp ready")


def celery_process(config_file: Path, logs: Path, name: str = "chaos") -> Process:
    """A worker with 2 processes; `name` tells the workers of several nodes apart on one broker."""
    env = {**os.environ, "POSTWARDEN_CONFIG": str(config_file)}
    command = [CELERY, "-A", "tasks", "worker", "--loglevel=INFO", "--concurrency=2", "--pool=prefork",
               "--without-mingle", "--without-gossip", "-n", f"{name}-{os.getpid()}@%h"]  # fmt: skip
    return Process("celery", command, env, logs, "ready.")


@dataclass
class Sink(PeerHandler):
    """The remote MX: records when it took each try (monotonic), in this process's clock."""

    taken: list[tuple[Try, float]] = field(default_factory=list)
    # Seconds between taking a message and its 250, as a real MX spends on its checks: a worker
    # killed then has the message delivered but not marked so (the redelivery window).
    reply_after: float = 0.03

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        found = attempt_of(envelope.original_content or envelope.content)
        self.taken.append((found or (-1, -1), time.monotonic()))
        await asyncio.sleep(self.reply_after)
        return "250 2.0.0 OK"


@dataclass
class Plan:
    messages: int
    sessions: int
    seed: int
    inbound_port: int
    submission_port: int
    tls: ssl.SSLContext
    # Each session paces its messages to spread them over this many seconds, so the kills land
    # while mail streams in; a session slowed by the kills catches up, without pause, afterwards.
    spread: float

    @property
    def send_deadline(self) -> float:
        return self.spread + 120.0  # every message must get its 250 within it


@dataclass
class Ledger:
    """What the clients saw: the tries made and, per message, the try that got the 250 and when."""

    tries: Counter[int] = field(default_factory=Counter)
    acked: dict[int, tuple[int, float]] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)  # why tries got no 250
    lock: threading.Lock = field(default_factory=threading.Lock)


def message_for(number: int, attempt: int) -> tuple[str, list[str], bytes]:
    inbound = number % 2 == 0
    sender = INBOUND_SENDER if inbound else SUBMITTER[2]
    recipient = "admin@example.org" if inbound else f"r{number}@example.net"
    # 32 KB: long enough in transit and in the store that kills land inside transactions.
    body = "".join(f"chaos {number} line {line} " + "x" * 60 + "\r\n" for line in range(400))
    content = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: chaos {number}\r\n"
        f"Message-ID: <chaos-{number}@chaos.test>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
        f"X-Chaos-Attempt: {number}.{attempt}\r\n\r\n{body}"
    )
    return sender, [recipient], content.encode()


class Client:
    """One client thread's sessions: one to each listener, reopened after any failure."""

    def __init__(self, plan: Plan, ledger: Ledger) -> None:
        self.plan, self.ledger = plan, ledger
        self.sessions: dict[bool, smtplib.SMTP] = {}

    def run(self, numbers: list[int], deadline: float) -> None:
        start, interval = time.monotonic(), self.plan.spread / max(len(numbers), 1)
        for index, number in enumerate(numbers):
            time.sleep(max(0.0, start + index * interval - time.monotonic()))
            attempt = 0
            while number not in self.ledger.acked and number not in self.ledger.rejected:
                if time.monotonic() > deadline:
                    return
                attempt += 1
                with self.ledger.lock:
                    self.ledger.tries[number] += 1
                self.send(number, attempt)
        self.close()

    def send(self, number: int, attempt: int) -> None:
        inbound = number % 2 == 0
        sender, recipients, content = message_for(number, attempt)
        try:
            self.session(inbound).sendmail(sender, recipients, content)
            self.ledger.acked[number] = (attempt, time.monotonic())
        except smtplib.SMTPResponseException as e:
            reply = f"{e.smtp_code} {e.smtp_error[:80]!r}"
            if 500 <= e.smtp_code < 600:
                self.ledger.rejected[number] = reply
            self.failed(reply)
            self.drop(inbound)
        except (OSError, smtplib.SMTPException) as e:
            self.failed(type(e).__name__)
            self.drop(inbound)
            time.sleep(0.1)  # the server is down or restarting: don't spin

    def failed(self, why: str) -> None:
        with self.ledger.lock:
            self.ledger.failures[why] += 1

    def session(self, inbound: bool) -> smtplib.SMTP:
        if inbound not in self.sessions:
            port = self.plan.inbound_port if inbound else self.plan.submission_port
            client = smtplib.SMTP("127.0.0.1", port, timeout=30)
            self.sessions[inbound] = client
            client.ehlo("client.sender.example")
            if not inbound:
                client.starttls(context=self.plan.tls)
                client.login(SUBMITTER[0], SUBMITTER[1])
        return self.sessions[inbound]

    def drop(self, inbound: bool) -> None:
        client = self.sessions.pop(inbound, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for client in self.sessions.values():
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()
        self.sessions.clear()


class Chaos:
    """Kills one of the processes with SIGKILL at random times and restarts it after a random pause."""

    def __init__(self, rng: random.Random, targets: list[Process], pause: tuple[float, float]) -> None:
        self.rng, self.targets, self.pause = rng, targets, pause
        self.stop = threading.Event()
        self.kills: Counter[str] = Counter()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self._thread.is_alive():  # not started when a process failed its first start
            self._thread.join(timeout=120)

    def _run(self) -> None:
        order: list[Process] = []
        next_kill = time.monotonic() + self.rng.uniform(*self.pause)
        while not self.stop.wait(0.1):
            try:
                for process in self.targets:
                    process.revive()
                if time.monotonic() < next_kill:
                    continue
                if not order:  # each in turn, in a shuffled order: every kind gets killed
                    order = self.rng.sample(self.targets, len(self.targets))
                target = order.pop()
                target.kill()
                self.kills[target.name] += 1
                time.sleep(self.rng.uniform(0.0, 1.0))  # down for a while, clients meet a closed port
                target.start()
            except AssertionError as e:
                self.errors.append(f"a process did not start again: {e}")
                return
            next_kill = time.monotonic() + self.rng.uniform(*self.pause)


class Sweeper:
    """What beat does every minute, every second here: wakes the delivery workers; the broker may be
    down (then this sweep is skipped; the next one comes)."""

    def __init__(self, client: Celery, every: float = 1.0) -> None:
        self.client, self.every = client, every
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.client.send_task("tasks.mail.sweep_queue", retry=False)
            except Exception:  # any broker failure: the broker is being killed
                continue

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)


def send_all(plan: Plan, ledger: Ledger) -> None:
    deadline = time.monotonic() + plan.send_deadline
    threads = [
        threading.Thread(
            target=Client(plan, ledger).run, args=(list(range(i, plan.messages, plan.sessions)), deadline)
        )
        for i in range(plan.sessions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=plan.send_deadline + 60)


def stored_tries(config: Config) -> tuple[Counter[Try], list[str]]:
    """Inbound tries in the store (per try, how many Message rows), and what should not be there: rows
    whose file is missing or wrong, files without a row (recovery at each restart removes those), and
    messages the clients did not send (bounces)."""
    engine_for(config.resolved_database_url).dispose()  # connections from before a kill
    stored: Counter[Try] = Counter()
    broken = []
    with session_scope(config.resolved_database_url) as session:
        rows = list(session.scalars(select(Message)))
    for row in rows:
        path = config.data_dir / row.path
        content = path.read_bytes() if path.is_file() else b""
        found = attempt_of(content)
        if len(content) != row.size:
            broken.append(f"file missing or incomplete: {row.path}")
        elif found is None:  # no message of the clients: a bounce (DSN) of a submission
            broken.append(f"not a client's message: {row.path} {row.subject!r}")
        else:
            stored[found] += 1
    paths = {row.path for row in rows}
    for folder in ("messages", "tmp"):
        files = (p for p in (config.data_dir / folder).rglob("*") if p.is_file())
        broken += [f"no row: {p}" for p in files if p.relative_to(config.data_dir).as_posix() not in paths]
    return stored, broken


def settle(
    config: Config, sink: Sink, ledger: Ledger, processes: list[Process], timeout: float
) -> float:
    """Wait until the outgoing queue is empty and the sink has every acknowledged submission; seconds."""
    started = time.monotonic()
    wanted = {(n, a) for n, (a, _) in ledger.acked.items() if n % 2}
    while time.monotonic() - started < timeout:
        for process in processes:
            process.revive()
        with session_scope(config.resolved_database_url) as session:
            empty = queue_size(session) == 0
        if empty and wanted <= {t for t, _ in sink.taken}:
            break
        time.sleep(0.2)
    return time.monotonic() - started


@dataclass
class Figures:
    messages: int
    unsent: list[int]
    rejected: dict[int, str]
    tries: int
    failures: Counter[str]
    lost: list[Try]
    duplicates: list[Try]
    broken: list[str]
    unacked_stored: int
    undelivered: list[Try]
    unacked_delivered: int
    redeliveries: int
    delays: list[float]
    exits: dict[str, list[int]] = field(default_factory=dict)  # per process, runs that ended alone

    def report(self) -> str:
        delays = sorted(self.delays) or [0.0]
        return (
            f"messages {self.messages}, tries {self.tries}, unsent {len(self.unsent)}, "
            f"rejected {len(self.rejected)}\ntries without a 250: {dict(self.failures.most_common(8))}\n"
            f"inbound: lost {len(self.lost)}, duplicates {len(self.duplicates)}, unexpected "
            f"{len(self.broken)}, unacknowledged tries stored {self.unacked_stored}\n"
            f"submission: undelivered {len(self.undelivered)}, redeliveries {self.redeliveries}, "
            f"unacknowledged tries delivered {self.unacked_delivered}\n"
            f"delay 250 -> sink: median {statistics.median(delays):.2f} s, max {delays[-1]:.2f} s"
        )


def figures(messages: int, ledger: Ledger, stored: Counter[Try], broken: list[str], sink: Sink) -> Figures:
    acked = {(n, a) for n, (a, _) in ledger.acked.items()}
    inbound = {t for t in acked if t[0] % 2 == 0}
    submitted = acked - inbound
    delivered = Counter(t for t, _ in sink.taken)
    first: dict[Try, float] = {}
    for t, when in sink.taken:
        first.setdefault(t, when)
    return Figures(
        messages=messages,
        unsent=[n for n in range(messages) if n not in ledger.acked and n not in ledger.rejected],
        rejected=dict(ledger.rejected),
        tries=sum(ledger.tries.values()),
        failures=ledger.failures,
        lost=sorted(t for t in inbound if stored[t] == 0),
        duplicates=sorted(t for t, count in stored.items() if count > 1),
        broken=broken,
        unacked_stored=sum(1 for t in stored if t not in acked),
        undelivered=sorted(t for t in submitted if delivered[t] == 0),
        unacked_delivered=sum(1 for t in delivered if t not in acked),
        redeliveries=sum(count - 1 for count in delivered.values()),
        delays=[first[(n, a)] - when for n, (a, when) in ledger.acked.items() if (n, a) in first],
    )


def run_chaos(
    plan: Plan,
    processes: dict[str, Process],
    config: Config,
    sink: Sink,
    celery_client: Celery,
    settle_timeout: float,
    pause: tuple[float, float],
    say: Callable[[str], None] = print,
) -> Figures:
    """The whole run: start the processes, send under chaos, settle with everything up, count."""
    started = time.monotonic()
    ledger = Ledger()
    chaos = Chaos(random.Random(plan.seed), list(processes.values()), pause)
    sweeper = Sweeper(celery_client)
    try:
        for process in processes.values():
            process.start()
        chaos.start()
        send_all(plan, ledger)
        chaos.finish()
        assert chaos.errors == [], chaos.errors
        sent = time.monotonic()
        settled = settle(config, sink, ledger, list(processes.values()), settle_timeout)
        stored, broken = stored_tries(config)
    finally:
        chaos.finish()
        sweeper.finish()
        for process in processes.values():
            process.kill()
    result = figures(plan.messages, ledger, stored, broken, sink)
    result.exits = {p.name: p.exits for p in processes.values() if p.exits}
    say(
        f"chaos seed {plan.seed}: {plan.messages} messages over {plan.sessions} sessions; kills "
        f"{dict(chaos.kills)}; exited by themselves (restarted): {result.exits}; sending "
        f"{sent - started:.1f} s, settling {settled:.1f} s, wall {time.monotonic() - started:.1f} s\n"
        f"{result.report()}"
    )
    return result
