"""The Celery app, configured from the Postwarden config file (broker URL, data dir)."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import setup_logging as celery_setup_logging
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_shutting_down
from kombu.transport import resolve_transport

from app.config import Config, ConfigError, load_config
from app.logs import setup_logging
from app.metrics import enable_multiprocess, process_ended, worker_folder
from app.process import WORKER_STOP_GRACE_VARIABLE
from tasks.eventqueues import prune_event_queues
from tasks.fsbroker import STAGING, prune_staging
from tasks.fsbroker import TRANSPORT as FILESYSTEM_TRANSPORT
from tasks.schedule import beat_schedule

log = logging.getLogger(__name__)

# An ephemeral queue whose oldest message waited this long has no consumer left.
STALE_QUEUE_AGE = 60.0


@cache
def settings() -> Config:
    """The config, loaded once per process; a bad config stops the process with a clear message."""
    try:
        return load_config()
    except ConfigError as e:
        sys.exit(f"postwarden: {e}")


def broker_options(config: Config) -> dict[str, object]:
    """kombu's filesystem transport needs shared folders; other brokers need nothing extra."""
    if not config.resolved_broker_url.startswith("filesystem"):
        return {}
    folder = queue_folder(config)
    processed = folder / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "processed_folder": str(processed),
        "control_folder": str(folder / "control"),  # broadcasts (flower, `celery inspect`)
        "store_processed": False,
        "polling_interval": 0.2,
    }


def queue_folder(config: Config) -> Path:
    return config.data_dir / "queue"


def prune_broker_queues(min_age: float) -> None:
    """Prune the event and reply queues nobody consumes (tasks/eventqueues.py) and the messages
    killed writers left unfinished (tasks/fsbroker.py); filesystem broker only."""
    config = settings()
    if config.resolved_broker_url.startswith("filesystem"):
        folder = queue_folder(config)
        prune_event_queues(folder, folder / "control", min_age)
        prune_staging(folder / STAGING)


def broker_transport(config: Config) -> str | None:
    """Our filesystem transport (tasks/fsbroker.py: whole messages, claimed once) for `filesystem://`;
    None lets the URL's scheme choose."""
    return FILESYSTEM_TRANSPORT if config.resolved_broker_url.startswith("filesystem") else None


def broker_problem(broker_url: str) -> str | None:
    """For `postwarden check-config`: why kombu has no transport for the URL's scheme, or None."""
    scheme = broker_url.partition("://")[0]
    try:
        resolve_transport(scheme)
    except (KeyError, ImportError) as e:
        return f"no broker transport {scheme!r} ({e})"
    return None


def celery_settings(config: Config) -> dict[str, Any]:
    return {
        "broker_url": config.resolved_broker_url,
        "broker_transport": broker_transport(config),
        "broker_transport_options": broker_options(config),
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "task_acks_late": True,  # a killed worker's task is redelivered; tasks are idempotent
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 4,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": beat_schedule(),
        "beat_schedule_filename": str(config.data_dir / "celerybeat-schedule"),
    }


@celery_setup_logging.connect
def _configure_logging(**_: object) -> None:
    config = settings()
    setup_logging(config.log_level, config.log_format)


TASK_MODULES = [
    "tasks.mail",
    "tasks.delivery",
    "tasks.mailboxes",
    "tasks.reports",
    "tasks.tlsreports",
    "tasks.inreports",
]
app = Celery("postwarden", include=TASK_MODULES)


@app.on_configure.connect
def _configure(sender: Celery, **_: object) -> None:
    # Lazy: the config is read when Celery first needs its settings, not at import, so importing
    # a task module (tests, the CLI) does not require a config file.
    config = settings()
    sender.conf.update(celery_settings(config))
    if config.resolved_broker_url.startswith("filesystem"):
        logging.getLogger("kombu.connection").addFilter(_no_hostname_noise)


def _no_hostname_noise(record: logging.LogRecord) -> bool:
    """kombu warns at every connection that a URL without a host means localhost: the filesystem
    broker's URL never has one, so for it the warning is noise (a dozen lines at each start)."""
    return not record.getMessage().startswith("No hostname was supplied")


@worker_init.connect
def _prune_stale_queues(**_: object) -> None:
    prune_broker_queues(STALE_QUEUE_AGE)


@worker_init.connect
def _count_in_files(sender: Any, **_: object) -> None:
    # In the main process, before the pool forks: its processes count into the worker's folder.
    enable_multiprocess(settings().resolved_metrics_dir, worker_folder(sender.hostname))


@worker_process_init.connect
def _freeze_startup_objects(**_: object) -> None:
    # What the process holds once started (modules, the app, the config) lives as long as it does;
    # left to the collector, each full collection scans it all again: 80-200 ms per delivery run of
    # 500 messages, measured, mostly while its rows are loaded.
    gc.freeze()


@worker_process_shutdown.connect
def _pool_process_ended(pid: int, **_: object) -> None:
    process_ended(pid)


# honcho (`make run`) SIGKILLs what has not exited 5 s after its SIGTERM. A warm shutdown spends up
# to 4 s in the polling loop of the filesystem transport and 2-4 s more stopping the pool, so under
# honcho (the Procfile sets this variable) the worker ends itself first, after
# POSTWARDEN_WORKER_STOP_GRACE seconds.
# Unacknowledged task messages are then lost, which costs nothing: the database is the truth and the
# sweep wakes the workers again (DESIGN.md). The systemd unit sets it too, below its stop timeout
# (app/systemdunits.py); without it the warm shutdown runs its course.
@worker_shutting_down.connect
def _bound_shutdown(**_: object) -> None:
    # Runs in the signal handler: only start a timer thread here.
    try:
        grace = float(os.environ.get(WORKER_STOP_GRACE_VARIABLE, ""))
    except ValueError:
        return
    timer = threading.Timer(grace, _exit_now, args=(grace,))
    timer.daemon = True
    timer.start()


def _exit_now(grace: float) -> None:
    # Expected under honcho at every stop (the warm shutdown takes longer): information, not a fault.
    log.info("worker: exiting %.1f s after the signal (%s)", grace, WORKER_STOP_GRACE_VARIABLE)
    logging.shutdown()
    os._exit(0)
