"""`postwarden account set-password NAME`."""

from __future__ import annotations

import sys

import click

from app.accounts import set_password
from app.cli.common import exit_if_database_unusable, load, main
from app.db import session_scope

MIN_PASSWORD_LENGTH = 8


@main.group("account")
def account() -> None:
    """Manage accounts (accounts themselves are defined in the config file)."""


@account.command("set-password")
@click.argument("name")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of standard input."
)
@click.pass_context
def set_password_command(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set the password NAME logs in with on the submission port."""
    config = load(ctx)
    if name not in config.accounts:
        known = ", ".join(sorted(config.accounts)) or "none"
        sys.exit(f"postwarden: no account {name!r} in the config (accounts: {known})")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_LENGTH:
        sys.exit(f"postwarden: the password must be at least {MIN_PASSWORD_LENGTH} characters")
    with (
        exit_if_database_unusable(config.resolved_database_url),
        session_scope(config.resolved_database_url) as s,
    ):
        set_password(s, name, password)
    click.echo(f"password set for account {name}")
