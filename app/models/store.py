"""Accounts, mailboxes and stored messages, with the received metadata reputation analysis needs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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
        # A retried reject is stored in Rejects only once (SPEC R3.1): looked up by Message-ID.
        Index("ix_messages_mailbox_message_id", "mailbox_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"))
    # The mailbox it was first stored in, and the one it would have gone to had it not been rejected.
    mailbox_orig_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))
    mailbox_destined_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))
    received: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    size: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))
    seen: Mapped[bool] = mapped_column(Boolean, default=False)
    junk: Mapped[bool] = mapped_column(Boolean, default=False)
    notjunk: Mapped[bool] = mapped_column(Boolean, default=False)
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
