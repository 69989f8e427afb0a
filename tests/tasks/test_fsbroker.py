"""The filesystem broker under concurrency: producers and consumers in separate processes on one folder.

`python -m tests.tasks.test_fsbroker stock|ours messages|bindings ROUNDS` prints the figures of `race` or
`bind_race` for kombu's stock transport or ours.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Producer, Queue

from app.config import load_config
from app.migrate import upgrade_database
from tasks.celery_app import queue_folder
from tasks.fsbroker import MAX_MESSAGE_BYTES, STALE_STAGED_AGE, TRANSPORT, prune_staging
from tests.support.celeryworker import celery_worker, client_for, wait_for_text
from tests.support.configs import write_config
from tests.support.logcapture import captured

STOCK = "filesystem"
QUEUE = "race"
PRODUCERS = 4
CONSUMERS = 4
PER_PRODUCER = 250
TIME_BOUND = 30.0
# The race shows in every round we ran; a few rounds keep the test free of luck.
STOCK_ROUNDS = 5
EXCHANGE = "fan"
BINDERS = 10
READERS = 2
# kombu's stock transport lost bindings (or its whole table) in 15 to 20 % of such rounds.
BIND_ROUNDS = 12
# A body of a few hundred bytes, like a task message with its headers.
FILLER = "x" * 400


def connection(transport: str, folder: Path) -> Connection:
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
    }
    return Connection(transport=transport, transport_options=options)


def produce(transport: str, folder: Path, producer: int) -> None:
    with connection(transport, folder) as conn:
        publisher = Producer(conn.default_channel, serializer="json")
        for i in range(PER_PRODUCER):
            publisher.publish({"id": f"{producer}-{i}", "filler": FILLER}, routing_key=QUEUE, exchange="")


def consume(transport: str, folder: Path, done: Event, results: Any, deadline: float) -> None:
    """Take messages until the producers are done and the queue is empty; report ids and errors."""
    ids: list[str] = []
    errors: Counter[str] = Counter()
    with connection(transport, folder) as conn:
        channel = conn.default_channel
        while time.monotonic() < deadline:
            finished = done.is_set()  # read before the get: an empty queue after it is final
            try:
                message = channel.basic_get(QUEUE, no_ack=True)
            except Exception as exc:  # the stock transport's race surfaces here: count it, go on
                errors[type(exc).__name__] += 1
                continue
            if message is None:
                if finished:
                    break
                time.sleep(0.005)
                continue
            ids.append(message.decode()["id"])
    results.put((ids, dict(errors)))


@dataclass
class Tally:
    sent: int
    received: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - len(self.received)

    @property
    def duplicated(self) -> int:
        return sum(count - 1 for count in self.received.values())

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, received {sum(self.received.values())}, lost {self.lost}, "
            f"duplicated {self.duplicated}, errors {dict(self.errors)}, {self.elapsed:.1f} s"
        )


def race(transport: str, folder: Path) -> Tally:
    """PRODUCERS processes publishing and CONSUMERS processes taking from one queue folder at once."""
    folder.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("fork")
    done, results = context.Event(), context.Queue()
    start = time.monotonic()
    deadline = start + TIME_BOUND - 5
    consumers = [
        context.Process(target=consume, args=(transport, folder, done, results, deadline))
        for _ in range(CONSUMERS)
    ]
    producers = [context.Process(target=produce, args=(transport, folder, n)) for n in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    tally = Tally(sent=PRODUCERS * PER_PRODUCER)
    try:
        for process in producers:
            process.join(max(0.1, deadline - time.monotonic()))
        done.set()
        for _ in consumers:
            ids, errors = results.get(timeout=max(0.1, deadline + 2 - time.monotonic()))
            tally.received.update(ids)
            tally.errors.update(errors)
    finally:
        for process in consumers + producers:
            process.join(max(0.1, deadline + 3 - time.monotonic()))
            if process.is_alive():
                process.kill()
    tally.elapsed = time.monotonic() - start
    return tally


def bind(transport: str, folder: Path, queue: str, start: float, results: Any) -> None:
    """Bind `queue` to the fanout exchange at `start`, as workers and flower do when they start together."""
    with connection(transport, folder) as conn:
        channel = conn.default_channel
        while time.time() < start:  # a spin, not a sleep: the binders must start within microseconds
            pass
        try:
            Queue(queue, Exchange(EXCHANGE, type="fanout"), channel=channel).declare()
        except Exception as exc:  # the stock transport's table race surfaces here
            results.put(type(exc).__name__)
            return
        results.put("")


def read_table(transport: str, folder: Path, start: float, until: float, results: Any) -> None:
    """Read the exchange table over and over while it is created: what a broadcast does."""
    errors: Counter[str] = Counter()
    with connection(transport, folder) as conn:
        channel = conn.default_channel
        while time.time() < until:
            try:
                channel.get_table(EXCHANGE)
            except Exception as exc:
                errors[type(exc).__name__] += 1
    results.put(dict(errors))


def bind_race(transport: str, folder: Path) -> Tally:
    """BINDERS processes binding one queue each to a new exchange at once, READERS reading it."""
    folder.mkdir(parents=True)
    began = time.monotonic()
    context = multiprocessing.get_context("fork")
    results, read_results = context.Queue(), context.Queue()
    start = time.time() + 0.3
    processes = [
        context.Process(target=bind, args=(transport, folder, f"q{n}", start, results))
        for n in range(BINDERS)
    ]
    processes += [
        context.Process(target=read_table, args=(transport, folder, start, start + 0.2, read_results))
        for _ in range(READERS)
    ]
    for process in processes:
        process.start()
    tally = Tally(sent=BINDERS)
    try:
        tally.errors.update(error for _ in range(BINDERS) if (error := results.get(timeout=10)))
        for _ in range(READERS):
            tally.errors.update(read_results.get(timeout=10))
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    with connection(transport, folder) as conn:
        try:
            tally.received.update(binding.queue for binding in conn.default_channel.get_table(EXCHANGE))
        except ValueError as exc:  # the table itself is corrupt: every binding is lost
            tally.errors[f"final {type(exc).__name__}"] += 1
    tally.elapsed = time.monotonic() - began
    return tally


def test_every_message_is_consumed_exactly_once_under_concurrency(tmp_path: Path) -> None:
    tally = race(TRANSPORT, tmp_path / "queue")
    assert not tally.errors, tally
    assert tally.lost == 0, tally
    assert tally.duplicated == 0, tally
    assert tally.elapsed < TIME_BOUND, tally
    assert not list((tmp_path / "queue" / "staging").iterdir()), "a staged message was left behind"


def test_processes_binding_to_a_new_exchange_at_once_all_stay_bound(tmp_path: Path) -> None:
    for n in range(BIND_ROUNDS):
        tally = bind_race(TRANSPORT, tmp_path / str(n))
        assert not tally.errors, tally
        assert tally.lost == 0 and tally.duplicated == 0, tally


def test_kombus_stock_transport_loses_messages_in_the_same_race(tmp_path: Path) -> None:
    """Why tasks/fsbroker.py exists: the stock transport's consumers read files still being written
    (1 to 114 of 1000 messages per round in our runs). If kombu fixes it, this fails: drop ours."""
    tallies = []
    for n in range(STOCK_ROUNDS):
        tallies.append(race(STOCK, tmp_path / str(n)))
        if tallies[-1].lost:
            break
    assert tallies[-1].errors["JSONDecodeError"] > 0, [str(tally) for tally in tallies]
    assert tallies[-1].lost == tallies[-1].errors["JSONDecodeError"], tallies[-1]


def test_a_file_that_does_not_parse_is_quarantined_and_logged_and_the_next_one_delivered(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    with connection(TRANSPORT, folder) as conn:
        channel = conn.default_channel
        bad = {"000000000000001_a.race.msg": b"", "000000000000002_b.race.msg": b'{"half": "wri'}
        bad["000000000000003_c.race.msg"] = b"[1]"
        bad["000000000000004_d.race.msg"] = b"{" * (MAX_MESSAGE_BYTES + 1)
        for name, data in bad.items():
            (folder / name).write_bytes(data)
        Producer(channel, serializer="json").publish({"id": "good"}, routing_key=QUEUE, exchange="")
        with captured("tasks.fsbroker") as log:
            message = channel.basic_get(QUEUE, no_ack=True)
            assert message is not None and message.decode()["id"] == "good"
            assert channel.basic_get(QUEUE, no_ack=True) is None
    assert sorted(path.name for path in (folder / "quarantine").iterdir()) == sorted(bad)
    assert len(log.messages("unreadable")) == len(bad)
    assert not [name for name in bad if (folder / name).exists()]


def main() -> None:
    """`python -m tests.tasks.test_fsbroker stock|ours messages|bindings ROUNDS`"""
    transport = TRANSPORT if sys.argv[1:2] != ["stock"] else STOCK
    run = bind_race if sys.argv[2:3] == ["bindings"] else race
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    base = Path(f"/tmp/fsbroker-race-{time.time_ns()}")
    for n in range(rounds):
        print(transport, run.__name__, run(transport, base / str(n)), flush=True)


if __name__ == "__main__":
    main()


def test_a_worker_on_the_filesystem_broker_survives_a_torn_message_and_runs_the_next_task(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config", broker_url="filesystem://")
    folder = queue_folder(load_config(config))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "000000000000001_torn.celery.msg").write_bytes(
        b'{"body": "ey'
    )  # as a crash mid-write leaves it
    upgrade_database(load_config(config).resolved_database_url)
    log = tmp_path / "worker.log"
    with celery_worker(config, log):
        client_for(config).send_task("tasks.mail.sweep_queue")
        text = wait_for_text(log, "queue sweep: 0 message(s) due")
    assert text.count("'000000000000001_torn.celery.msg' unreadable") == 1, text[-3000:]
    assert (folder / "quarantine" / "000000000000001_torn.celery.msg").exists()


def test_a_message_a_killed_writer_left_in_staging_is_pruned_and_a_fresh_one_kept(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    old, fresh = staging / "1_old.celery.msg", staging / "2_fresh.celery.msg"
    old.write_bytes(b'{"bo')
    fresh.write_bytes(b'{"bo')
    long_ago = time.time() - STALE_STAGED_AGE - 5
    os.utime(old, (long_ago, long_ago))
    assert prune_staging(staging) == 1
    assert not old.exists() and fresh.exists()
