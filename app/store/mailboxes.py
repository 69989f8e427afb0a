"""Mailboxes and the messages stored in them: the one module that reads and changes `Mailbox` and
`Message` rows (tests/store/test_table_owners.py keeps it so).

Every function works in the caller's session and leaves committing to it: the store commits a
message's rows with its file (app/store/files.py), the CLI and the web only read. Messages leave
here as `MessageRow`s, plain dicts, so no caller depends on the model. The sections follow what a
mailbox is used for: mailboxes; adding messages; reading them (list, find, count); what reputation
asks of them. Moving, flagging and expunging messages will be sections here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, or_, select
from sqlalchemy.orm import Session, aliased

from app.db import insert_once
from app.models import Account, Mailbox, Message
from app.models.base import utcnow

# Every column of a `messages` row by name, in the table's column order.
MessageRow = dict[str, Any]


# Mailboxes.


def ensure_mailbox(session: Session, account_id: int, name: str) -> int:
    """The id of the account's mailbox with this name, created if missing."""
    found = mailbox_id(session, account_id, name)
    if found is not None:
        return found
    mailbox = Mailbox(account_id=account_id, name=name)
    if insert_once(session, mailbox):
        return mailbox.id
    return session.scalars(_mailbox_id_query(account_id, name)).one()


def mailbox_id(session: Session, account_id: int, name: str) -> int | None:
    """The id of the account's mailbox with this name; None if it has none."""
    return session.scalar(_mailbox_id_query(account_id, name))


def _mailbox_id_query(account_id: int, name: str) -> Select[int]:
    return select(Mailbox.id).where(Mailbox.account_id == account_id, Mailbox.name == name)


def mailbox_names(session: Session, account_id: int) -> list[str]:
    """The account's mailbox names, sorted."""
    query = select(Mailbox.name).where(Mailbox.account_id == account_id).order_by(Mailbox.name)
    return list(session.scalars(query))


def mailbox_summaries(session: Session, account_id: int) -> list[dict[str, Any]]:
    """Each mailbox of the account, by name, with its message count, unseen count and total size."""
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
        .where(Mailbox.account_id == account_id)
        .order_by(Mailbox.name)
    )
    return [
        {"name": name, "messages": messages or 0, "unseen": unseen or 0, "size": size or 0}
        for name, messages, unseen, size in session.execute(query)
    ]


# Adding messages.


def new_message_row(
    columns: dict[str, Any],
    *,
    account_id: int,
    mailbox_id: int,
    destined_mailbox_id: int | None,
    path: str,
    size: int,
) -> MessageRow:
    """The row of a message stored at `path` (relative to the data dir; its last part is the file
    id) in `mailbox_id`, where it arrived; `columns` are what the session and analysis found."""
    return {
        **columns,
        "file_id": path.rpartition("/")[2],
        "account_id": account_id,
        "mailbox_id": mailbox_id,
        "mailbox_orig_id": mailbox_id,
        "mailbox_destined_id": destined_mailbox_id,
        "path": path,
        "size": size,
        "received": utcnow(),
    }


def add_messages(session: Session, rows: list[MessageRow]) -> list[int]:
    """Insert the rows (new_message_row) in one statement; their new row ids, in the rows' order
    (INSERT ... RETURNING: SQLite >= 3.35 and PostgreSQL)."""
    if not rows:
        return []
    statement = insert(Message).returning(Message.id, sort_by_parameter_order=True)
    return list(session.scalars(statement, rows))


def holds_reject(session: Session, mailbox_id: int, columns: MessageRow) -> bool:
    """Whether the mailbox already has this message: a retried reject is stored once (SPEC R3.1).
    Found by Message-ID, or by the content's hash when the message has no Message-ID."""
    if columns.get("message_id"):
        same = Message.message_id == columns["message_id"]
    elif columns.get("content_hash"):
        same = Message.content_hash == columns["content_hash"]
    else:
        return False
    query = select(Message.id).where(Message.mailbox_id == mailbox_id, same)
    return session.scalar(query.limit(1)) is not None


