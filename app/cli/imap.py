"""`postwarden imap`: the IMAP server (SPEC §8) on the config's [[listeners]] of kind imap and imaps."""

from __future__ import annotations

import asyncio
import sys

import click

from app.cli.common import exit_if_database_unusable, load, main
from app.logs import setup_logging
from app.metrics import enable_multiprocess


@main.command("imap")
@click.pass_context
def imap_command(ctx: click.Context) -> None:
    """Serve IMAP on the [[listeners]] of kind imap (STARTTLS) and imaps (implicit TLS)."""
    config = load(ctx)
    setup_logging(config.log_level, config.log_format)
    # Imported here so that other commands do not load the IMAP stack.
    from app.imap.server import IMAPLimits, IMAPListener, IMAPServer, idle_until_stopped, serve_until_stopped

    if not config.imap_listeners:
        asyncio.run(idle_until_stopped())
        return
    from app.smtpserver.server import prepare_storage

    try:
        listeners = [IMAPListener.of(listener) for listener in config.imap_listeners]
    except ValueError as e:
        sys.exit(f"postwarden imap: {e}")
    enable_multiprocess(config.resolved_metrics_dir, "imap")
    server = IMAPServer(config, IMAPLimits.of(config))
    with exit_if_database_unusable(config.resolved_database_url):
        # APPENDs an earlier run left half-committed are settled (the store's recovery takes only
        # directories no running process holds), and accounts configured since can log in.
        prepare_storage(config, server.store)
    try:
        asyncio.run(serve_until_stopped(server, listeners))
    except OSError as e:
        sys.exit(f"postwarden imap: cannot listen: {e.strerror or e}")
