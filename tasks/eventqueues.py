"""Event queues on kombu's filesystem broker: prune the ones no process consumes any more.

Flower (and `celery events`) bind a fresh `celeryev.<uuid>` queue to the `celeryev` exchange at each
start. On AMQP that queue is auto-deleted when its consumer goes; kombu's filesystem transport never
deletes it: the binding stays in `control/celeryev.exchange`, and every event a worker sends
(a heartbeat every 2 s) is written as one more file for each dead queue. Pidbox reply queues
(`<id>.reply.celery.pidbox`, from `celery inspect` and flower) are left the same way.

Both kinds are ephemeral by design, so a queue of either kind whose oldest message has waited longer
than `min_age` has no live consumer: its binding and its files go. Flower prunes every such queue
(min_age 0) before it binds its own, since it is the only consumer of event queues we run (workers
run without gossip); the worker prunes stale ones at start, for a flower that died and stays down.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

EVENT_QUEUE_PREFIX = "celeryev."
REPLY_QUEUE_SUFFIX = ".reply.celery.pidbox"


def is_ephemeral(queue: str) -> bool:
    return queue.startswith(EVENT_QUEUE_PREFIX) or queue.endswith(REPLY_QUEUE_SUFFIX)


def message_queue(filename: str) -> str | None:
    """The queue a message file belongs to: kombu names them `<ms>_<uuid>.<queue>.msg`."""
    if not filename.endswith(".msg") or "." not in filename:
        return None
    return filename.partition(".")[2].removesuffix(".msg")


def dead_queues(folder: Path, min_age: float, now: float) -> dict[str, list[Path]]:
    """Ephemeral queues with a message older than `min_age` seconds, each with all its files."""
    files: dict[str, list[Path]] = {}
    dead: set[str] = set()
    for entry in os.scandir(folder):
        queue = message_queue(entry.name)
        if queue is None or not is_ephemeral(queue) or not entry.is_file():
            continue
        files.setdefault(queue, []).append(Path(entry.path))
        try:
            if now - entry.stat().st_mtime >= min_age:
                dead.add(queue)
        except FileNotFoundError:  # consumed meanwhile: that queue is alive
            continue
    return {queue: files[queue] for queue in dead}


def unbind(exchange_file: Path, keep: Callable[[str], bool]) -> int:
    """Rewrite one exchange table under kombu's own lock, keeping the bindings `keep` accepts."""
    with exchange_file.open("rb+", buffering=0) as table:
        fcntl.flock(table.fileno(), fcntl.LOCK_EX)
        try:
            bindings = json.loads(table.read() or b"[]")
            kept = [binding for binding in bindings if keep(binding[2])]
            if len(kept) != len(bindings):
                table.seek(0)
                table.write(json.dumps(kept).encode())
                table.truncate()
            return len(bindings) - len(kept)
        finally:
            fcntl.flock(table.fileno(), fcntl.LOCK_UN)


def prune_event_queues(folder: Path, control: Path, min_age: float) -> int:
    """Unbind and empty the ephemeral queues that nobody consumes; how many bindings were removed.

    With min_age 0 every ephemeral binding goes, whether or not it holds messages."""
    if not folder.is_dir():
        return 0
    dead = dead_queues(folder, min_age, time.time())
    removed = 0
    for exchange_file in sorted(control.glob("*.exchange")) if control.is_dir() else []:
        if min_age == 0:
            removed += unbind(exchange_file, lambda queue: not is_ephemeral(queue))
        else:
            removed += unbind(exchange_file, lambda queue: queue not in dead)
    for paths in dead.values():
        for path in paths:
            path.unlink(missing_ok=True)
    if removed or dead:
        log.info("broker: pruned %d unconsumed event queue(s), %d binding(s)", len(dead), removed)
    return removed
