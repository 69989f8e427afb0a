"""Several machines (SPEC R9.1): two nodes, each with its own data dir, `postwarden smtp` and Celery worker,
share one PostgreSQL database and one Redis (tests/support/nodes.py). Mail submitted on node A is
delivered by node B's worker while A has none; B's worker killed (SIGKILL) mid-batch and Redis
restarted lose nothing, and nothing reaches the remote MX twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from sqlalchemy import func, select

from app.accounts import set_password
from app.db import session_scope
from app.migrate import upgrade_database
from app.models import OutgoingContent
from app.queue.outgoing import queue_size
from tests.support.celeryworker import client_for
from tests.support.chaos import Sweeper, free_port, redis_process
from tests.support.dnsserver import DNSTestServer
from tests.support.nodes import SUBMITTER, CountingSink, node
from tests.support.smtpfixtures import client_tls_context
from tests.support.smtppeers import smtp_peer
from tests.support.waiting import wait_until

FIRST = range(0, 3)  # submitted on A while only B has a worker
BATCH = range(100, 160)  # submitted on A and B; B's worker killed while delivering them


def settled(url: str) -> bool:
    """The queue is empty and so is its content table: nothing left over on any node."""
    with session_scope(url) as session:
        return (
            queue_size(session) == 0
            and session.scalar(select(func.count()).select_from(OutgoingContent)) == 0
        )


@pytest.mark.slow
@pytest.mark.postgres
def test_any_node_delivers_what_another_queued_through_kills_and_a_broker_restart(
    tmp_path: Path, dns: DNSTestServer, postgres_url: str, tls_files: tuple[Path, Path], tls_ca: trustme.CA
) -> None:
    dns.add("example.net", "MX", "10 mx.example.net.")
    dns.add("mx.example.net", "A", "127.0.0.1")
    tls = client_tls_context(tls_ca)
    sink = CountingSink()
    redis_port = free_port()
    urls = {"database_url": postgres_url, "broker_url": f"redis://127.0.0.1:{redis_port}/0"}
    redis = redis_process(redis_port, tmp_path)
    with smtp_peer(None, handler=sink) as peer:
        nodes = [
            node(tmp_path, name, urls, tls_files, {"submission": free_port(), "sink": peer.port}, dns.port,
                 "lease_seconds = 2\nbatch_size = 10\n")
            for name in ("a", "b")
        ]  # fmt: skip
        a, b = nodes
        upgrade_database(postgres_url)
        with session_scope(postgres_url) as session:
            set_password(session, SUBMITTER[0], SUBMITTER[1])
        processes = [redis, a.smtp, b.smtp, b.worker]
        sweeper = None
        try:
            for process in processes:
                process.start()
            a.submit(FIRST, tls)
            wait_until(
                lambda: len(sink.taken) == len(FIRST), timeout=60, what="B's worker delivering A's mail"
            )
            assert not list((a.data_dir / "outgoing").glob("*")), "A's queue content is not in A's data dir"

            sink.hold_after = sink.taken.total() + 15  # mid-batch: B's worker has delivered some of them
            a.submit(BATCH[::2], tls)
            b.submit(BATCH[1::2], tls)
            # Both processes of B's worker waiting for a reply: neither is between a 250 and its
            # commit, so the kill leaves no message delivered but not marked so.
            wait_until(lambda: sink.held == 2, timeout=60, what="B's worker in the middle of the batch")
            b.worker.kill()
            wait_until(lambda: sink.abandoned == sink.held, what="the killed worker's connections lost")
            sink.hold_after = None
            redis.kill()
            redis.start()
            b.worker.start()
            a.worker.start()  # both nodes' workers take what is left
            # What beat does every minute: wake the workers; the rows the killed worker held come
            # free when their leases (2 s) expire.
            sweeper = Sweeper(client_for(a.config_file))
            wait_until(lambda: settled(postgres_url), timeout=120, what="every message delivered")
        finally:
            if sweeper is not None:
                sweeper.finish()
            for process in reversed([*processes, a.worker]):
                process.kill()

    submitted = [("a", n) for n in FIRST] + [("a", n) for n in BATCH[::2]] + [("b", n) for n in BATCH[1::2]]
    assert set(sink.taken) == {f"{name}-{n}@nodes.test" for name, n in submitted}, "all reached the MX"
    assert set(sink.taken.values()) == {1}, f"delivered twice: {[m for m, c in sink.taken.items() if c > 1]}"
