"""`postwarden smtp`: the composition root of the SMTP process (listeners, store, Celery hand-off)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from queue import Empty
from typing import Any

import click

from app.cli.common import exit_if_database_unusable, load, main
from app.config import Config, config_path
from app.logs import setup_logging
from app.process import die_with_parent

log = logging.getLogger("app.cli.server")


WAKE_QUEUE = "wake-queue"  # a queue item asking for a queue sweep (mail was submitted)
Item = dict[str, Any] | str | None  # an evaluation, WAKE_QUEUE, or None: stop


class TaskPublisher:
    """Hands Celery work from the SMTP processes to a child process that publishes it: DMARC
    evaluations, sent as one `tasks.mail.record_dmarc_evaluation` task for all that has gathered, and
    wake-ups for the delivery queue after a submission (one `tasks.mail.sweep_queue`, however many
    came together). Building and publishing a task costs the better part of a millisecond of CPU; in
    a thread it would hold the GIL against the event loop, in a process it runs on another core. The
    event loop only appends to a queue (a feeder thread pickles and writes). A broker failure is
    logged in the child and that work dropped: reports are best effort, the message itself is stored,
    and the beat's sweep finds queued mail anyway."""

    def __init__(self, config_file: str, log_level: str, log_format: str) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._queue: Queue[Item] = self._context.Queue()
        self._args = (self._queue, os.getpid(), config_file, log_level, log_format)
        self._process = self._start()

    def _start(self) -> SpawnProcess:
        process = self._context.Process(
            target=publish_tasks, args=self._args, name="task-publisher", daemon=True
        )
        process.start()
        return process

    def record_evaluation(self, evaluation: dict[str, Any]) -> None:
        self._queue.put(evaluation)

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

    def close(self, timeout: float = 10.0) -> None:
        """In the supervisor: let the child send what is queued, then stop it."""
        self._queue.put(None)
        self._process.join(timeout)
        if self._process.is_alive():
            log.warning("task publisher did not finish in %.0f s; stopping it", timeout)
            self._process.terminate()


def publish_tasks(queue: Queue[Item], parent: int, config_file: str, log_level: str, log_format: str) -> None:
    """The publisher child: publish what is queued until the None sentinel (or the parent is gone)."""
    # The child holds both ends of the queue's pipe, so a SIGKILLed parent would leave it waiting
    # forever: let the kernel end it with the parent.
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    setup_logging(log_level, log_format)
    # The Celery app reads its settings from the config named here, the same file as the parent's.
    os.environ["POSTWARDEN_CONFIG"] = config_file
    from tasks.mail import record_dmarc_evaluation, sweep_queue  # Celery stays out of app/ but here

    while True:
        batch = _next_batch(queue)
        if not batch:
            return  # the sentinel, or the parent died
        evaluations = [item for item in batch if isinstance(item, dict)]
        if evaluations:
            domains = ", ".join(sorted({str(item.get("policy_domain")) for item in evaluations}))
            # An explicit argsrepr spares Celery a safe repr of every dict.
            _publish(
                record_dmarc_evaluation,
                f"{len(evaluations)} dmarc evaluation(s) ({domains})",
                args=tuple(evaluations),
                argsrepr=f"({len(evaluations)} evaluations)",
            )
        if WAKE_QUEUE in batch:
            _publish(sweep_queue, "queue wake-up")
        if None in batch:
            return  # the sentinel came with this batch


def _publish(task: Any, what: str, **options: Any) -> None:
    try:
        task.apply_async(retry=False, **options)
    except Exception as error:
        log.error("%s not published: %s", what, error)


def _next_batch(queue: Queue[Item], most: int = 200) -> list[Item]:
    """Wait for one item, then take whatever else is already queued (up to `most`); [] if the parent
    is gone."""
    try:
        batch = [queue.get()]
    except (EOFError, OSError):
        return []
    while len(batch) < most and batch[-1] is not None:
        try:
            batch.append(queue.get_nowait())
        except (Empty, EOFError, OSError):
            break
    return batch


@main.command("smtp")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes serving the listeners (default: half the CPUs, at least one).",
)
@click.pass_context
def smtp(ctx: click.Context, workers: int | None) -> None:
    """Run the SMTP listeners (inbound and submission) configured in [[listeners]]."""
    config: Config = load(ctx)
    setup_logging(config.log_level, config.log_format)
    if not config.listeners:
        sys.exit("postwarden smtp: no [[listeners]] configured; add an inbound and/or submission listener")
    # Imported here so that other commands do not load the SMTP stack.
    from app.smtpserver.server import ListenerError
    from app.smtpserver.workers import Supervisor, default_worker_count

    supervisor = Supervisor(config, workers or default_worker_count())
    try:
        with exit_if_database_unusable(config.resolved_database_url):
            supervisor.prepare()
    except ListenerError as e:
        sys.exit(f"postwarden smtp: {e}")
    config_file = str(config_path(ctx.find_root().obj).resolve())
    publisher = TaskPublisher(config_file, config.log_level, config.log_format)
    try:
        supervisor.serve(
            publisher.record_evaluation,
            wake_queue=publisher.wake_queue,
            on_worker_exit=publisher.flush,
            tend=publisher.ensure_running,
        )
    finally:
        publisher.close()
