"""Mailboxes and the messages stored in them: the one module that reads and changes `Mailbox` and
`Message` rows (tests/store/test_table_owners.py keeps it so).

Every function works in the caller's session and leaves committing to it: the store commits a
message's rows with its file (app/store/files.py), the CLI and the web only read. Messages leave
here as `MessageRow`s, plain dicts, so no caller depends on the model. The sections follow what a
mailbox is used for: mailboxes; adding messages; reading them (list, find, count); what reputation
asks of them; what the account web UI reads; moving, copying and flagging them (SPEC R3.3); the
cleanup of Rejects (R3.1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Select, String, and_, bindparam, cast, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.db import affected_rows, insert_once, session_scope
from app.models import Mailbox, MailboxSubscription, Message
from app.models.base import utcnow
from app.models.store import RESCUED
from app.store.content import StoredContent, stored_content
from app.store.signals import SignalState, copy_signals, resync_signals

if TYPE_CHECKING:
    from app.config import Config

log = logging.getLogger(__name__)

# Every column of a `messages` row by name, in the table's column order.
MessageRow = dict[str, Any]
# PostgreSQL channel notified with a mailbox's id when a transaction changing it commits (claim):
# idling IMAP sessions wake up at once (app/imap/wakeup.py).
CHANGE_CHANNEL = "postwarden_mailbox"
# Bulk UPDATE/DELETE statements leave the session's objects alone: the rows they change are either
# not in the session or read back by column queries.
_NO_SYNC = {"synchronize_session": False}


# Mailboxes.


def ensure_mailbox(session: Session, account_id: int, name: str) -> int:
    """The id of the account's mailbox with this name, created if missing (and then subscribed)."""
    found = mailbox_id(session, account_id, name)
    if found is not None:
        return found
    created = create_mailbox(session, account_id, name)
    return created if created is not None else session.scalars(_mailbox_id_query(account_id, name)).one()


def create_mailbox(session: Session, account_id: int, name: str) -> int | None:
    """Make the account's mailbox `name`, subscribed (as every mailbox was before IMAP could
    subscribe); its id, or None if it exists already (another writer may have just made it)."""
    mailbox = Mailbox(account_id=account_id, name=name)
    if not insert_once(session, mailbox):
        return None
    subscribe(session, account_id, name)
    return mailbox.id


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
        .where(Message.account_id == account_id)  # indexed: only this account's messages are counted
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


def delete_mailbox(session: Session, account_id: int, box: int) -> list[str]:
    """Delete the account's mailbox with its messages (their signal rows go with them); the paths of
    the removed messages, whose content the caller hands to discard_unnamed. Messages elsewhere
    that arrived in it or were destined for it (APPENDed there, then moved) lose that reference:
    the mailbox no longer counts in reputation. Its subscription stays (RFC 9051 6.3.7: a server
    does not drop a subscription on its own)."""
    removed = session.execute(
        delete(Message)
        .where(Message.account_id == account_id, Message.mailbox_id == box)
        .returning(Message.path),
        execution_options=_NO_SYNC,
    )
    paths = [str(path) for path in removed.scalars()]
    came_from = select(Message.id, Message.junk, Message.notjunk).where(Message.mailbox_orig_id == box)
    states = [
        SignalState(row_id, None, junk, notjunk) for row_id, junk, notjunk in session.execute(came_from)
    ]
    for column in (Message.mailbox_orig_id, Message.mailbox_destined_id):
        session.execute(
            update(Message).where(column == box).values({column: None}), execution_options=_NO_SYNC
        )
    resync_signals(session, states)
    session.execute(
        delete(Mailbox).where(Mailbox.id == box, Mailbox.account_id == account_id), execution_options=_NO_SYNC
    )
    return paths


def rename_mailboxes(session: Session, account_id: int, names: dict[str, str]) -> None:
    """Give the account's mailboxes new names (old -> new; the caller checked that no new name is
    taken), their subscriptions following them. They keep their ids, messages and UIDs."""
    for table in (Mailbox, MailboxSubscription):
        for old, new in names.items():
            session.execute(
                update(table).where(table.account_id == account_id, table.name == old).values(name=new),
                execution_options=_NO_SYNC,
            )


