"""The Celery app, configured from the Postwarden config file (broker URL, data dir)."""

from __future__ import annotations

import sys
from functools import cache

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
        "store_processed": False,
    }


def make_celery(config: Config) -> Celery:
    celery = Celery("postwarden", broker=config.resolved_broker_url, include=["tasks.mail"])
    celery.conf.update(
        broker_transport_options=broker_options(config),
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_acks_late=True,  # a killed worker's task is redelivered; tasks are idempotent
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=4,
        timezone="UTC",
        enable_utc=True,
        beat_schedule=beat_schedule(),
        beat_schedule_filename=str(config.data_dir / "celerybeat-schedule"),
    )
    return celery


@celery_setup_logging.connect
def _configure_logging(**_: object) -> None:
    config = settings()
    setup_logging(config.log_level, config.log_format)


app = make_celery(settings())
