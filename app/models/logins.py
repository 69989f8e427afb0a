"""What logins leave behind: failure counters for throttling, and web sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime


class LoginFailure(Base):
    """Recent failed logins of one account name (scope "account") or one address range ("network").

    Shared by every process that checks passwords (the forked SMTP workers, the web), so a guesser
    cannot spread attempts over processes. Rows quiet for a whole throttle window are deleted.
    """

    __tablename__ = "login_failures"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WebSession(Base):
    """A logged-in web session. The cookie holds a random token; the row is keyed by an HMAC of it
    with the web secret, so a copy of the table logs no one in and a new secret ends every session."""

    __tablename__ = "web_sessions"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
