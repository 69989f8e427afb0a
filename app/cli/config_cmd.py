"""`postwarden check-config`: what would make a process exit at start, found before starting it."""

from __future__ import annotations

import sys

import click

from app.cli.common import emit_json, json_option, main
from app.config import Config, ConfigError, config_path, load_config
from app.web.app import WebSetupError, session_secret


def start_problems(config: Config) -> list[str]:
    """Checks the processes make when they start, beyond reading the config (which load_config does):
    the web process reads its session secret (app/web/app.py) with the same function."""
    problems: list[str] = []
    try:
        session_secret(config)
    except WebSetupError as e:
        problems.append(str(e))
    return problems


@main.command("check-config")
@json_option
@click.pass_context
def check_config(ctx: click.Context, as_json: bool) -> None:
    """Validate the configuration file and what the processes check at start; report every problem
    found (exit status 2 if any)."""
    path = config_path(ctx.find_root().obj)
    config: Config | None = None
    try:
        config = load_config(path)
    except ConfigError as e:
        problems = str(e).splitlines()
    else:
        problems = [f"{path}: {problem}" for problem in start_problems(config)]
    summary = None
    if config is not None:
        summary = {
            "hostname": config.hostname,
            "domains": len(config.domains),
            "accounts": len(config.accounts),
        }
    if as_json:
        emit_json({"ok": not problems, "config": str(path), "problems": problems, "summary": summary})
    elif problems:
        for problem in problems:
            click.echo(f"postwarden: {problem}", err=True)
    elif config is not None:
        click.echo(
            f"configuration ok: host {config.hostname}, {len(config.domains)} domain(s), "
            f"{len(config.accounts)} account(s)"
        )
    if problems:
        sys.exit(2)
