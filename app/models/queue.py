"""The outgoing queue. Rows are the truth; the broker only carries wake-ups (DESIGN.md)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class OutgoingMessage(Base):
    __tablename__ = "outgoing"
    # A delivery run claims a domain's due rows oldest first: found in index order, not by a sort
    # of all the domain's rows. AUTOINCREMENT: SQLite would otherwise give a new row the id of the
    # last row deleted, and an id a user looked up (`queue show`, the delivery history) must name
    # one message only. (PostgreSQL's sequences never go back.)
    __table_args__ = (
        Index("ix_outgoing_domain_due", "recipient_domain", "next_attempt", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    sender: Mapped[str] = mapped_column(String(512))
    recipient: Mapped[str] = mapped_column(String(512))
    recipient_domain: Mapped[str] = mapped_column(String(255), index=True)
    # Rows of one message's recipients share its file; indexed to find a file's rows.
    path: Mapped[str] = mapped_column(String(512), index=True)
    size: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    last_error: Mapped[str | None] = mapped_column(Text)
    # None: policy decides; False: `TLS-Required: No` (RFC 8689).
    require_tls: Mapped[bool | None] = mapped_column(Boolean)
    is_dmarc_report: Mapped[bool] = mapped_column(Boolean, default=False)
    is_tls_report: Mapped[bool] = mapped_column(Boolean, default=False)
    # A worker that claimed the row holds it until `lease_until` (renewed while it makes progress);
    # an expired lease means the worker died, and the row is free for the next sweep.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutgoingContent(Base):
    """A queued message's content, where every node reaches it (`[storage] content = "database"`,
    SPEC R9.1): the rows of `outgoing` name it by `path`, as they name a file under the data dir
    otherwise (app/queue/content.py)."""

    __tablename__ = "outgoing_content"

    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    # The orphan sweep spares content younger than an hour (rows of it may still be committing).
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class SentRecipient(Base):
    """An address an account sent mail to (delivered), for reputation (SPEC R3.4 b, c)."""

    __tablename__ = "sent_recipients"
    __table_args__ = (
        UniqueConstraint("account_id", "address", name="uq_sent_recipients_account_address"),
        Index("ix_sent_recipients_account_domain", "account_id", "domain"),
        Index("ix_sent_recipients_account_org_domain", "account_id", "org_domain"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    # The localpart as sent, the domain lower-cased.
    address: Mapped[str] = mapped_column(String(512))
    domain: Mapped[str] = mapped_column(String(255))
    org_domain: Mapped[str] = mapped_column(String(255))
    first_sent: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_sent: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    count: Mapped[int] = mapped_column(Integer, default=1)


class DeliveryAttempt(Base):
    """One delivery attempt of one queue row: kept after the row is gone, for `queue show`, until
    `[delivery] history_days` have passed (app/queue/history.py)."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[int] = mapped_column(Integer, index=True)
    # The message file's id: the id the submission listener's 250 reply gave.
    file_id: Mapped[str] = mapped_column(String(64), index=True)
    attempted: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    recipient: Mapped[str] = mapped_column(String(512))
    # The relay that answered (None: no host was reached, e.g. the MX lookup failed).
    host: Mapped[str | None] = mapped_column(String(255))
    ip: Mapped[str | None] = mapped_column(String(64))
    tls: Mapped[str | None] = mapped_column(String(128))
    reply_code: Mapped[int | None] = mapped_column(Integer)
    reply: Mapped[str] = mapped_column(String(512))
    result: Mapped[str] = mapped_column(String(16))  # delivered, deferred or failed