def file_id_stored(session: Session, file_id: str) -> bool:
    """Whether a message row names this file id (recovery: its file was committed)."""
    return session.scalar(select(Message.id).where(Message.file_id == file_id).limit(1)) is not None


# Reading messages.


def newest_messages(session: Session, mailbox_id: int, limit: int) -> list[MessageRow]:
    """The mailbox's newest `limit` messages, newest first."""
    query = (
        select(Message)
        .where(Message.mailbox_id == mailbox_id)
        .order_by(Message.received.desc(), Message.id.desc())
        .limit(limit)
    )
    return [_columns(message) for message in session.scalars(query)]


def find_message(session: Session, key: int | str) -> MessageRow | None:
    """The message with row id `key` (an int) or file id `key` (a str, the id an SMTP reply gave)."""
    where = Message.id == key if isinstance(key, int) else Message.file_id == key
    message = session.scalar(select(Message).where(where))
    return None if message is None else _columns(message)


def message_placement(session: Session, row_id: int) -> dict[str, str | None]:
    """The names of the message's account, its mailbox, the one it arrived in (`mailbox_orig`) and,
    for a reject, the one it would have gone to (`mailbox_destined`)."""
    orig, destined = aliased(Mailbox), aliased(Mailbox)
    names = session.execute(
        select(Account.name, Mailbox.name, orig.name, destined.name)
        .select_from(Message)
        .join(Account, Account.id == Message.account_id)
        .join(Mailbox, Mailbox.id == Message.mailbox_id)
        .outerjoin(orig, orig.id == Message.mailbox_orig_id)
        .outerjoin(destined, destined.id == Message.mailbox_destined_id)
        .where(Message.id == row_id)
    ).one()
    return dict(zip(("account", "mailbox", "mailbox_orig", "mailbox_destined"), names, strict=True))


def other_copies(session: Session, file_id: str) -> list[str]:
    """The file ids of the other mailboxes' copies stored by the same SMTP transaction (the first
    copy has the transaction's id, the others that id with "-2", "-3"...: files.copy_file_ids)."""
    transaction_id = file_id.partition("-")[0]
    same = or_(Message.file_id == transaction_id, Message.file_id.like(f"{transaction_id}-%"))
    query = select(Message.file_id).where(same, Message.file_id != file_id).order_by(Message.id)
    return list(session.scalars(query))


def count_received_since(session: Session, since: datetime) -> int:
    """How many messages were stored at or after `since` (aware)."""
    return session.scalar(select(func.count(Message.id)).where(Message.received >= since)) or 0


def _columns(message: Message) -> MessageRow:
    return {column.key: getattr(message, column.key) for column in Message.__table__.columns}


# What reputation asks.


def has_accepted_mail_from(session: Session, domain: str) -> bool:
    """Whether any message From `domain` was ever accepted (not rejected); SPEC R2.1's optional rule."""
    query = select(Message.id).where(
        Message.mailbox_orig_id.in_(select(Mailbox.id)),
        Message.msg_from_domain == domain,
        Message.is_reject.is_(False),
    )
    return session.scalar(query.limit(1)) is not None


def destination_ids(session: Session, account: str, mailbox: str) -> tuple[int, int] | None:
    """(account id, mailbox id) of the account's mailbox named `mailbox`, whose history reputation
    reads (SPEC R3.4); None before the first message made it."""
    query = (
        select(Account.id, Mailbox.id)
        .join(Mailbox, Mailbox.account_id == Account.id)
        .where(Account.name == account, Mailbox.name == mailbox)
    )
    row = session.execute(query).first()
    return None if row is None else (row[0], row[1])


def from_addresses(session: Session, row_ids: Sequence[int]) -> list[str]:
    """The From addresses of these messages (by row id; reputation asks for at most a few dozen)."""
    query = select(Message.msg_from).where(Message.id.in_(row_ids), Message.msg_from.is_not(None))
    return [address for address in session.scalars(query) if address]
