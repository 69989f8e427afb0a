"""What the SMTP process hands to Celery, and the child process that publishes it.

`Handoff` is all the SMTP service knows of Celery: DMARC evaluations (R2.1), stored report messages
to parse (R6.1) and wake-ups for the delivery queue after a submission. `TaskPublisher` implements
it: the event loop only appends to a queue, and a child process publishes what has gathered through
the `Publish` function it was given (tasks/handoff.py; the composition root, app/cli/composition.py,
passes it in, so app/ never imports Celery).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from queue import Empty
from typing import Protocol

from app.dmarcreports.evaluation import Evaluation
from app.inreports.intake import ReportMessage
from app.logs import setup_logging
from app.process import die_with_parent

log = logging.getLogger("app.smtpserver")

WAKE_QUEUE = "wake-queue"  # a queue item asking for a queue sweep (mail was submitted)
# Seconds the publisher gathers items after the first before it publishes them: a task costs the
# better part of a millisecond of CPU (and a broker message) whatever it carries, and under load
# every message has an evaluation; the work is best effort and not urgent.
GATHER = 0.05
# Seconds the supervisor, stopping, lets the publisher child send what is queued.
PUBLISHER_CLOSE_TIMEOUT = 10.0
Item = Evaluation | ReportMessage | str | None  # an evaluation, a report message, WAKE_QUEUE, or None: stop


class Handoff(Protocol):
    """Work for Celery. Each call only queues it and returns at once; the work is best effort."""

    def record_evaluation(self, evaluation: Evaluation) -> None: ...

    def parse_report(self, message: ReportMessage) -> None: ...

    def wake_queue(self) -> None: ...


@dataclass(frozen=True)
class Batch:
    """What the publisher child took from its queue in one go: published as one task per kind."""

    evaluations: tuple[Evaluation, ...]
    wake_queue: bool
    reports: tuple[ReportMessage, ...] = ()


Publish = Callable[[Batch], None]


class TaskPublisher:
    """The Handoff of `postwarden smtp`: hands work from the SMTP processes to a child process that
    publishes it, all evaluations gathered as one task, however many wake-ups as one queue sweep.
    Building and publishing a task costs the better part of a millisecond of CPU; in a thread it would
    hold the GIL against the event loop, in a process it runs on another core. The event loop only
    appends to a queue (a feeder thread pickles and writes). A broker failure is logged in the child
    and that work dropped: reports are best effort, the message itself is stored, and the beat's sweep
    finds queued mail anyway."""

    def __init__(self, publish: Publish, config_file: str, log_level: str, log_format: str) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._queue: Queue[Item] = self._context.Queue()
        self._args = (publish, self._queue, os.getpid(), config_file, log_level, log_format)
        self._process = self._start()

    def _start(self) -> SpawnProcess:
        process = self._context.Process(
            target=publish_tasks, args=self._args, name="task-publisher", daemon=True
        )
        process.start()
        return process

    def record_evaluation(self, evaluation: Evaluation) -> None:
        self._queue.put(evaluation)

    def parse_report(self, message: ReportMessage) -> None:
        self._queue.put(message)

    def wake_queue(self) -> None:
        self._queue.put(WAKE_QUEUE)

    def ensure_running(self) -> None:
        """In the supervisor: replace a child that died (what it had not taken waits in the queue)."""
        if not self._process.is_alive():
            log.error("task publisher exited (code %s); starting a new one", self._process.exitcode)
            self._process = self._start()

    def flush(self) -> None:
        """In an SMTP worker about to exit: write out what this process queued."""
        self._queue.close()
        self._queue.join_thread()

    def close(self, timeout: float = PUBLISHER_CLOSE_TIMEOUT) -> None:
        """In the supervisor: let the child send what is queued, then stop it."""
        self._queue.put(None)
        self._process.join(timeout)
        if self._process.is_alive():
            log.warning("task publisher did not finish in %.0f s; stopping it", timeout)
            self._process.terminate()


def publish_tasks(
    publish: Publish, queue: Queue[Item], parent: int, config_file: str, log_level: str, log_format: str
) -> None:
    """The publisher child: publish what is queued until the None sentinel (or the parent is gone)."""
    # The child holds both ends of the queue's pipe, so a SIGKILLed parent would leave it waiting
    # forever: let the kernel end it with the parent.
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    setup_logging(log_level, log_format)
    # The Celery app reads its settings from the config named here, the same file as the parent's.
    os.environ["POSTWARDEN_CONFIG"] = config_file
    while True:
        items = _next_batch(queue)
        if not items:
            return  # the sentinel, or the parent died
        evaluations = tuple(i for i in items if isinstance(i, Evaluation))
        reports = tuple(i for i in items if isinstance(i, ReportMessage))
        publish(Batch(evaluations, WAKE_QUEUE in items, reports))
        if None in items:
            return  # the sentinel came with this batch


def _next_batch(queue: Queue[Item], most: int = 200) -> list[Item]:
    """Wait for one item, then take what else comes within GATHER seconds (up to `most`); [] if the
    parent is gone."""
    try:
        batch = [queue.get()]
    except (EOFError, OSError):
        return []
    deadline = time.monotonic() + GATHER
    while len(batch) < most and batch[-1] is not None:
        try:
            batch.append(queue.get(timeout=max(0.0, deadline - time.monotonic())))
        except (Empty, EOFError, OSError):
            break
    return batch