def subscribe(session: Session, account_id: int, name: str) -> None:
    """Put the name on the account's subscription list (once)."""
    if session.scalar(_subscription_query(account_id, name)) is None:
        insert_once(session, MailboxSubscription(account_id=account_id, name=name))


def unsubscribe(session: Session, account_id: int, name: str) -> bool:
    """Take the name off the account's subscription list; whether it was on it."""
    statement = delete(MailboxSubscription).where(
        MailboxSubscription.account_id == account_id, MailboxSubscription.name == name
    )
    return bool(affected_rows(session.execute(statement, execution_options=_NO_SYNC)))


def subscriptions(session: Session, account_id: int) -> list[str]:
    """The names on the account's subscription list, sorted (some may name no mailbox any more)."""
    query = (
        select(MailboxSubscription.name)
        .where(MailboxSubscription.account_id == account_id)
        .order_by(MailboxSubscription.name)
    )
    return list(session.scalars(query))


def _subscription_query(account_id: int, name: str) -> Select[int]:
    return select(MailboxSubscription.id).where(
        MailboxSubscription.account_id == account_id, MailboxSubscription.name == name
    )


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
    rows = with_uids(session, rows)
    # Core INSERTs on the session's connection (the ORM's bulk insert cost more than SQLite's work),
    # one per set of columns given: an executemany binds the same columns for every row.
    ids: list[int] = [0] * len(rows)
    alike: dict[frozenset[str], list[int]] = {}
    for index, row in enumerate(rows):
        alike.setdefault(frozenset(row), []).append(index)
    connection = session.connection()
    for indexes in alike.values():
        found = connection.execute(_INSERT_MESSAGES, [rows[i] for i in indexes]).scalars()
        for index, row_id in zip(indexes, found, strict=True):
            ids[index] = row_id
    return ids


_INSERT_MESSAGES = insert(Message.__table__).returning(Message.__table__.c.id, sort_by_parameter_order=True)


def with_uids(session: Session, rows: list[MessageRow]) -> list[MessageRow]:
    """The rows, each with the next IMAP UID of its mailbox (SPEC R8.2) in the rows' order, and the
    mailbox's new modification sequence (R8.3)."""
    counts: dict[int, int] = {}
    for row in rows:
        counts[row["mailbox_id"]] = counts.get(row["mailbox_id"], 0) + 1
    claimed = claim(session, counts)
    numbered = []
    for row in rows:
        first, modseq = claimed[row["mailbox_id"]]
        numbered.append({**row, "uid": first, "modseq": modseq})
        claimed[row["mailbox_id"]] = Claimed(first + 1, modseq)
    return numbered


class Claimed(NamedTuple):
    """What a transaction took of a mailbox: its first new UID and its new modification sequence."""

    uid: int
    modseq: int


def claim(session: Session, counts: dict[int, int]) -> dict[int, Claimed]:
    """For each mailbox (by id), `count` new UIDs and a new modification sequence: one UPDATE of each
    mailbox row, in id order, so two writers into the same mailboxes cannot deadlock.

    The UPDATE locks the mailbox's row until the caller commits, so concurrent writers into one
    mailbox take UIDs and modification sequences in turn and commit them in that order: a client
    never sees a UID appear below one it has seen (RFC 9051 2.3.1.1), nor a change committed with a
    modification sequence below one it has already read (SPEC R8.3)."""
    claimed = {}
    connection = session.connection()
    statement = _claim_statement(connection.dialect.name == "postgresql")
    for mailbox_id, count in sorted(counts.items()):
        uidnext, modseq = connection.execute(statement, {"b_id": mailbox_id, "b_count": count}).one()[:2]
        claimed[mailbox_id] = Claimed(int(uidnext) - count, int(modseq))
    return claimed


@cache
def _claim_statement(postgresql: bool) -> Any:
    """claim's UPDATE, built once (values bound at execution): the store runs it in every commit."""
    table = Mailbox.__table__.c
    returned: list[Any] = [table.uidnext, table.highestmodseq]
    if postgresql:  # in the same statement: no extra round trip
        returned.append(func.pg_notify(CHANGE_CHANNEL, cast(table.id, String)))
    return (
        update(Mailbox.__table__)
        .where(table.id == bindparam("b_id"))
        .values(uidnext=table.uidnext + bindparam("b_count"), highestmodseq=table.highestmodseq + 1)
        .returning(*returned)
    )


