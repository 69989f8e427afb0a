"""Mailboxes and the messages stored in them: the one module that reads and changes `Mailbox` and
`Message` rows (tests/store/test_table_owners.py keeps it so).

Every function works in the caller's session and leaves committing to it: the store commits a
message's rows with its file (app/store/files.py), the CLI and the web only read. Messages leave
here as `MessageRow`s, plain dicts, so no caller depends on the model. The sections follow what a
mailbox is used for: mailboxes; adding messages; reading them (list, find, count); what reputation
asks of them; what the account web UI reads. Moving, flagging and expunging messages will be
sections here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.db import affected_rows, insert_once
from app.models import Account, Mailbox, Message
from app.models.base import utcnow
from app.store.signals import SignalState, resync_signals

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


def add_messages(session: Session, rows: list[MessageRow]) -> None:
    """Insert the rows (new_message_row) in one statement."""
    session.execute(insert(Message), rows)


def holds_message_id(session: Session, mailbox_id: int, message_id: str | None) -> bool:
    """Whether the mailbox has a message with this Message-ID: a retried reject is stored once
    (SPEC R3.1). Without a Message-ID nothing matches."""
    if not message_id:
        return False
    query = select(Message.id).where(Message.mailbox_id == mailbox_id, Message.message_id == message_id)
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


# Web reads: what the account web UI (app/web/mail.py) shows. Every read names the account, so one
# account can never page through or open another's messages.


def account_messages(
    session: Session, account_id: int, mailbox: str, limit: int, before: tuple[datetime, int] | None = None
) -> list[MessageRow] | None:
    """Up to `limit` messages of the account's mailbox, newest first, received before the (received,
    id) key `before` (the last row of the previous page): keyset paging, one index range scan
    however deep the page. None if the account has no such mailbox."""
    box = mailbox_id(session, account_id, mailbox)
    if box is None:
        return None
    query = select(Message).where(Message.mailbox_id == box)
    if before is not None:
        received, row_id = before
        query = query.where(
            or_(Message.received < received, and_(Message.received == received, Message.id < row_id))
        )
    query = query.order_by(Message.received.desc(), Message.id.desc()).limit(limit)
    return [_columns(message) for message in session.scalars(query)]


def account_message(session: Session, account_id: int, row_id: int) -> MessageRow | None:
    """The message with this row id if it belongs to the account; None otherwise (as if missing)."""
    message = session.scalar(select(Message).where(Message.id == row_id, Message.account_id == account_id))
    return None if message is None else _columns(message)


# PLACEHOLDER until i11-F merges: move_messages and set_flags with the agreed signatures
# (/work/notes/issue11.md), as plain row updates, so the web UI works and is tested meanwhile.


class MailboxError(Exception):
    """An unknown mailbox, or a message that is not the account's."""


def move_messages(
    session: Session, account_id: int, message_ids: Sequence[int], target: str, *, copy: bool = False
) -> list[int]:
    """Move the account's messages to its mailbox `target` (SPEC R3.3); returns their ids."""
    if copy:
        raise NotImplementedError("copying is i11-F's")
    target_id = mailbox_id(session, account_id, target)
    messages = list(
        session.scalars(select(Message).where(Message.id.in_(message_ids), Message.account_id == account_id))
    )
    if target_id is None or len(messages) != len(set(message_ids)):
        raise MailboxError(f"no mailbox {target!r} or a message not of the account")
    query = select(Mailbox.id, Mailbox.name).where(Mailbox.account_id == account_id)
    names = {row_id: name for row_id, name in session.execute(query)}
    for message in messages:
        source = names[message.mailbox_id]
        if message.is_reject and message.mailbox_destined_id is not None:
            message.mailbox_orig_id = message.mailbox_destined_id
        if target == "Junk":
            message.junk, message.notjunk = True, False
        elif source in ("Junk", "Rejects"):
            message.junk, message.notjunk = False, True
        message.mailbox_id = target_id
    _resync(session, messages)
    return [message.id for message in messages]


def set_flags(
    session: Session,
    account_id: int,
    message_ids: Sequence[int],
    *,
    seen: bool | None = None,
    junk: bool | None = None,
    notjunk: bool | None = None,
) -> int:
    """Set the given flags of the account's messages (junk clears notjunk and vice versa)."""
    values: dict[str, bool] = {}
    if seen is not None:
        values["seen"] = seen
    if junk is not None:
        values.update(junk=junk, **({"notjunk": False} if junk else {}))
    if notjunk is not None:
        values.update(notjunk=notjunk, **({"junk": False} if notjunk else {}))
    where = and_(Message.id.in_(message_ids), Message.account_id == account_id)
    changed = affected_rows(session.execute(update(Message).where(where).values(values)))
    _resync(session, list(session.scalars(select(Message).where(where))))
    return changed


def _resync(session: Session, messages: list[Message]) -> None:
    session.flush()
    resync_signals(session, [SignalState(m.id, m.mailbox_orig_id, m.junk, m.notjunk) for m in messages])
