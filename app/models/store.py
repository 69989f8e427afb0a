"""Accounts, mailboxes and stored messages, with the received metadata reputation analysis needs."""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Mailbox(Base):
    __tablename__ = "mailboxes"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_mailboxes_account_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    # IMAP (SPEC R8.2): a message entering the mailbox takes `uidnext` as its UID and raises it, so
    # UIDs only grow; `uidvalidity` tells clients whether UIDs they cached still mean the same
    # messages (a mailbox made again under an old name gets a new one: the time it was made).
    uidvalidity: Mapped[int] = mapped_column(BigInteger, default=lambda: new_uidvalidity())
    uidnext: Mapped[int] = mapped_column(Integer, default=1)
    # IMAP live updates and CONDSTORE (SPEC R8.3, RFC 7162): raised by one in every transaction that
    # changes the mailbox's messages (one arriving, leaving, or changing its flags); the messages that
    # changed take the new value as their `modseq`.
    highestmodseq: Mapped[int] = mapped_column(BigInteger, default=1)


class MailboxSubscription(Base):
    """A name on an account's IMAP subscription list (RFC 9051 6.3.7). Names, not mailbox rows: a
    subscription outlives the mailbox it named (the server must not drop it unilaterally)."""

    __tablename__ = "mailbox_subscriptions"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_mailbox_subscriptions_account_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))


def new_uidvalidity() -> int:
    """The UIDVALIDITY of a mailbox made now: seconds since the epoch (non-zero, below 2**32)."""
    return max(1, int(time.time()) % 2**32)


# A message the user moved out of Rejects (it names the mailbox it was destined for, and is no longer a
# reject). Queries that should use the partial indexes below repeat this text word for word: SQLite
# uses a partial index only when it can match the query's terms to the index's WHERE.
RESCUED = text("mailbox_destined_id IS NOT NULL AND NOT is_reject")