def holds_message(session: Session, mailbox_id: int, columns: MessageRow, *, rescued: bool = False) -> bool:
    """Whether the mailbox already has this message, found by Message-ID, or by the content's hash
    when the message has none. A retried reject is stored in Rejects once (SPEC R3.1). With `rescued`,
    only a message the user moved out of Rejects counts: a sender's retry of a message held with a
    451 finds it in the mailbox it was rescued to, and is not stored twice."""
    key = next((k for k in ("message_id", "content_hash") if columns.get(k)), None)
    if key is None:
        return False
    values = {"b_mailbox": mailbox_id, "b_key": columns[key]}
    return session.connection().execute(holding_query(key, rescued), values).first() is not None


@cache
def holding_query(key: str, rescued: bool) -> Select[Any]:
    """holds_message's statement, built once (its values bound at execution): the store asks it for
    every message it commits, and building it cost more than SQLite's own work. (Tests check its
    query plan.)"""
    table = Message.__table__.c
    query = select(table.id).where(
        table.mailbox_id == bindparam("b_mailbox"), table[key] == bindparam("b_key")
    )
    if rescued:  # the partial index of rescued messages: see RESCUED
        query = query.where(RESCUED)
    return query.limit(1)


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
    """The names of the message's mailbox, the one it arrived in (`mailbox_orig`) and, for a reject,
    the one it would have gone to (`mailbox_destined`). (Its account's name is app/accounts.py's.)"""
    orig, destined = aliased(Mailbox), aliased(Mailbox)
    names = session.execute(
        select(Mailbox.name, orig.name, destined.name)
        .select_from(Message)
        .join(Mailbox, Mailbox.id == Message.mailbox_id)
        .outerjoin(orig, orig.id == Message.mailbox_orig_id)
        .outerjoin(destined, destined.id == Message.mailbox_destined_id)
        .where(Message.id == row_id)
    ).one()
    return dict(zip(("mailbox", "mailbox_orig", "mailbox_destined"), names, strict=True))


def other_copies(session: Session, file_id: str) -> list[str]:
    """The file ids of the other mailboxes' copies stored by the same SMTP transaction (the first
    copy has the transaction's id, the others that id with "-2", "-3"...: files.copy_file_ids)."""
    transaction_id = file_id.partition("-")[0]
    same = or_(Message.file_id == transaction_id, Message.file_id.like(f"{transaction_id}-%"))
    query = select(Message.file_id).where(same, Message.file_id != file_id).order_by(Message.id)
    return list(session.scalars(query))


def report_messages(session: Session, since: datetime, until: datetime) -> list[tuple[str, bool]]:
    """(file id, holds a TLS report) of the messages marked as a reporting address's copy of a valid
    report (app/verdict/reports.py) received in [since, until), oldest first: the sweep for lost
    parse hand-offs (app/inreports/intake.py) reads them."""
    marked = or_(Message.is_dmarc_report.is_(True), Message.is_tls_report.is_(True))
    query = (
        select(Message.file_id, Message.is_tls_report)
        .where(Message.received >= since, Message.received < until, marked)
        .order_by(Message.received, Message.id)
    )
    return [(file_id, bool(tls)) for file_id, tls in session.execute(query)]


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
    found = session.connection().execute(destination_query(), {"b_account": account, "b_mailbox": mailbox})
    row = found.first()
    return None if row is None else (row[0], row[1])


@cache
def destination_query() -> Select[Any]:
    """destination_ids's statement, built once (values bound at execution: `b_account`, the account
    name, and `b_mailbox`): reputation selects more columns with it (one statement per message)."""
    # A local import: app/accounts.py (the owner of account rows) makes mailboxes through this module.
    from app.accounts import account_id_subquery

    table = Mailbox.__table__.c
    return select(table.account_id, table.id).where(
        table.account_id == account_id_subquery(bindparam("b_account")), table.name == bindparam("b_mailbox")
    )


