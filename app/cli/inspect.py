"""Read-only inspection: `mailbox list ACCOUNT`, `message list ACCOUNT MAILBOX`, `message show ID`."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn

import click
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

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
from app.models import Account, Mailbox, Message

# What `message list` shows per message (all columns are in `message show --json`).
LIST_COLUMNS = ("id", "received", "msg_from", "subject", "size", "seen", "junk", "is_reject", "reason")


@contextmanager
def _database(config: Config) -> Iterator[Session]:
    """A session; a database that is unreachable or not migrated ends the command with a clear message."""
    with (
        exit_if_database_unusable(config.resolved_database_url),
        session_scope(config.resolved_database_url) as s,
    ):
        yield s


def _fail(message: str) -> NoReturn:
    echo(f"postwarden: {message}", err=True)
    sys.exit(1)


def _account(session: Session, name: str) -> Account:
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        known = ", ".join(session.scalars(select(Account.name).order_by(Account.name))) or "none"
        _fail(f"no account {name!r} in the database (accounts: {known})")
    return account


def _mailbox(session: Session, account: Account, name: str) -> Mailbox:
    mailbox = session.scalar(select(Mailbox).where(Mailbox.account_id == account.id, Mailbox.name == name))
    if mailbox is None:
        query = select(Mailbox.name).where(Mailbox.account_id == account.id).order_by(Mailbox.name)
        known = ", ".join(session.scalars(query)) or "none"
        _fail(f"account {account.name!r} has no mailbox {name!r} (mailboxes: {known})")
    return mailbox


def _mailbox_rows(session: Session, account: Account) -> list[dict[str, Any]]:
    """Each mailbox of the account with its message count, unseen count and total size."""
    counts = (
        select(
            Message.mailbox_id,
            func.count(Message.id).label("messages"),
            func.count(Message.id).filter(Message.seen.is_(False)).label("unseen"),
            func.coalesce(func.sum(Message.size), 0).label("size"),
        )
        .group_by(Message.mailbox_id)
        .subquery()
    )
    query = (
        select(Mailbox.name, counts.c.messages, counts.c.unseen, counts.c.size)
        .outerjoin(counts, counts.c.mailbox_id == Mailbox.id)
        .where(Mailbox.account_id == account.id)
        .order_by(Mailbox.name)
    )
    return [
        {"name": name, "messages": messages or 0, "unseen": unseen or 0, "size": size or 0}
        for name, messages, unseen, size in session.execute(query)
    ]


def _columns(message: Message) -> dict[str, Any]:
    return {column.key: getattr(message, column.key) for column in Message.__table__.columns}


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
    with _database(config) as s:
        rows = _mailbox_rows(s, _account(s, account))
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
    with _database(config) as s:
        box = _mailbox(s, _account(s, account), mailbox)
        query = (
            select(Message)
            .where(Message.mailbox_id == box.id)
            .order_by(Message.received.desc(), Message.id.desc())
            .limit(limit)
        )
        rows = [{key: getattr(m, key) for key in LIST_COLUMNS} for m in s.scalars(query)]
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


def _find_message(session: Session, ident: str) -> Message:
    """By numeric id (as `message list` shows) or by file id (the id an SMTP 250 reply gave)."""
    number = row_number(ident)
    where = Message.id == number if number is not None else Message.file_id == ident
    message = session.scalar(select(Message).where(where))
    if message is None:
        _fail(f"no message {ident!r}")
    return message


def _message_details(session: Session, config: Config, message: Message) -> dict[str, Any]:
    orig, destined = aliased(Mailbox), aliased(Mailbox)
    names = session.execute(
        select(Account.name, Mailbox.name, orig.name, destined.name)
        .select_from(Message)
        .join(Account, Account.id == Message.account_id)
        .join(Mailbox, Mailbox.id == Message.mailbox_id)
        .outerjoin(orig, orig.id == Message.mailbox_orig_id)
        .outerjoin(destined, destined.id == Message.mailbox_destined_id)
        .where(Message.id == message.id)
    ).one()
    details = _columns(message)
    details.update(zip(("account", "mailbox", "mailbox_orig", "mailbox_destined"), names, strict=True))
    details["file"] = str(config.data_dir / message.path)
    details["other_copies"] = _other_copies(session, message.file_id)
    return details


def _other_copies(session: Session, file_id: str) -> list[str]:
    """The file ids of the other mailboxes' copies stored by the same SMTP transaction (the first
    copy has the transaction's id, the others that id with "-2", "-3"...: app/store/files.py)."""
    transaction_id = file_id.partition("-")[0]
    same = or_(Message.file_id == transaction_id, Message.file_id.like(f"{transaction_id}-%"))
    query = select(Message.file_id).where(same, Message.file_id != file_id).order_by(Message.id)
    return list(session.scalars(query))


@message_group.command("show")
@click.argument("ident", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (metadata and file path, not the content).")
@click.pass_context
def message_show(ctx: click.Context, ident: str, as_json: bool) -> None:
    """Show a message's metadata and content; ID is the number `message list` shows, or the file id
    (the id the SMTP 250 reply gave; other mailboxes' copies of that message add -2, -3...)."""
    config = load(ctx)
    with _database(config) as s:
        details = _message_details(s, config, _find_message(s, ident))
    if as_json:
        emit_json(details)
        return
    for key, value in details.items():
        if value not in (None, "", False):
            echo(f"{key}: {value}")
    try:
        content = (config.data_dir / details["path"]).read_bytes()
    except OSError as e:
        _fail(f"message file {details['file']} cannot be read: {e.strerror}")
    click.echo("")
    click.echo(_shown_content(content), nl=False)


def _shown_content(content: bytes) -> str:
    """The message as text for a terminal. Line ends (CRLF, shown as the terminal's newline) and tabs
    are kept, since they are the message's layout; every other control character, a lone CR
    included, is printed as an escape: a message can carry terminal escape sequences anywhere."""
    lines = re.split(r"\r?\n", content.decode("utf-8", errors="replace"))
    return "\n".join("\t".join(escape_control(part) for part in line.split("\t")) for line in lines)
