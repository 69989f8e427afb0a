"""Cached MTA-STS policies (RFC 8461 §5), one row per recipient domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class MTASTSPolicy(Base):
    __tablename__ = "mtasts_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    # The `id=` of the `_mta-sts` TXT record the policy was fetched for: a new id means re-fetch.
    record_id: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16), index=True)
    max_age: Mapped[int] = mapped_column(Integer)
    # The policy's `mx` patterns, one per line, in policy order.
    mx: Mapped[str] = mapped_column(Text, default="")
    fetched: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # fetched + max_age: past this the policy must not be used any more (RFC 8461 §5.1).
    expires: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Last time the TXT record was looked at or a fetch tried, and the last failure (for operators).
    checked: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
