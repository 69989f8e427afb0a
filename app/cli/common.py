"""The root command group and what every command shares: loading the config, printing JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from app.config import Config, ConfigError, load_config


@click.group()
@click.option(
    "--config",
    "config_file",
    envvar="POSTWARDEN_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Configuration file (default: config/postwarden.toml, or $POSTWARDEN_CONFIG).",
)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """Postwarden mail server."""
    ctx.obj = config_file


def load(ctx: click.Context) -> Config:
    """The validated config; on error, print the message (no traceback) and exit 2."""
    try:
        return load_config(ctx.find_root().obj)
    except ConfigError as e:
        click.echo(f"postwarden: {e}", err=True)
        sys.exit(2)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))