def from_addresses(session: Session, row_ids: Sequence[int]) -> list[str]:
    """The From addresses of these messages (by row id; reputation asks for at most a few dozen)."""
    query = select(Message.msg_from).where(Message.id.in_(row_ids), Message.msg_from.is_not(None))
    return [address for address in session.scalars(query) if address]


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


# IMAP reads (app/imap/): a mailbox's UID state, its UIDs in order (message sequence numbers are
# positions in that list), and the rows of some of its messages. Every read names the account.


class UidState(NamedTuple):
    mailbox_id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int


def uid_state(session: Session, account_id: int, name: str) -> UidState | None:
    """The account's mailbox `name` with its UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ; None if it has none."""
    query = select(Mailbox.id, Mailbox.uidvalidity, Mailbox.uidnext, Mailbox.highestmodseq).where(
        Mailbox.account_id == account_id, Mailbox.name == name
    )
    found = session.execute(query).one_or_none()
    return None if found is None else UidState(*found)


def count_deleted(session: Session, mailbox_id: int) -> int:
    """How many of the mailbox's messages are flagged deleted (IMAP STATUS DELETED)."""
    query = select(func.count(Message.id)).where(Message.mailbox_id == mailbox_id, Message.deleted.is_(True))
    return int(session.scalar(query) or 0)


def mailbox_uids(session: Session, mailbox_id: int) -> list[int]:
    """The UIDs of the mailbox's messages, ascending (one index range scan: uq_messages_mailbox_uid)."""
    return list(
        session.scalars(select(Message.uid).where(Message.mailbox_id == mailbox_id).order_by(Message.uid))
    )


def mailbox_files(session: Session, mailbox_id: int) -> list[tuple[int, str, int]]:
    """(UID, path, size) of the mailbox's messages, ascending by UID: what never changes while a
    message stays in a mailbox (a move or copy gives it a new UID), so IMAP keeps it for the view."""
    query = select(Message.uid, Message.path, Message.size).where(Message.mailbox_id == mailbox_id)
    return [
        (int(uid), str(path), int(size)) for uid, path, size in session.execute(query.order_by(Message.uid))
    ]


class MailboxChanges(NamedTuple):
    """What changed in a mailbox after a modification sequence (changes_since)."""

    highestmodseq: int
    uids: list[int]  # all of its UIDs now, ascending
    changed: list[MessageRow]  # the messages that entered it or changed flags after it, by UID


def changes_since(session: Session, account_id: int, mailbox_id: int, modseq: int) -> MailboxChanges | None:
    """What changed in the account's mailbox after `modseq` (SPEC R8.3); None if nothing did (or it
    is gone). An unchanged mailbox costs one read of its row; a changed one two index range scans
    (its UIDs; its messages by modification sequence)."""
    query = select(Mailbox.highestmodseq).where(Mailbox.id == mailbox_id, Mailbox.account_id == account_id)
    highest = session.scalar(query)
    if highest is None or highest <= modseq:
        return None
    # Only changes up to the value read: one committed since is read at the next look, never lost
    # (on PostgreSQL each statement sees the commits made before it began).
    changed = (
        select(*Message.__table__.columns)
        .where(Message.mailbox_id == mailbox_id, Message.modseq > modseq, Message.modseq <= highest)
        .order_by(Message.uid)
    )
    rows = _plain_rows(session, changed)
    return MailboxChanges(int(highest), mailbox_uids(session, mailbox_id), rows)


# The IMAP row reads, built once with bound parameters: building a select of every column costs more
# than running it when a FETCH names one message.
_MAILBOX_ROWS = (
    select(*Message.__table__.columns)
    .where(Message.account_id == bindparam("account_id"), Message.mailbox_id == bindparam("mailbox_id"))
    .order_by(Message.uid)
)
_ROWS_BY_UID = _MAILBOX_ROWS.where(Message.uid.in_(bindparam("uids", expanding=True)))


def messages_by_uid(
    session: Session, account_id: int, mailbox_id: int, uids: Sequence[int]
) -> list[MessageRow]:
    """The rows of the account's messages in the mailbox with these UIDs, by UID (missing ones left out)."""
    parameters = {"account_id": account_id, "mailbox_id": mailbox_id, "uids": list(uids)}
    return _plain_rows(session, _ROWS_BY_UID, parameters)


