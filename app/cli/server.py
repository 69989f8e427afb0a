"""`postwarden smtp`: the composition root of the SMTP process (listeners, store, Celery hand-off)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from app.cli.common import load, main
from app.config import Config, config_path
from app.logs import setup_logging
from app.smtpserver.evaluation import RecordEvaluation

log = logging.getLogger("app.cli.server")


def celery_evaluation_sink(config_file: str) -> RecordEvaluation:
    """Send each evaluation to `tasks.mail.record_dmarc_evaluation` from one background thread, so the
    event loop never waits on the broker; a broker failure is logged and the evaluation dropped
    (reports are best effort; the message itself is already stored)."""
    # The Celery app reads its settings from the config named here, the same file as ours.
    os.environ["POSTWARDEN_CONFIG"] = config_file
    from tasks.mail import record_dmarc_evaluation  # Celery stays out of app/ except at this root

    sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluation-sender")

    def send(evaluation: dict[str, Any]) -> None:
        try:
            record_dmarc_evaluation.apply_async(args=(evaluation,), retry=False)
        except Exception as e:
            log.error("dmarc evaluation for %s not queued: %s", evaluation.get("policy_domain"), e)

    def hand_on(evaluation: dict[str, Any]) -> None:
        sender.submit(send, evaluation)

    return hand_on


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
@click.pass_context
def smtp(ctx: click.Context) -> None:
    """Run the SMTP listeners (inbound and submission) configured in [[listeners]]."""
    config: Config = load(ctx)
    setup_logging(config.log_level, config.log_format)
    if not config.listeners:
        sys.exit("postwarden smtp: no [[listeners]] configured; add an inbound and/or submission listener")
    # Imported here so that other commands do not load the SMTP stack.
    from app.smtpserver.server import ListenerError, SMTPService, serve

    sink = celery_evaluation_sink(str(config_path(ctx.find_root().obj).resolve()))
    try:
        with exit_if_database_unusable(config.resolved_database_url):
            asyncio.run(serve(SMTPService(config, record_evaluation=sink)))
    except ListenerError as e:
        sys.exit(f"postwarden smtp: {e}")
