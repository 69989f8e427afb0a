"""Read-only inspection: `mailbox list ACCOUNT`, `message list ACCOUNT MAILBOX`, `message show ID`."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click
from sqlalchemy.orm import Session

from app.accounts import account_name, account_names, find_account
from app.cli.common import (
    MAX_ROW_ID,
    ROW_LIMIT,
    echo,
    emit_json,
    exit_if_database_unusable,
    json_option,
    load,
    main,
)
from app.config import Config
from app.db import session_scope
from app.logs import escape_control
from app.store import mailboxes
from app.store.content import stored_content

if TYPE_CHECKING:  # rows app/accounts.py hands over
    from app.models import Account

# What `message list` shows per message (all columns are in `message show --json`).
LIST_COLUMNS = ("id", "received", "msg_from", "subject", "size", "seen", "junk", "is_reject", "reason")


@contextmanager
def database_session(config: Config) -> Iterator[Session]:
    """A session; a database that is unreachable or not migrated ends the command with a clear message."""
    with (
        exit_if_database_unusable(config.resolved_database_url),
        session_scope(config.resolved_database_url) as s,
    ):
        yield s


def fail(message: str) -> NoReturn:
    echo(f"postwarden: {message}", err=True)
    sys.exit(1)


def account_named(session: Session, name: str) -> Account:
    account = find_account(session, name)
    if account is None:
        known = ", ".join(account_names(session)) or "none"
        fail(f"no account {name!r} in the database (accounts: {known})")
    return account


def _mailbox_id(session: Session, account: Account, name: str) -> int:
    mailbox_id = mailboxes.mailbox_id(session, account.id, name)
    if mailbox_id is None:
        known = ", ".join(mailboxes.mailbox_names(session, account.id)) or "none"
        fail(f"account {account.name!r} has no mailbox {name!r} (mailboxes: {known})")
    return mailbox_id


def _flags(row: dict[str, Any]) -> str:
    names = [("seen", "seen"), ("junk", "junk"), ("notjunk", "notjunk"), ("is_reject", "reject")]
    return ",".join(label for key, label in names if row.get(key)) or "-"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@main.group("mailbox")
def mailbox_group() -> None:
    """Inspect an account's mailboxes."""


@mailbox_group.command("list")
@click.argument("account")
@json_option
@click.pass_context
def mailbox_list(ctx: click.Context, account: str, as_json: bool) -> None:
    """List ACCOUNT's mailboxes with message counts."""
    config = load(ctx)
    with database_session(config) as s:
        rows = mailboxes.mailbox_summaries(s, account_named(s, account).id)
    if as_json:
        emit_json(rows)
        return
    echo(f"{'MAILBOX':30} {'MESSAGES':>8} {'UNSEEN':>8} {'SIZE':>12}")
    for row in rows:
        echo(f"{row['name']:30} {row['messages']:8} {row['unseen']:8} {row['size']:12}")


@main.group("message")
def message_group() -> None:
    """Inspect stored messages."""


@message_group.command("list")
@click.argument("account")
@click.argument("mailbox")
@click.option("--limit", default=50, show_default=True, type=ROW_LIMIT, help="Newest N messages.")
@json_option
@click.pass_context
def message_list(ctx: click.Context, account: str, mailbox: str, limit: int, as_json: bool) -> None:
    """List the newest messages in ACCOUNT's MAILBOX."""
    config = load(ctx)
    with database_session(config) as s:
        box = _mailbox_id(s, account_named(s, account), mailbox)
        rows = [{key: m[key] for key in LIST_COLUMNS} for m in mailboxes.newest_messages(s, box, limit)]
    if as_json:
        emit_json(rows)
        return
    echo(f"{'ID':>7} {'RECEIVED (UTC)':19} {'FLAGS':14} {'FROM':30} SUBJECT")
    for row in rows:
        sender = (row["msg_from"] or "-")[:30]
        echo(f"{row['id']:7} {_when(row['received'])} {_flags(row):14} {sender:30} {row['subject'] or ''}")


def row_number(ident: str) -> int | None:
    """The row id an ID argument gives as a number, or None when it is a file id (or a number no
    row id can be: more digits than a 64-bit id has)."""
    if not (ident.isascii() and ident.isdigit()) or len(ident) > len(str(MAX_ROW_ID)):
        return None
    number = int(ident)
    return number if number <= MAX_ROW_ID else None


def message_named(session: Session, ident: str) -> dict[str, Any]:
    """By numeric id (as `message list` shows) or by file id (the id an SMTP 250 reply gave)."""
    number = row_number(ident)
    message = mailboxes.find_message(session, ident if number is None else number)
    if message is None:
        fail(f"no message {ident!r}")
    return message


def _message_details(session: Session, config: Config, message: dict[str, Any]) -> dict[str, Any]:
    account = {"account": account_name(session, message["account_id"])}
    details = {**message, **account, **mailboxes.message_placement(session, message["id"])}
    details["file"] = stored_content(config).location(message["path"])
    details["other_copies"] = mailboxes.other_copies(session, message["file_id"])
    return details


@message_group.command("show")
@click.argument("ident", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (metadata and file path, not the content).")
@click.pass_context
def message_show(ctx: click.Context, ident: str, as_json: bool) -> None:
    """Show a message's metadata and content; ID is the number `message list` shows, or the file id
    (the id the SMTP 250 reply gave; other mailboxes' copies of that message add -2, -3...)."""
    config = load(ctx)
    with database_session(config) as s:
        details = _message_details(s, config, message_named(s, ident))
    if as_json:
        emit_json(details)
        return
    for key, value in details.items():
        if value not in (None, "", False):
            echo(f"{key}: {value}")
    try:
        content = stored_content(config).read(details["path"])
    except OSError as e:
        fail(f"message {details['file']} cannot be read: {e.strerror}")
    click.echo("")
    click.echo(_shown_content(content), nl=False)


def _shown_content(content: bytes) -> str:
    """The message as text for a terminal. Line ends (CRLF, shown as the terminal's newline) and tabs
    are kept, since they are the message's layout; every other control character, a lone CR
    included, is printed as an escape: a message can carry terminal escape sequences anywhere."""
    lines = re.split(r"\r?\n", content.decode("utf-8", errors="replace"))
    return "\n".join("\t".join(escape_control(part) for part in line.split("\t")) for line in lines)