def flag_tuples(
    session: Session, account_id: int, mailbox_id: int, uids: tuple[int, int], flags: Sequence[str]
) -> list[tuple[Any, ...]]:
    """(uid, modseq, *flags) of the account's messages in the mailbox with UIDs in the inclusive
    range `uids`, by UID; `flags` names the flag columns wanted, in order. Plain tuples of a few
    columns: IMAP FETCH 1:* FLAGS reads every row of a large mailbox, and whole-row dicts cost
    several times as much."""
    columns = [Message.__table__.columns[name] for name in flags]  # KeyError for a name not a column
    query = (
        select(Message.uid, Message.modseq, *columns)
        .where(
            Message.account_id == account_id,
            Message.mailbox_id == mailbox_id,
            Message.uid.between(uids[0], uids[1]),
        )
        .order_by(Message.uid)
    )
    return [tuple(row) for row in session.execute(query)]


def mailbox_messages(
    session: Session, account_id: int, mailbox_id: int, columns: Sequence[str] | None = None
) -> list[MessageRow]:
    """Every message of the account's mailbox, by UID (IMAP SEARCH looks at all of them); with
    `columns`, only those (KeyError for a name not a column): a SEARCH tests a few of them."""
    query = _MAILBOX_ROWS
    if columns is not None:
        query = query.with_only_columns(*(Message.__table__.columns[name] for name in columns))
    return _plain_rows(session, query, {"account_id": account_id, "mailbox_id": mailbox_id})


def _plain_rows(
    session: Session, query: Select[Any], parameters: dict[str, Any] | None = None
) -> list[MessageRow]:
    """The rows as MessageRows without making ORM objects (IMAP reads thousands at a time), through
    the session's connection: the ORM's execute path costs as much as the query for one row."""
    session.flush()  # what session.execute's autoflush would have done
    result = session.connection().execute(query, parameters or {})
    keys = list(result.keys())  # zipped with each row: a RowMapping per row costs twice as much
    return [dict(zip(keys, row, strict=True)) for row in result]


def expunge_deleted(
    session: Session, account_id: int, mailbox_id: int, uids: Sequence[int] | None = None
) -> list[tuple[int, str]]:
    """Delete the account's messages in the mailbox that are flagged deleted (IMAP EXPUNGE; with
    `uids`, only those: UID EXPUNGE; their signal rows go with them: ON DELETE CASCADE); the (UID,
    path) of each. The caller hands the paths to discard_unnamed in the same transaction: a file
    goes after the commit (a crash in between leaves a file no row names, never a row without its
    file), content in the database with the rows.
    The mailbox gets a new modification sequence when one goes (SPEC R8.3)."""
    doomed = and_(
        Message.account_id == account_id, Message.mailbox_id == mailbox_id, Message.deleted.is_(True)
    )
    if uids is not None:
        doomed = and_(doomed, Message.uid.in_(uids))
    if session.scalar(select(Message.id).where(doomed).limit(1)) is None:
        return []
    claim(session, {mailbox_id: 0})
    statement = delete(Message).where(doomed)
    rows = session.execute(statement.returning(Message.uid, Message.path), execution_options=_NO_SYNC)
    return [(int(uid), str(path)) for uid, path in rows]


def uids_of(session: Session, row_ids: Sequence[int]) -> dict[int, int]:
    """The UID of each of these messages, by row id (what a COPY or APPEND gave them)."""
    query = select(Message.id, Message.uid).where(Message.id.in_(row_ids))
    return {int(row_id): int(uid) for row_id, uid in session.execute(query)}


def modseqs_of(session: Session, row_ids: Sequence[int]) -> dict[int, int]:
    """The modseq of each of these messages, by row id (what a flag change gave them)."""
    query = select(Message.id, Message.modseq).where(Message.id.in_(row_ids))
    return {int(row_id): int(modseq) for row_id, modseq in session.execute(query)}


def unreferenced_paths(session: Session, paths: Sequence[str]) -> list[str]:
    """The paths no message row names (SPEC R8.2: a file goes only when no copy refers to it)."""
    named = set(session.scalars(select(Message.path).where(Message.path.in_(paths))))
    return [path for path in paths if path not in named]


