"""The root command group and what every command shares: loading the config, printing JSON, turning
a database error into a clear exit."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from app.config import Config, ConfigError, load_config
from app.logs import escape_control


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


def echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """click.echo for anything that shows stored or outside text (subjects, addresses, DNS values):
    control characters are printed as escapes (`\x1b`, `\r`), so a message cannot send terminal
    escape sequences or start a fake line. JSON output needs none of this: json.dumps escapes them."""
    click.echo(escape_control(text), err=err, nl=nl)


# Row ids are 64-bit signed integers in both databases: a larger number is refused by click with a
# clear message instead of reaching the driver (SQLite raised OverflowError with a traceback).
MAX_ROW_ID = 2**63 - 1
ROW_ID = click.IntRange(1, MAX_ROW_ID)
# A count of rows to show: bounded the same way (it becomes a SQL LIMIT).
ROW_LIMIT = click.IntRange(1, MAX_ROW_ID)

# Every listing takes `--json` (DESIGN.md); one definition so they all read alike.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


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
