"""The MTA-STS policy cache (RFC 8461 §5.1, table `mtasts_policies`): the only module reading or writing it.

One row per recipient domain: the policy last fetched, the `_mta-sts` record id it was fetched for,
when it expires, and the last problem met (for operators). Which policy to apply, and when to fetch
or drop one, is decided in app/queue/mtasts.py; this module only stores what it is told.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from app.db import session_scope
from app.models.base import utcnow
from app.models.mtasts import MTASTSPolicy


@dataclass(frozen=True)
class CachedPolicy:
    """A cached policy as stored: `mode` and `mx` patterns (in policy order) as the policy said."""

    record_id: str
    mode: str
    max_age: int
    mx: tuple[str, ...]
    fetched: datetime
    expires: datetime

    @property
    def usable(self) -> bool:
        """Not expired: past `expires` the policy must not be used any more (§5.1)."""
        return self.expires > utcnow()


def cached_policy(db_url: str, domain: str) -> CachedPolicy | None:
    with session_scope(db_url) as session:
        row = session.scalar(select(MTASTSPolicy).where(MTASTSPolicy.domain == domain))
        if row is None:
            return None
        mx = tuple(p for p in row.mx.split("\n") if p)
        return CachedPolicy(row.record_id, row.mode, row.max_age, mx, row.fetched, row.expires)


def cached_domains(db_url: str) -> list[str]:
    """Every domain with a cached policy, in name order."""
    with session_scope(db_url) as session:
        return list(session.scalars(select(MTASTSPolicy.domain).order_by(MTASTSPolicy.domain)))


def save_policy(db_url: str, domain: str, record_id: str, mode: str, max_age: int, mx: Sequence[str]) -> None:
    """Insert or replace the domain's cached policy, fetched now."""
    try:
        _write_policy(db_url, domain, record_id, mode, max_age, mx)
    except IntegrityError:
        # Another worker inserted the row between our select and insert: update theirs.
        _write_policy(db_url, domain, record_id, mode, max_age, mx)


def _write_policy(
    db_url: str, domain: str, record_id: str, mode: str, max_age: int, mx: Sequence[str]
) -> None:
    with session_scope(db_url) as session:
        row = session.scalar(select(MTASTSPolicy).where(MTASTSPolicy.domain == domain))
        if row is None:
            row = MTASTSPolicy(domain=domain)
            session.add(row)
        now = utcnow()
        row.record_id, row.mode, row.max_age = record_id, mode, max_age
        row.mx = "\n".join(mx)
        row.fetched, row.checked, row.expires = now, now, now + timedelta(seconds=max_age)
        row.last_error = None


def note_error(db_url: str, domain: str, error: str) -> None:
    """Record a failed look at the domain's record or policy; the cached policy stays."""
    with session_scope(db_url) as session:
        row = session.scalar(select(MTASTSPolicy).where(MTASTSPolicy.domain == domain))
        if row is not None:
            row.checked, row.last_error = utcnow(), error


def delete_policy(db_url: str, domain: str) -> None:
    with session_scope(db_url) as session:
        session.execute(delete(MTASTSPolicy).where(MTASTSPolicy.domain == domain))
