"""Run a real Celery worker (`celery -A tasks worker`) as a subprocess for a test config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from app.config import load_config
from app.db import session_scope
from app.queue.outgoing import queue_size
from tasks.celery_app import celery_settings

CELERY = str(Path(sys.executable).with_name("celery"))


def wait_for_text(
    log: Path, text: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> str:
    """Poll a log file until `text` appears; fail with the log's tail at the deadline or if `process` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"process exited ({process.returncode}) before {text!r}; log:\n{content[-3000:]}"
            )
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log} after {timeout}s; log ends:\n{content[-3000:]}")


@contextmanager
def celery_worker(config_file: Path, log: Path, concurrency: int = 1) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "POSTWARDEN_CONFIG": str(config_file)}
    args = [
        CELERY,
        "-A",
        "tasks",
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"test-{os.getpid()}@%h",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_text(log, "ready.", process=process)
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Cold-stop the worker (SIGQUIT: tests need no graceful drain), SIGKILL it if still there after 20 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGQUIT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def client_for(config_file: Path) -> Celery:
    """A Celery client that publishes to the same broker as the worker, configured the same way."""
    client = Celery("postwarden-test")
    client.conf.update(celery_settings(load_config(config_file)))
    return client


def drain_queue(config_file: Path, logs: Path, timeout: float = 600.0) -> float:
    """Wake the running workers with one sweep (what beat does); seconds until the outgoing queue is
    empty (the benchmarks' clock). `logs`: where to look when it does not empty in time."""
    url = load_config(config_file).resolved_database_url
    started = time.perf_counter()
    client_for(config_file).send_task("tasks.mail.sweep_queue")
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(url) as session:
            if queue_size(session) == 0:
                return time.perf_counter() - started
        if time.monotonic() > deadline:
            raise SystemExit(f"queue not drained in {timeout:.0f} s; see {logs}")
        time.sleep(0.01)
