"""Queue operations on the outgoing table."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import OutgoingMessage
from app.models.base import utcnow


def count_due(session: Session) -> int:
    """Messages whose next attempt time has come."""
    query = select(func.count()).select_from(OutgoingMessage).where(OutgoingMessage.next_attempt <= utcnow())
    return session.scalar(query) or 0


def queue_size(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OutgoingMessage)) or 0