class Message(Base):
    """One message stored in a mailbox. The file lives under the data dir at `path`; the row is the index."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_mailbox_received", "mailbox_id", "received"),
        # Reputation lookups (SPEC R3.4) go by destination mailbox, newest first.
        Index("ix_messages_orig_from", "mailbox_orig_id", "msg_from", "received"),
        Index("ix_messages_orig_from_domain", "mailbox_orig_id", "msg_from_domain", "received"),
        Index("ix_messages_orig_ip", "mailbox_orig_id", "remote_ip", "received"),
        Index("ix_messages_received", "received"),
        # A retried reject is stored in Rejects only once (SPEC R3.1): looked up by Message-ID, or by
        # the content's hash for a message without one.
        Index("ix_messages_mailbox_message_id", "mailbox_id", "message_id"),
        Index("ix_messages_mailbox_content_hash", "mailbox_id", "content_hash"),
        # ... and a sender's retry of a message rescued from Rejects is not stored twice: looked up among
        # the rescued messages only. The index above would walk every earlier copy with that
        # Message-ID, a cost the sender chooses (one Message-ID on every message it sends).
        Index(
            "ix_messages_rescued_message_id",
            "mailbox_id",
            "message_id",
            sqlite_where=RESCUED,
            postgresql_where=RESCUED,
        ),
        Index(
            "ix_messages_rescued_content_hash",
            "mailbox_id",
            "content_hash",
            sqlite_where=RESCUED,
            postgresql_where=RESCUED,
        ),
        # IMAP sequence numbers are the mailbox's messages in UID order (SPEC R8.2).
        Index("uq_messages_mailbox_uid", "mailbox_id", "uid", unique=True),
        # What changed in a mailbox since a modification sequence (SPEC R8.3: IDLE, NOOP, CONDSTORE).
        Index("ix_messages_mailbox_modseq", "mailbox_id", "modseq"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"))
    # Its IMAP UID in that mailbox (Mailbox.uidnext when it entered it; a move gives it a new one).
    uid: Mapped[int] = mapped_column(Integer)
    # Its mailbox's `highestmodseq` when it entered the mailbox or its flags last changed.
    modseq: Mapped[int] = mapped_column(BigInteger)
    # The mailbox it was first stored in, and the one it would have gone to had it not been rejected.
    mailbox_orig_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))
    mailbox_destined_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))
    received: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    size: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))
    seen: Mapped[bool] = mapped_column(Boolean, default=False)
    junk: Mapped[bool] = mapped_column(Boolean, default=False)
    notjunk: Mapped[bool] = mapped_column(Boolean, default=False)
    # IMAP system flags beyond \Seen (RFC 9051 2.3.2); junk and notjunk are $Junk and $NotJunk.
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    answered: Mapped[bool] = mapped_column(Boolean, default=False)
    draft: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    is_reject: Mapped[bool] = mapped_column(Boolean, default=False)
    is_dmarc_report: Mapped[bool] = mapped_column(Boolean, default=False)
    is_tls_report: Mapped[bool] = mapped_column(Boolean, default=False)
    # How it came in.
    remote_ip: Mapped[str | None] = mapped_column(String(64))
    ehlo: Mapped[str | None] = mapped_column(String(255))
    mail_from: Mapped[str | None] = mapped_column(String(512))
    mail_from_domain: Mapped[str | None] = mapped_column(String(255))
    rcpt_to: Mapped[str | None] = mapped_column(String(512))
    msg_from: Mapped[str | None] = mapped_column(String(512))
    msg_from_domain: Mapped[str | None] = mapped_column(String(255))
    msg_from_org_domain: Mapped[str | None] = mapped_column(String(255))
    message_id: Mapped[str | None] = mapped_column(String(998))
    # SHA-256 of the content as received (hex): identifies a retried message that has no Message-ID.
    content_hash: Mapped[str | None] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(Text)
    # What we concluded: verified domains (space separated) and results.
    dkim_domains: Mapped[str | None] = mapped_column(Text)
    spf_mailfrom_validated: Mapped[bool] = mapped_column(Boolean, default=False)
    ehlo_validated: Mapped[bool] = mapped_column(Boolean, default=False)
    msg_from_validated: Mapped[bool] = mapped_column(Boolean, default=False)
    spf_result: Mapped[str | None] = mapped_column(String(32))
    dkim_result: Mapped[str | None] = mapped_column(String(32))
    dmarc_result: Mapped[str | None] = mapped_column(String(32))
    dmarc_disposition: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(64))


class MessageContent(Base):
    """A stored message's content, where every node reaches it (`[storage] content = "database"`, SPEC
    R9.1): the rows of `messages` name it by `path`, as they name a file under the data dir otherwise
    (app/store/content.py). No foreign key: a copy's row and its content are added together, and
    content goes with the last row that names it, in that row's transaction."""

    __tablename__ = "message_content"

    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class MessageSignal(Base):
    """One identifying signal of a stored message, for reputation analysis (SPEC R3.4).

    A message has one row per signal: its From address (kind `from`, or `from-unvalidated` when DMARC
    did not validate it), From domain (`domain`), organizational domain (`orgdomain`), each verified
    DKIM domain (`dkim`), its SPF-validated MAIL FROM domain (`spf`) and EHLO name (`ehlo`), and its
    IP masked three ways (`ip1`, `ip2`, `ip3`: /32 /26 /21 for IPv4, /64 /48 /32 for IPv6).

    The mailbox and the junk/notjunk flags are copies of the message's own, kept in step by the store
    whenever a move or flag change touches them, so that each reputation step is one range scan of a
    partial index holding only flagged messages: its cost does not grow with the mailbox.
    """

    __tablename__ = "message_signals"
    __table_args__ = (
        Index(
            "ix_message_signals_history",
            "mailbox_orig_id",
            "kind",
            "value",
            "received",
            sqlite_where=text("junk OR notjunk"),
            postgresql_where=text("junk OR notjunk"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    mailbox_orig_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))
    kind: Mapped[str] = mapped_column(String(24))
    value: Mapped[str] = mapped_column(String(512))
    received: Mapped[datetime] = mapped_column(UTCDateTime)
    junk: Mapped[bool] = mapped_column(Boolean, default=False)
    notjunk: Mapped[bool] = mapped_column(Boolean, default=False)