def discard_unnamed(session: Session, content: StoredContent, paths: Sequence[str]) -> Callable[[], None]:
    """Remove the content of those of `paths` (of rows this transaction deleted) that no row names
    any more: in this transaction when it is in the database; what the caller calls after its
    commit, which unlinks the files, otherwise (app/store/content.py)."""
    return content.discard(session, unreferenced_paths(session, paths) if paths else [])


# Moving, copying and flagging messages (SPEC R3.3): every path that does (the CLI, the web, IMAP
# when built) calls these two, so the columns reputation reads change the same way in all of them.
# Nothing else changes a message's mailbox, `mailbox_orig_id`, `is_reject`, junk or notjunk.


class MailboxError(Exception):
    """A move or flag change that cannot be made (an unknown mailbox, a message not of the account);
    the message is meant for the user, as is."""


class MoveRules(NamedTuple):
    """What a move needs beyond the rows: the names of the account's Junk and Rejects mailboxes
    (their flag rules) and where message content is, where a copy gets content of its own."""

    junk: str
    rejects: str
    content: StoredContent

    @classmethod
    def of(cls, config: Config, account: str) -> MoveRules:
        """The rules of an account in the config (KeyError for one that is not)."""
        settings = config.accounts[account]
        return cls(settings.junk_mailbox, settings.rejects_mailbox, stored_content(config))


def move_messages(
    session: Session,
    account_id: int,
    message_ids: Sequence[int],
    target: str,
    *,
    rules: MoveRules,
    copy: bool = False,
) -> list[int]:
    """Move the account's messages into its mailbox `target`, or with `copy` add a copy of each there
    (a row and its own content: a hard-linked file, or a copied row in the database); the ids of
    the moved rows or of the copies, in the order given.

    A reject that leaves its mailbox for another than Rejects becomes the delivery it would have
    been: `mailbox_orig_id` takes its `mailbox_destined_id` and it is no longer a reject, so
    reputation counts it for that mailbox. Into Junk sets junk; out of Junk or Rejects into another
    mailbox sets notjunk. A message already in `target` is left as it is (a copy is still made). A
    copy gets the original's signal rows with its own mailbox and flags: after a COPY and EXPUNGE
    out of Rejects, the copy is the one that counts in reputation."""
    target_id = mailbox_id(session, account_id, target)
    if target_id is None:
        known = ", ".join(mailbox_names(session, account_id)) or "none"
        raise MailboxError(f"no mailbox {target!r} (mailboxes: {known})")
    special = (mailbox_id(session, account_id, rules.junk), mailbox_id(session, account_id, rules.rejects))
    messages = _messages_of(session, account_id, message_ids)
    if copy:
        first = claim(session, {target_id: len(messages)})[target_id]
        copies = [
            _copy(
                session,
                m,
                _moved_columns(m, target_id, *special),
                rules.content,
                first._replace(uid=first.uid + n),
            )
            for n, m in enumerate(messages)
        ]
        copy_signals(session, [(m.id, state) for m, state in zip(messages, copies, strict=True)])
        return [state.message_id for state in copies]
    changes = [_moved_columns(m, target_id, *special) for m in messages]
    leaving = {m.mailbox_id for m, c in zip(messages, changes, strict=True) if c}
    entering = sum(1 for c in changes if c)
    # The mailboxes messages leave change too (IMAP clients there see them expunged: SPEC R8.3).
    claimed = claim(session, {**dict.fromkeys(leaving, 0), target_id: entering}) if entering else {}
    uid = claimed[target_id].uid if entering else 0
    for change in changes:
        if change:  # a message entering the target takes a new UID there, in the order given
            change |= {"uid": uid, "modseq": claimed[target_id].modseq}
            uid += 1
    changed = [_apply(m, c) for m, c in zip(messages, changes, strict=True)]
    _resync(session, messages, changed)
    return [m.id for m in messages]


# The flags set_flags takes beyond seen, junk and notjunk: IMAP's \Flagged, \Answered, \Draft, \Deleted.
IMAP_FLAGS = frozenset({"flagged", "answered", "draft", "deleted"})


