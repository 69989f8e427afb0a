"""The outgoing queue. Rows are the truth; the broker only carries wake-ups (DESIGN.md)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class OutgoingMessage(Base):
    __tablename__ = "outgoing"

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
