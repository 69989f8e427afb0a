"""Pruning the filesystem broker's event and reply queues that nobody consumes (tasks/eventqueues.py),
on kombu's own file layout: a real exchange table and message files written by kombu."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from kombu import Connection, Exchange, Queue

from tasks.eventqueues import prune_event_queues

# kombu's virtual transport remembers bindings per process, so each test names its own queues.
Names = tuple[str, str, str, str]


def names() -> Names:
    """(dead event queue, live event queue, reply queue, task queue)."""
    tag = uuid.uuid4().hex[:8]
    return f"celeryev.{tag}-dead", f"celeryev.{tag}-live", f"{tag}.reply.celery.pidbox", f"tasks-{tag}"


def broker(folder: Path) -> Connection:
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(folder / "control"),
    }
    return Connection("filesystem://", transport_options=options)


def bind_and_publish(folder: Path, queues: Names) -> None:
    """Three ephemeral queues and the task queue bound, a message in each (one event for both)."""
    dead, live, reply, task = queues
    events = Exchange("celeryev", type="topic")
    with broker(folder) as conn:
        channel = conn.channel()
        for name in (dead, live):
            Queue(name, events, routing_key="#", channel=channel).declare()
        Queue(task, Exchange(task, type="direct"), routing_key=task, channel=channel).declare()
        replies = Exchange("reply.celery.pidbox", type="direct")
        Queue(reply, replies, routing_key=reply, channel=channel).declare()
        producer = conn.Producer(channel)
        producer.publish({"type": "worker-heartbeat"}, exchange=events, routing_key="worker.heartbeat")
        producer.publish({"task": 1}, exchange=task, routing_key=task)
        producer.publish({"ok": 1}, exchange="reply.celery.pidbox", routing_key=reply)


def queue_files(folder: Path, queue: str) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.endswith(f".{queue}.msg")]


def bindings(folder: Path) -> set[str]:
    found = set()
    for table in (folder / "control").glob("*.exchange"):
        found |= {binding[2] for binding in json.loads(table.read_text())}
    return found


def age(paths: list[Path], seconds: float) -> None:
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def test_stale_ephemeral_queues_go_fresh_ones_and_task_queues_stay(tmp_path: Path) -> None:
    dead, live, reply, task = queues = names()
    bind_and_publish(tmp_path, queues)
    assert bindings(tmp_path) == {dead, live, reply, task}
    age(queue_files(tmp_path, dead) + queue_files(tmp_path, reply) + queue_files(tmp_path, task), 120)

    assert prune_event_queues(tmp_path, tmp_path / "control", min_age=60) == 2
    assert bindings(tmp_path) == {live, task}
    assert queue_files(tmp_path, dead) == [] and queue_files(tmp_path, reply) == []
    assert len(queue_files(tmp_path, live)) == 1 and len(queue_files(tmp_path, task)) == 1
    # A later event reaches only the live queue.
    with broker(tmp_path) as conn:
        conn.Producer().publish({"type": "x"}, exchange=Exchange("celeryev", type="topic"), routing_key="a.b")
    assert len(queue_files(tmp_path, live)) == 2 and queue_files(tmp_path, dead) == []


def test_flower_start_unbinds_every_event_queue(tmp_path: Path) -> None:
    queues = names()
    bind_and_publish(tmp_path, queues)
    assert prune_event_queues(tmp_path, tmp_path / "control", min_age=0) == 3
    assert bindings(tmp_path) == {queues[3]}
    left = [path for path in tmp_path.iterdir() if path.name.endswith(".msg")]
    assert left == queue_files(tmp_path, queues[3]) and len(left) == 1


def test_a_missing_folder_is_nothing_to_prune(tmp_path: Path) -> None:
    assert prune_event_queues(tmp_path / "none", tmp_path / "none" / "control", min_age=0) == 0