def set_flags(
    session: Session,
    account_id: int,
    message_ids: Sequence[int],
    *,
    seen: bool | None = None,
    junk: bool | None = None,
    notjunk: bool | None = None,
    **imap_flags: bool | None,
) -> int:
    """Set or clear the flags given (None leaves one as it is) on the account's messages; how many
    messages changed. Junk and notjunk exclude each other: setting one clears the other.
    `imap_flags` are the IMAP system flags without a meaning for reputation (IMAP_FLAGS)."""
    if junk and notjunk:
        raise MailboxError("a message cannot be both junk and not junk")
    unknown = set(imap_flags) - IMAP_FLAGS
    if unknown:
        raise MailboxError(f"no flag {', '.join(sorted(unknown))}")
    flags = {"seen": seen, "junk": junk, "notjunk": notjunk, **imap_flags}
    if junk:
        flags["notjunk"] = False
    if notjunk:
        flags["junk"] = False
    wanted = {key: value for key, value in flags.items() if value is not None}
    messages = _messages_of(session, account_id, message_ids)
    # Each mailbox with a message whose flags change gets a new modification sequence (SPEC R8.3),
    # taken before the message rows change: mailbox row first, as every writer locks them.
    touched = {m.mailbox_id for m in messages if _differs(m, wanted)}
    claimed = claim(session, dict.fromkeys(touched, 0))
    changed = [
        _apply(m, {**wanted, "modseq": claimed[m.mailbox_id].modseq}) if m.mailbox_id in claimed else set()
        for m in messages
    ]
    _resync(session, messages, changed)
    return sum(1 for keys in changed if keys)


def unchanged_since(
    session: Session, account_id: int, mailbox_id: int, message_ids: Sequence[int], modseq: int
) -> list[int]:
    """Of these messages of the account's mailbox, the ids of those not changed after `modseq` (RFC
    7162 STORE UNCHANGEDSINCE). The mailbox row stays locked until the caller commits, and every
    writer locks it before changing the mailbox's messages (claim): none can change between this
    read and a set_flags in the same transaction."""
    session.execute(select(Mailbox.id).where(Mailbox.id == mailbox_id).with_for_update())
    query = select(Message.id).where(
        Message.id.in_(message_ids),
        Message.account_id == account_id,
        Message.mailbox_id == mailbox_id,
        Message.modseq <= modseq,
    )
    return list(session.scalars(query))


def _messages_of(session: Session, account_id: int, message_ids: Sequence[int]) -> list[Message]:
    """The messages with these ids, in the order given; every one must be the account's."""
    query = select(Message).where(Message.id.in_(message_ids), Message.account_id == account_id)
    found = {m.id: m for m in session.scalars(query)}
    missing = [str(i) for i in dict.fromkeys(message_ids) if i not in found]
    if missing:
        raise MailboxError(f"no message {', '.join(missing)} in this account")
    return [found[i] for i in dict.fromkeys(message_ids)]


def _moved_columns(
    message: Message, target_id: int, junk_id: int | None, rejects_id: int | None
) -> dict[str, Any]:
    """The columns that change when `message` goes from its mailbox to `target_id` (SPEC R3.3)."""
    if message.mailbox_id == target_id:
        return {}
    changes: dict[str, Any] = {"mailbox_id": target_id}
    if message.is_reject and message.mailbox_destined_id is not None and target_id != rejects_id:
        changes |= {"mailbox_orig_id": message.mailbox_destined_id, "is_reject": False}
    if target_id == junk_id:
        changes |= {"junk": True, "notjunk": False}
    elif message.mailbox_id in (junk_id, rejects_id) and target_id != rejects_id:
        changes |= {"junk": False, "notjunk": True}
    return changes


