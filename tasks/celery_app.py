"""The Celery app, configured from the Postwarden config file (broker URL, data dir)."""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

from celery import Celery
from celery.signals import setup_logging as celery_setup_logging

from app.config import Config, ConfigError, load_config
from app.logs import setup_logging
from tasks.schedule import beat_schedule


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
    folder = config.data_dir / "queue"
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


def celery_settings(config: Config) -> dict[str, Any]:
    return {
        "broker_url": config.resolved_broker_url,
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


app = Celery("postwarden", include=["tasks.mail", "tasks.delivery", "tasks.reports", "tasks.tlsreports"])


@app.on_configure.connect
def _configure(sender: Celery, **_: object) -> None:
    # Lazy: the config is read when Celery first needs its settings, not at import, so importing
    # a task module (tests, the CLI) does not require a config file.
    sender.conf.update(celery_settings(settings()))
