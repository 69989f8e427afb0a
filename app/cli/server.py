"""`postwarden smtp`: the composition root of the SMTP process (listeners, store, Celery hand-off)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from queue import Empty
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from app.cli.common import load, main
from app.config import Config, config_path
from app.logs import setup_logging
from app.process import die_with_parent

log = logging.getLogger("app.cli.server")


class EvaluationPublisher:
    """Hands DMARC evaluations to a child process that sends what has gathered as one
    `tasks.mail.record_dmarc_evaluation` Celery task. Building and publishing a task costs the better
    part of a millisecond of CPU; in a thread it would hold the GIL against the event loop, in a
    process it runs on another core. The event
    loop only appends to a queue (a feeder thread pickles and writes). A broker failure is logged in the
    child and those evaluations dropped: reports are best effort, the message itself is stored."""

    def __init__(self, config_file: str, log_level: str, log_format: str) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._queue: Queue[dict[str, Any] | None] = self._context.Queue()
        self._args = (self._queue, os.getpid(), config_file, log_level, log_format)
        self._process = self._start()

    def _start(self) -> SpawnProcess:
        process = self._context.Process(
            target=publish_evaluations, args=self._args, name="evaluation-publisher", daemon=True
        )
        process.start()
        return process

    def __call__(self, evaluation: dict[str, Any]) -> None:
        self._queue.put(evaluation)

    def ensure_running(self) -> None:
        """In the supervisor: replace a child that died (what it had not taken waits in the queue)."""
        if not self._process.is_alive():
            log.error("evaluation publisher exited (code %s); starting a new one", self._process.exitcode)
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
            log.warning("evaluation publisher did not finish in %.0f s; stopping it", timeout)
            self._process.terminate()


def publish_evaluations(
    queue: Queue[dict[str, Any] | None], parent: int, config_file: str, log_level: str, log_format: str
) -> None:
    """The publisher child: send queued evaluations until the None sentinel (or the parent is gone)."""
    # The child holds both ends of the queue's pipe, so a SIGKILLed parent would leave it waiting
    # forever: let the kernel end it with the parent.
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    setup_logging(log_level, log_format)
    # The Celery app reads its settings from the config named here, the same file as the parent's.
    os.environ["POSTWARDEN_CONFIG"] = config_file
    from tasks.mail import record_dmarc_evaluation  # Celery stays out of app/ except at this root

    while True:
        batch = _next_batch(queue)
        if not batch:
            return  # the sentinel, or the parent died
        evaluations = [item for item in batch if item is not None]
        if evaluations:
            _publish(record_dmarc_evaluation, evaluations)
        if len(evaluations) < len(batch):
            return  # the sentinel came with this batch


def _publish(task: Any, evaluations: list[dict[str, Any]]) -> None:
    """One task message for all that is waiting, with an explicit argsrepr (it spares Celery a safe
    repr of every dict): per evaluation, a small fraction of what a task message of its own costs."""
    try:
        task.apply_async(args=tuple(evaluations), argsrepr=f"({len(evaluations)} evaluations)", retry=False)
    except Exception as error:
        domains = ", ".join(sorted({str(item.get("policy_domain")) for item in evaluations}))
        log.error("%d dmarc evaluation(s) not queued (%s): %s", len(evaluations), domains, error)


def _next_batch(queue: Queue[dict[str, Any] | None], most: int = 200) -> list[dict[str, Any] | None]:
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


@contextmanager
def exit_if_database_unusable(url: str) -> Iterator[None]:
    """Turn a database error (unreachable, not migrated) into a clear message and exit status 1."""
    try:
        yield
    except SQLAlchemyError as e:
        first_line = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        sys.exit(
            f"postwarden: database {url} is not usable ({first_line}); "
            "is it migrated? Run `alembic upgrade head`."
        )


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
    publisher = EvaluationPublisher(config_file, config.log_level, config.log_format)
    try:
        supervisor.serve(publisher, on_worker_exit=publisher.flush, tend=publisher.ensure_running)
    finally:
        publisher.close()
