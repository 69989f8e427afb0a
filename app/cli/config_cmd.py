"""`postwarden check-config`."""

from __future__ import annotations

import click

from app.cli.common import load, main


@main.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration file and report the first problems found."""
    config = load(ctx)
    click.echo(
        f"configuration ok: host {config.hostname}, {len(config.domains)} domain(s), "
        f"{len(config.accounts)} account(s)"
    )
