"""Web login sessions, kept in the database so they can be ended: by logging out, by a password
change (every session of the account), by a new web secret (every session), or by age.

The cookie carries a random token; the row is found by HMAC-SHA256(secret, token). Each session has
its own CSRF token, which every form posted while logged in must carry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from app.db import affected_rows
from app.models import Account, WebSession

# A session ends a week after login, or after a day without a request.
MAX_AGE = timedelta(days=7)
IDLE_TIMEOUT = timedelta(days=1)
# last_seen is written at most this often, not on every page view.
TOUCH_INTERVAL = timedelta(minutes=5)
TOKEN_BYTES = 32


@dataclass(frozen=True)
class LoggedIn:
    account: str
    csrf_token: str
    account_id: int


def session_key(secret: str, token: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def start_session(session: Session, secret: str, account_id: int, now: datetime) -> str:
    """A new session for the account; returns the token for the cookie. Expired sessions are removed."""
    _prune(session, now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(
        WebSession(
            key=session_key(secret, token),
            account_id=account_id,
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            created=now,
            last_seen=now,
        )
    )
    return token


def current_session(session: Session, secret: str, token: str, now: datetime) -> LoggedIn | None:
    """The live session the cookie's token names, or None (unknown, ended or expired)."""
    key = session_key(secret, token)
    row = session.execute(
        select(WebSession, Account.name)
        .join(Account, Account.id == WebSession.account_id)
        .where(WebSession.key == key)
    ).first()
    if row is None:
        return None
    web_session, account = row
    if web_session.created <= now - MAX_AGE or web_session.last_seen <= now - IDLE_TIMEOUT:
        session.delete(web_session)
        return None
    if web_session.last_seen <= now - TOUCH_INTERVAL:
        session.execute(update(WebSession).where(WebSession.key == key).values(last_seen=now))
    return LoggedIn(account, web_session.csrf_token, web_session.account_id)


def end_session(session: Session, secret: str, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.key == session_key(secret, token)))


def end_account_sessions(session: Session, account_id: int) -> int:
    """End every session of the account (its password changed); returns how many there were."""
    result = session.execute(delete(WebSession).where(WebSession.account_id == account_id))
    return affected_rows(result)


def _prune(session: Session, now: datetime) -> None:
    session.execute(
        delete(WebSession).where(
            or_(WebSession.created <= now - MAX_AGE, WebSession.last_seen <= now - IDLE_TIMEOUT)
        )
    )
