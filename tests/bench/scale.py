"""Several machines (SPEC R9.1): delivery throughput of one worker node against two, on PostgreSQL and
Redis with the queue's content in the database, and that nothing is lost or delivered twice.
`--smoke` runs it on tiny data in seconds (tests/test_bench_smoke.py does, in `make test`).

The nodes are those of tests/test_nodes.py (tests/support/nodes.py): each its own config and data dir,
its own Celery worker (2 processes), one PostgreSQL database and one Redis (a redis-server of its own
on a spare port) shared. Per round, 4 KB messages to recipients of several domains are queued, one
sweep wakes the workers, and the round lasts until the queue is empty. Node A's worker runs
throughout; node B's is started before each two-node round and stopped after it (not timed). The
remote MX is the counting sink of tests/support/nodes.py in this process, which counts each message
by its Message-ID: lost is a message it never took, doubled one it took twice.

Both nodes run on this one machine: they share its cores, the sink's and the database's, so the
ratio shows what a second node adds here, not on a second machine.

Not a pytest test: `.venv/bin/python tests/bench/scale.py [messages]`.
The last line is `scale: one node X deliveries/s, two nodes Y deliveries/s, ratio R, lost L, doubled D`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `app` and `tests` importable

import trustme  # noqa: E402

from app.config import load_config  # noqa: E402
from app.db import session_scope  # noqa: E402
from app.migrate import upgrade_database  # noqa: E402
from app.queue.enqueue import Queued, enqueue_many  # noqa: E402
from tests.bench.args import SMOKE, count  # noqa: E402
from tests.support.celeryworker import drain_queue  # noqa: E402
from tests.support.chaos import free_port, redis_process  # noqa: E402
from tests.support.dnsserver import DNSTestServer  # noqa: E402
from tests.support.nodes import SUBMITTER, CountingSink, Node, message, node  # noqa: E402
from tests.support.pgdatabase import drop_database, new_database  # noqa: E402
from tests.support.smtppeers import smtp_peer  # noqa: E402

MESSAGES = count(1, smoke=40, full=2_000)
ROUNDS = 1 if SMOKE else 2
DOMAINS = 4  # recipient domains: the sweep wakes a worker per batch of a domain's rows
BATCH_SIZE = 5 if SMOKE else 50


def queue_round(config_file: Path, first: int) -> None:
    """Queue MESSAGES messages, numbered from `first`, each to a recipient of one of the domains."""
    config = load_config(config_file)
    messages = [
        Queued(message("bench", n), SUBMITTER[2], [f"r{n}@d{n % DOMAINS}.example.net"])
        for n in range(first, first + MESSAGES)
    ]
    with session_scope(config.resolved_database_url) as session:
        enqueue_many(session, config, messages)


def timed_round(queued_on: Node, first: int) -> float:
    """Queue a round on the node; seconds from the sweep that wakes the running workers until the
    queue is empty."""
    queue_round(queued_on.config_file, first)
    return drain_queue(queued_on.config_file, queued_on.config_file.parent / "logs")


def two_node_round(a: Node, b: Node, first: int) -> float:
    """`timed_round` with B's worker beside A's: started before, stopped after."""
    b.worker.start()
    try:
        return timed_round(a, first)
    finally:
        b.worker.kill()


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="pw-bench-scale-"))
    dns = DNSTestServer().start()
    for domain in range(DOMAINS):
        dns.add(f"d{domain}.example.net", "MX", "10 mx.example.net.")
    dns.add("mx.example.net", "A", "127.0.0.1")
    tls = trustme.CA().issue_cert("mail.example.org")
    tls_files = (directory / "cert.pem", directory / "key.pem")
    tls.private_key_and_cert_chain_pem.write_to_path(str(tls_files[0]))
    tls.private_key_pem.write_to_path(str(tls_files[1]))
    redis_port = free_port()
    redis = redis_process(redis_port, directory)
    url = new_database("pw_bench_scale")
    sink = CountingSink()
    times: dict[int, list[float]] = {1: [], 2: []}
    try:
        redis.start()
        with smtp_peer(None, handler=sink) as peer:
            urls = {"database_url": url, "broker_url": f"redis://127.0.0.1:{redis_port}/0"}
            ports = {"submission": free_port(), "sink": peer.port}
            settings = f"batch_size = {BATCH_SIZE}\n"
            a, b = (node(directory, name, urls, tls_files, ports, dns.port, settings) for name in "ab")
            upgrade_database(url)
            # Rounds alternate one and two nodes, so a busy moment of the machine favours neither.
            a.worker.start()
            for round_number in range(ROUNDS):
                first = 2 * round_number * MESSAGES
                times[1].append(timed_round(a, first))
                times[2].append(two_node_round(a, b, first + MESSAGES))
            a.worker.kill()
        redis.kill()
    finally:
        dns.stop()
        drop_database(url)
    shutil.rmtree(directory, ignore_errors=True)  # kept, with the logs, only when it failed

    expected = {f"bench-{n}@nodes.test" for n in range(2 * ROUNDS * MESSAGES)}
    lost = len(expected - set(sink.taken))
    doubled = sum(1 for found, taken in sink.taken.items() if found in expected and taken > 1)
    one, two = MESSAGES / min(times[1]), MESSAGES / min(times[2])
    print(f"PostgreSQL + Redis, queue content in the database; {MESSAGES} messages/round, batch {BATCH_SIZE}")
    for nodes, seconds in times.items():
        rounds = " ".join(f"{t:.2f}" for t in seconds)
        print(f"{nodes} node(s), 2 worker processes each, s per round: {rounds}")
    print(f"best of {ROUNDS} rounds each; both nodes on this one machine")
    print(
        f"scale: one node {one:.0f} deliveries/s, two nodes {two:.0f} deliveries/s, ratio {two / one:.2f}, "
        f"lost {lost}, doubled {doubled}"
    )


if __name__ == "__main__":
    main()
