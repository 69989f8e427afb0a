"""`postwarden check-config`: what would make a process exit at start, found before starting it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from app.cli.common import emit_json, json_option, main
from app.cli.composition import broker_problem
from app.config import Config, ConfigError, config_path, load_config
from app.web.app import WebSetupError, session_secret


def start_problems(config: Config) -> list[str]:
    """What the processes need at start, beyond what load_config checks: the web's session secret
    (read by the web's own function), a database URL SQLAlchemy can load, a broker kombu knows, and
    data and metrics folders the processes can write (or create)."""
    problems: list[str] = []
    try:
        session_secret(config)
    except WebSetupError as e:
        problems.append(str(e))
    problems += url_problems(config) + folder_problems("data_dir", config.data_dir)
    if config.metrics_dir is not None:  # inside data_dir otherwise, which is checked already
        problems += folder_problems("metrics_dir", config.metrics_dir)
    return problems


def url_problems(config: Config) -> list[str]:
    problems: list[str] = []
    try:
        make_url(config.resolved_database_url).get_dialect()
    except (ArgumentError, NoSuchModuleError) as e:
        problems.append(f"database_url: {e}")
    broker = broker_problem(config.resolved_broker_url)
    if broker is not None:
        problems.append(f"broker_url: {broker}")
    return problems


def folder_problems(setting: str, folder: Path) -> list[str]:
    """The folder exists and is writable, or the nearest existing parent lets it be created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"{setting}: {str(existing)!r} is not a directory"]
    if not os.access(existing, os.W_OK | os.X_OK):
        what = setting if existing == folder else f"{setting} {str(folder)!r}: its parent"
        return [f"{what} {str(existing)!r} is not writable"]
    return []


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