def _copy(
    session: Session, message: Message, changes: dict[str, Any], content: StoredContent, claimed: Claimed
) -> SignalState:
    """A copy of `message` with `changes` and the `claimed` UID and modification sequence, under a
    new file id naming a copy of its content (StoredContent.copy); its row id and what its signal
    rows copy."""
    # A local import: app/store/files.py imports this module, so this one cannot import it first.
    from app.store.files import message_path, new_file_id

    path = message_path(new_file_id())
    try:
        content.copy(session, message.path, path)
    except OSError as e:
        where = content.location(message.path)
        raise MailboxError(f"message {where} cannot be copied: {e.strerror}") from None
    row = {**_columns(message), **changes, "path": path, "file_id": path.rpartition("/")[2]}
    del row["id"]
    row |= {"uid": claimed.uid, "modseq": claimed.modseq}
    row_id = int(session.execute(insert(Message).returning(Message.id), [row]).scalar_one())
    return SignalState(row_id, row["mailbox_orig_id"], row["junk"], row["notjunk"])


def _differs(message: Message, changes: dict[str, Any]) -> bool:
    return any(getattr(message, key) != value for key, value in changes.items())


def _apply(message: Message, changes: dict[str, Any]) -> set[str]:
    """Set the columns `changes` gives; the names of those whose value changed."""
    changed = {key for key, value in changes.items() if getattr(message, key) != value}
    for key in changed:
        setattr(message, key, changes[key])
    return changed


def _resync(session: Session, messages: list[Message], changed: list[set[str]]) -> None:
    """Keep the signal rows of the messages whose copied columns `changed` in step (SignalState)."""
    states = [
        SignalState(m.id, m.mailbox_orig_id, m.junk, m.notjunk)
        for m, keys in zip(messages, changed, strict=True)
        if keys & {"mailbox_orig_id", "junk", "notjunk"}
    ]
    resync_signals(session, states)


# The cleanup of Rejects (SPEC R3.1): an hourly job keeps each account's Rejects mailbox to the
# configured age and count (`[rejects]`).

# Rows deleted per transaction: each commit is short, and the files of a batch are unlinked after it.
REJECTS_BATCH = 500


def remove_old_rejects(config: Config) -> int:
    """Remove from each configured account's Rejects mailbox the messages received more than
    `keep_days` ago, and the oldest beyond its newest `keep_max`; how many.

    Each batch of rows is deleted in its own transaction (a message's signal rows go with it: ON
    DELETE CASCADE; its content in the database too) and its files are unlinked after the commit: a
    crash in between leaves files no row names, never a row without its file."""
    url, settings = config.resolved_database_url, config.rejects
    cutoff = utcnow() - timedelta(days=settings.keep_days)
    removed = 0
    for account, account_settings in config.accounts.items():
        with session_scope(url) as session:
            box = _mailbox_of(session, account, account_settings.rejects_mailbox)
        if box is None:
            continue
        too_old = (
            select(Message.id)
            .where(Message.mailbox_id == box, Message.received < cutoff)
            .order_by(Message.received, Message.id)
        )
        # The newest `keep_max` are skipped; what follows them (newest first) is beyond the count.
        beyond = (
            select(Message.id)
            .where(Message.mailbox_id == box)
            .order_by(Message.received.desc(), Message.id.desc())
            .offset(settings.keep_max)
        )
        for query in (too_old, beyond):
            removed += _remove_in_batches(url, stored_content(config), box, query)
    if removed:
        log.info("rejects cleanup: removed %d message(s)", removed)
    return removed


def _mailbox_of(session: Session, account_name: str, name: str) -> int | None:
    """The id of the mailbox `name` of the account named `account_name`; None if either is missing."""
    ids = destination_ids(session, account_name, name)
    return None if ids is None else ids[1]


def _remove_in_batches(url: str, content: StoredContent, box: int, query: Select[int]) -> int:
    """Delete the rows `query` selects (still in mailbox `box`), a batch per transaction, with their
    content (discard_unnamed); how many."""
    removed = 0
    while True:
        with session_scope(url) as session:
            claim(session, {box: 0})  # IMAP clients of Rejects see the messages go (SPEC R8.3)
            batch = query.limit(REJECTS_BATCH).scalar_subquery()
            statement = delete(Message).where(Message.id.in_(batch), Message.mailbox_id == box)
            paths = list(session.scalars(statement.returning(Message.path), execution_options=_NO_SYNC))
            after_commit = discard_unnamed(session, content, paths)
        after_commit()
        removed += len(paths)
        if len(paths) < REJECTS_BATCH:
            return removed
