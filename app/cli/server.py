"""`postwarden smtp`: the supervisor and its workers, with the task publisher as their hand-off to Celery."""

from __future__ import annotations

import sys

import click

from app.cli.common import exit_if_database_unusable, load, main
from app.config import Config, config_path
from app.logs import setup_logging
from app.metrics import enable_multiprocess


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
    if not config.smtp_listeners:
        sys.exit(
            "postwarden smtp: no SMTP [[listeners]] configured; add an inbound and/or submission listener"
        )
    # Imported here so that other commands do not load the SMTP stack.
    from app.cli.composition import celery_publish
    from app.smtpserver.handoff import TaskPublisher
    from app.smtpserver.server import ListenerError
    from app.smtpserver.workers import Supervisor, default_worker_count

    enable_multiprocess(config.resolved_metrics_dir, "smtp")  # before the workers fork
    supervisor = Supervisor(config, workers or default_worker_count())
    try:
        with exit_if_database_unusable(config.resolved_database_url):
            supervisor.prepare()
    except ListenerError as e:
        sys.exit(f"postwarden smtp: {e}")
    config_file = str(config_path(ctx.find_root().obj).resolve())
    publisher = TaskPublisher(celery_publish(), config_file, config.log_level, config.log_format)
    try:
        supervisor.serve(publisher, on_worker_exit=publisher.flush, tend=publisher.ensure_running)
    finally:
        publisher.close()
