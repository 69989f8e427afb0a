"""Short queue leases kept by a heartbeat (issue 9, item 3; app/queue/lease.py).

A run keeps its rows however long one step takes (a server holding its reply for longer than the
lease), a stuck run lets them go, and the rows of a worker killed with SIGKILL in the middle of a
batch are delivered by another worker within the default lease, not a quarter of an hour later.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import OutgoingMessage
from app.models.base import utcnow
from app.queue.deliver import DeliveryReport
from app.queue.lease import Heartbeat
from app.queue.outgoing import claim_batch
from tests.queue import test_deliver
from tests.queue.test_deliver import MX, World
from tests.queue.test_delivery_faults import on_postgresql
from tests.queue.test_queue_crash import (
    MESSAGES,
    HoldingSink,
    kill_at_the_hold,
    queue_for_the_sink,
    sweep_until_empty,
    wait_until,
)
from tests.support.celeryworker import client_for
from tests.support.dnsserver import DNSTestServer
from tests.support.logcapture import captured
from tests.support.smtppeers import PeerHandler, smtp_peer

world = test_deliver.world  # the fixture

LEASE = 1.5
HOLD = 4.0  # longer than two leases: a lease renewed only between steps would lapse


class SlowRecipient(PeerHandler):
    """Holds its first RCPT reply for HOLD seconds (a slow server, well within command_timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self.held.is_set():
            self.held.set()
            await asyncio.sleep(HOLD)
        return await super().handle_RCPT(server, session, envelope, address, options)


def lease_until(url: str) -> Any:
    with session_scope(url) as session:
        return session.scalar(select(OutgoingMessage.lease_until))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_step_longer_than_the_lease_keeps_the_rows(
    world: World, database: str, request: pytest.FixtureRequest
) -> None:
    handler = SlowRecipient()
    with smtp_peer(None, handler=handler) as peer:
        world.configure(peer.port, f"lease_seconds = {LEASE}\ntransaction_timeout = 10\n")
        if database == "postgresql":
            on_postgresql(world, request.getfixturevalue("postgres_url"))
        world.mx(MX)
        (queue_id,) = world.queue()
        reports: list[DeliveryReport] = []
        run = threading.Thread(target=lambda: reports.append(asyncio.run(world.run(queue_id))))
        run.start()
        assert handler.held.wait(timeout=10)
        first = lease_until(world.url)
        taken, later = [], first
        # Another worker tries to claim the row all through the held reply.
        while run.is_alive():
            with session_scope(world.url) as session:
                taken += claim_batch(session, queue_id, lease=timedelta(seconds=LEASE), batch_size=10)
            later = lease_until(world.url) or later
            time.sleep(0.1)
        run.join()
    assert taken == []
    assert later - first >= timedelta(seconds=LEASE)  # renewed while the reply was held
    assert reports[0].delivered == [queue_id] and len(peer.received) == 1


def test_a_stuck_run_stops_renewing_and_its_rows_go_free(world: World) -> None:
    world.configure(25)
    (queue_id,) = world.queue()
    lease = timedelta(seconds=1)
    with session_scope(world.url) as session:
        (row,) = claim_batch(session, queue_id, lease=lease, batch_size=1)
    assert row.lease_owner is not None
    with captured("app.queue.lease") as log, Heartbeat(world.url, row.lease_owner, lease, stall_after=1.0):
        # No step ever starts: after 1 s the heartbeat gives up, then the lease lapses.
        def free_again() -> bool:
            with session_scope(world.url) as session:
                return bool(claim_batch(session, queue_id, lease=lease, batch_size=1))

        started = time.monotonic()
        wait_until(free_again, timeout=10, what="the stuck run's lease to lapse")
        elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 5.0
    (line,) = log.messages("no longer renewed")
    assert line.startswith(f"queue lease {row.lease_owner}: no progress for ")


def test_rows_of_a_killed_worker_are_delivered_by_another_within_the_lease(
    tmp_path: Path, dns: DNSTestServer
) -> None:
    """Default lease and timeouts: the kill -9 lands while the worker waits for a RCPT reply; the
    sweep runs every 3 s here (beat: every minute), so the delay measured is the lease's (+ < 3 s)."""
    sink = HoldingSink("RCPT")
    with smtp_peer(None, handler=sink) as peer:  # type: ignore[arg-type]
        config_file, config = queue_for_the_sink(tmp_path, dns, f"smtp_port = {peer.port}\nbatch_size = 20\n")
        lease, url = config.delivery.lease_seconds, config.resolved_database_url
        client = client_for(config_file)
        killed = kill_at_the_hold(config_file, tmp_path / "worker1.log", sink, client)
        with session_scope(url) as session:
            leased = select(OutgoingMessage.id).where(OutgoingMessage.lease_until > utcnow())
            assert session.scalars(leased).all()  # the killed run's rows are still held
        # Few sweeps: kombu's filesystem transport can hand a worker a message file still being
        # written (an empty file: the worker dies of a JSONDecodeError), more likely the more are sent.
        sweep_until_empty(config_file, tmp_path / "worker2.log", client, url, timeout=lease + 30, every=3)
        delay = time.monotonic() - killed

    counts = Counter(sink.received)
    assert set(counts) == {f"{i}@crash.test" for i in range(MESSAGES)}
    assert max(counts.values()) == 1  # killed before the data: nothing twice
    print(f"kill -9 mid-batch: the queue drained {delay:.1f} s after the kill (lease {lease:g} s)")
    # Free again at the latest one lease after the kill, at the earliest two thirds (renewed before it).
    assert lease * 2 / 3 <= delay < 60
