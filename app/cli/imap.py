"""`postwarden imap`: the IMAP server (SPEC §8) on the config's [[imap.listeners]]."""

from __future__ import annotations

import asyncio
import sys

import click

from app.accounts import sync_from_config
from app.cli.common import exit_if_database_unusable, load, main
from app.db import session_scope
from app.logs import setup_logging


@main.command("imap")
@click.pass_context
def imap_command(ctx: click.Context) -> None:
    """Serve IMAP (STARTTLS and implicit TLS) on the listeners configured in [[imap.listeners]]."""
    config = load(ctx)
    setup_logging(config.log_level, config.log_format)
    if not config.imap.listeners:
        sys.exit('postwarden imap: no [[imap.listeners]] configured; add one of kind "imap" or "imaps"')
    # Imported here so that other commands do not load the IMAP stack.
    from app.imap.server import IMAPListener, serve_until_stopped

    try:
        listeners = [IMAPListener.of(listener) for listener in config.imap.listeners]
    except ValueError as e:
        sys.exit(f"postwarden imap: {e}")
    with (
        exit_if_database_unusable(config.resolved_database_url),
        session_scope(config.resolved_database_url) as session,
    ):
        sync_from_config(session, config)  # accounts configured since the last start can log in
    try:
        asyncio.run(serve_until_stopped(config, listeners))
    except OSError as e:
        sys.exit(f"postwarden imap: cannot listen: {e.strerror or e}")
