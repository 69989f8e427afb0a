"""`postwarden web`: serve the web app with uvicorn, on loopback unless the config says otherwise."""

from __future__ import annotations

import sys

import click
import uvicorn

from app.cli.common import load, main
from app.logs import setup_logging
from app.web.app import WebSetupError, create_app


@main.command("web")
@click.option("--address", help="Address to listen on (default: web.address of the config, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: web.port of the config, 8080).")
@click.pass_context
def web_command(ctx: click.Context, address: str | None, port: int | None) -> None:
    """Serve the admin pages, /health and /metrics."""
    config = load(ctx)
    setup_logging(config.log_level, config.log_format)
    try:
        app = create_app(config)
    except WebSetupError as e:
        click.echo(f"postwarden: {e}", err=True)
        sys.exit(2)
    uvicorn.run(
        app,
        host=address or config.web.address,
        port=config.web.port if port is None else port,
        log_config=None,  # our handlers (text or JSON, with cid) from setup_logging
        log_level=config.log_level,
        server_header=False,
        # Client address and scheme from X-Forwarded-For/-Proto, believed only from these peers.
        proxy_headers=True,
        forwarded_allow_ips=list(config.web.trusted_proxies),
    )
