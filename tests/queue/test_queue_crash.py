"""Crash safety: kill -9 a real Celery worker in the middle of 200 deliveries, restart it, and check
that every message arrived at least once, the queue is empty, and how many arrived twice.

The sink holds the session at a chosen moment so the kill lands exactly there: while the worker waits
for a RCPT reply (outside the DATA phase: no duplicate may happen), or after the sink has taken a
message but before the worker has its 250 (inside the DATA phase: exactly that message comes twice).
After the restart only the sweep brings the killed worker's rows back, once their leases expire.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from celery import Celery

from app.config import Config, load_config
from app.db import session_scope
from app.migrate import upgrade_database
from app.queue.enqueue import Queued, enqueue
from app.queue.outgoing import queue_size, remove_orphans
from tests.support.celeryworker import celery_worker, client_for
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.smtppeers import smtp_peer
from tests.support.waiting import wait_until

MESSAGES = 200
HOLD_AT = 60
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE)


class HoldingSink:
    """An aiosmtpd handler that records Message-IDs and, once, holds a session at `phase`."""

    def __init__(self, phase: Literal["RCPT", "DATA"]) -> None:
        self.phase = phase
        self.rcpts = 0
        self.received: list[str] = []
        self.holding = threading.Event()
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpts += 1
        if self.phase == "RCPT" and self.rcpts == HOLD_AT:
            await self._hold()
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        match = _MESSAGE_ID.search(envelope.original_content or envelope.content)
        self.received.append(match.group(1).decode() if match else "?")
        if self.phase == "DATA" and len(self.received) == HOLD_AT:
            await self._hold()  # taken, but the client never sees the 250
        return "250 2.0.0 OK"

    async def _hold(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        self.holding.set()
        await self._release.wait()

    def release(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)


def queue_for_the_sink(tmp_path: Path, dns: DNSTestServer, delivery: str) -> tuple[Path, Config]:
    """A config with `delivery` as its [delivery] section, example.net's MX on 127.0.0.1, and
    MESSAGES messages queued for it (Message-ID <i@crash.test>)."""
    config_file = write_config(tmp_path / "config", f"\n[delivery]\n{delivery}", dns_port=dns.port)
    config = load_config(config_file)
    upgrade_database(config.resolved_database_url)
    dns.add("example.net", "MX", "10 mx.example.net.")
    dns.add("mx.example.net", "A", "127.0.0.1")
    with session_scope(config.resolved_database_url) as session:
        for i in range(MESSAGES):
            content = f"Message-ID: <{i}@crash.test>\r\nSubject: {i}\r\n\r\nbody {i}\r\n".encode()
            enqueue(session, config, Queued(content, "admin@example.org", [f"r{i}@example.net"]))
    return config_file, config


def kill_at_the_hold(config_file: Path, log: Path, sink: HoldingSink, client: Celery) -> float:
    """Start a worker, sweep, SIGKILL the worker's process group once the sink holds; when (monotonic)."""
    with celery_worker(config_file, log, concurrency=1) as worker:
        client.send_task("tasks.mail.sweep_queue")
        assert sink.holding.wait(timeout=30), "the worker never reached the hold point"
        os.killpg(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait(timeout=10)
    sink.release()
    return killed


def sweep_until_empty(
    config_file: Path, log: Path, client: Celery, url: str, timeout: float, every: float = 1.0
) -> None:
    """Start a worker and sweep `every` seconds (what beat does every minute, sped up) until the
    queue is empty, within `timeout` seconds."""
    with celery_worker(config_file, log, concurrency=2) as worker:
        last_sweep = 0.0

        def queue_empty() -> bool:
            nonlocal last_sweep
            if time.monotonic() - last_sweep > every:
                client.send_task("tasks.mail.sweep_queue")
                last_sweep = time.monotonic()
            with session_scope(url) as session:
                return queue_size(session) == 0

        wait_until(queue_empty, timeout=timeout, what="the queue to drain after the kill")
        # Done: the queue is empty. A cold shutdown of this worker can take Celery up to 20 s.
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


@pytest.mark.parametrize(("phase", "duplicates"), [("RCPT", 0), ("DATA", 1)])
def test_kill_minus_nine_mid_batch_loses_nothing(
    phase: Literal["RCPT", "DATA"], duplicates: int, tmp_path: Path, dns: DNSTestServer
) -> None:
    sink = HoldingSink(phase)
    with smtp_peer(None, handler=sink) as peer:  # type: ignore[arg-type]
        delivery = (
            f"smtp_port = {peer.port}\nlease_seconds = 2\nbatch_size = 20\n"
            "connect_timeout = 1\ncommand_timeout = 1.5\ntransaction_timeout = 1.3\n"
        )
        config_file, config = queue_for_the_sink(tmp_path, dns, delivery)
        client = client_for(config_file)
        kill_at_the_hold(config_file, tmp_path / "worker1.log", sink, client)
        delivered_before_restart = len(set(sink.received))
        assert 0 < delivered_before_restart < MESSAGES
        sweep_until_empty(config_file, tmp_path / "worker2.log", client, config.resolved_database_url, 30)

    counts = Counter(sink.received)
    assert set(counts) == {f"{i}@crash.test" for i in range(MESSAGES)}  # every message at least once
    twice = sorted(m for m, n in counts.items() if n > 1)
    print(f"kill in {phase}: {len(sink.received)} deliveries of {MESSAGES} messages, duplicates: {twice}")
    assert len(twice) == duplicates
    assert max(counts.values()) <= 2
    # Files whose background removal the kills cut short are orphans for the hourly cleanup.
    remove_orphans(config, timedelta(0))
    assert list((config.data_dir / "outgoing").iterdir()) == []
