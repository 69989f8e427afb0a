"""Queue operations on the outgoing table: enqueue, claim with a lease, outcomes, retry, drop, list.

The rows are the truth (DESIGN.md). A delivery run claims rows by writing its own lease owner and
an expiry into them with one UPDATE whose WHERE re-checks that they are due and free, so two workers
never hold the same row; a worker that dies leaves a lease that simply expires. Every outcome is
written only while the lease is still ours.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Literal

from publicsuffixlist import PublicSuffixList
from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.config import Config
from app.db import session_scope, upsert_insert
from app.models import OutgoingMessage, SentRecipient
from app.models.base import utcnow
from app.store import new_file_id, outgoing_path

# At most this many due rows are looked at per sweep; the next sweep takes the rest.
SWEEP_SCAN_LIMIT = 50_000


def count_due(session: Session) -> int:
    """Messages whose next attempt time has come and that no worker holds."""
    query = select(func.count()).select_from(OutgoingMessage).where(*_due_and_free(utcnow()))
    return session.scalar(query) or 0


def queue_size(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OutgoingMessage)) or 0


def _due_and_free(now: datetime) -> tuple[ColumnElement[bool], ...]:
    free = or_(OutgoingMessage.lease_until.is_(None), OutgoingMessage.lease_until < now)
    return (OutgoingMessage.next_attempt <= now, free)


# Enqueueing (for jobs that create mail, e.g. reports; the submission listener queues through its store).


def enqueue(
    session: Session,
    config: Config,
    content: bytes,
    *,
    sender: str,
    recipients: Sequence[str],
    account_id: int | None = None,
    next_attempt: datetime | None = None,
    max_attempts: int | None = None,
    is_dmarc_report: bool = False,
    is_tls_report: bool = False,
) -> list[int]:
    """Write the message file durably, then add one row per recipient in the caller's transaction.

    The rows become visible with the caller's commit, so a job can mark its work done and queue the
    mail atomically. A rollback or crash before that commit leaves only an unreferenced file.
    """
    relative = outgoing_path(new_file_id())
    _write_durably(config.data_dir / relative, content)
    rows = [
        OutgoingMessage(
            account_id=account_id,
            sender=sender,
            recipient=recipient,
            recipient_domain=recipient.rpartition("@")[2].lower(),
            path=relative,
            size=len(content),
            next_attempt=next_attempt or utcnow(),
            max_attempts=max_attempts or config.delivery.max_attempts,
            is_dmarc_report=is_dmarc_report,
            is_tls_report=is_tls_report,
        )
        for recipient in recipients
    ]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def enqueue_report(
    session: Session,
    config: Config,
    *,
    message: bytes,
    sender: str,
    recipients: Sequence[str],
    kind: Literal["dmarc", "tls"],
    due: datetime | None = None,
    max_attempts: int | None = None,
) -> list[int]:
    """Queue a DMARC or TLS report message (R2.6, R5.3): its failure DSN goes to the postmaster."""
    return enqueue(
        session,
        config,
        message,
        sender=sender,
        recipients=recipients,
        next_attempt=due,
        max_attempts=max_attempts,
        is_dmarc_report=kind == "dmarc",
        is_tls_report=kind == "tls",
    )


def _write_durably(path: Path, content: bytes) -> None:
    """Write and fsync the file and its directory entry, so a committed row never points at nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# Claiming and leases.


def claim_batch(
    session: Session, queue_id: int, *, lease: timedelta, batch_size: int, now: datetime | None = None
) -> list[OutgoingMessage]:
    """Claim the row and up to `batch_size - 1` more due rows for the same recipient domain.

    Empty if the row is gone, not due, or held by another worker (a repeated or stale wake-up).
    Commits, so the lease is visible to other workers before any delivery starts.
    """
    now = now or utcnow()
    owner = secrets.token_hex(8)
    values = {"lease_owner": owner, "lease_until": now + lease}
    first = update(OutgoingMessage).where(OutgoingMessage.id == queue_id, *_due_and_free(now)).values(values)
    if not session.execute(first).rowcount:
        session.commit()
        return []
    if batch_size > 1:
        domain = select(OutgoingMessage.recipient_domain).where(OutgoingMessage.id == queue_id)
        # SKIP LOCKED (PostgreSQL; SQLite serializes writers anyway) keeps concurrent claimers from
        # waiting on, or deadlocking over, the same rows; the outer WHERE re-checks each row.
        candidates = (
            select(OutgoingMessage.id)
            .where(OutgoingMessage.recipient_domain == domain.scalar_subquery(), *_due_and_free(now))
            .order_by(OutgoingMessage.next_attempt, OutgoingMessage.id)
            .limit(batch_size - 1)
            .with_for_update(skip_locked=True)
        )
        more = update(OutgoingMessage).where(
            OutgoingMessage.id.in_(candidates.scalar_subquery()), *_due_and_free(now)
        )
        session.execute(more.values(values))
    session.commit()
    held = select(OutgoingMessage).where(OutgoingMessage.lease_owner == owner).order_by(OutgoingMessage.id)
    return list(session.scalars(held))


def renew_lease(session: Session, rows: Sequence[OutgoingMessage], lease: timedelta) -> None:
    """Push the lease of rows still held further out (the run is making progress)."""
    owners = {r.lease_owner for r in rows}
    until = utcnow() + lease
    statement = update(OutgoingMessage).where(OutgoingMessage.lease_owner.in_(owners))
    session.execute(statement.values(lease_until=until))


def _ours(row: OutgoingMessage) -> ColumnElement[bool]:
    return (OutgoingMessage.id == row.id) & (OutgoingMessage.lease_owner == row.lease_owner)


def finish(session: Session, row: OutgoingMessage) -> bool:
    """Remove a row that is done (delivered, or failed for good); False if the lease was lost."""
    return bool(session.execute(delete(OutgoingMessage).where(_ours(row))).rowcount)


def postpone(session: Session, row: OutgoingMessage, error: str, next_attempt: datetime) -> bool:
    """Count a failed attempt and free the row until `next_attempt`; False if the lease was lost."""
    statement = (
        update(OutgoingMessage)
        .where(_ours(row))
        .values(
            attempts=OutgoingMessage.attempts + 1,
            last_attempt=utcnow(),
            last_error=error[:2000],
            next_attempt=next_attempt,
            lease_owner=None,
            lease_until=None,
        )
    )
    return bool(session.execute(statement).rowcount)


def release(session: Session, rows: Sequence[OutgoingMessage]) -> None:
    """Give rows back untouched (the run stopped before trying them)."""
    for row in rows:
        session.execute(update(OutgoingMessage).where(_ours(row)).values(lease_owner=None, lease_until=None))


def remove_unreferenced_files(config: Config, paths: set[str]) -> None:
    """Delete message files no queue row points at any more. Run after the deleting commit, so two
    workers finishing rows of one file concurrently both see the final state."""
    if not paths:
        return
    with session_scope(config.resolved_database_url) as session:
        referenced = select(OutgoingMessage.path).where(OutgoingMessage.path.in_(paths)).distinct()
        still_used = set(session.scalars(referenced))
    for path in paths - still_used:
        (config.data_dir / path).unlink(missing_ok=True)


# The sweep.


def due_wakeups(session: Session, batch_size: int, now: datetime | None = None) -> list[int]:
    """One row id per batch of due, free rows of a recipient domain: what the sweep wakes workers for."""
    now = now or utcnow()
    query = (
        select(OutgoingMessage.id, OutgoingMessage.recipient_domain)
        .where(*_due_and_free(now))
        .order_by(OutgoingMessage.next_attempt, OutgoingMessage.id)
        .limit(SWEEP_SCAN_LIMIT)
    )
    seen: dict[str, int] = {}
    wakeups = []
    for queue_id, domain in session.execute(query):
        count = seen.get(domain, 0)
        if count % batch_size == 0:
            wakeups.append(queue_id)
        seen[domain] = count + 1
    return wakeups


# Operator commands.


def list_rows(session: Session, ids: Sequence[int] = ()) -> list[OutgoingMessage]:
    query = select(OutgoingMessage).order_by(OutgoingMessage.next_attempt, OutgoingMessage.id)
    if ids:
        query = query.where(OutgoingMessage.id.in_(ids))
    return list(session.scalars(query))


def retry_now(session: Session, ids: Sequence[int] = ()) -> list[int]:
    """Make rows due now (all rows when `ids` is empty); rows a worker holds are left alone."""
    now = utcnow()
    free = or_(OutgoingMessage.lease_until.is_(None), OutgoingMessage.lease_until < now)
    query = select(OutgoingMessage.id).where(free)
    if ids:
        query = query.where(OutgoingMessage.id.in_(ids))
    chosen = list(session.scalars(query))
    if chosen:
        session.execute(
            update(OutgoingMessage).where(OutgoingMessage.id.in_(chosen)).values(next_attempt=now)
        )
    return chosen


def drop(session: Session, ids: Sequence[int]) -> tuple[list[int], set[str]]:
    """Delete rows no worker holds, without a DSN; (dropped ids, their file paths)."""
    now = utcnow()
    free = or_(OutgoingMessage.lease_until.is_(None), OutgoingMessage.lease_until < now)
    rows = session.execute(
        select(OutgoingMessage.id, OutgoingMessage.path).where(OutgoingMessage.id.in_(ids), free)
    ).all()
    dropped = [queue_id for queue_id, _ in rows]
    if dropped:
        session.execute(delete(OutgoingMessage).where(OutgoingMessage.id.in_(dropped)))
    return dropped, {path for _, path in rows}


# Recipients our users sent to (SPEC R3.4 b, c).


def record_sent_recipient(session: Session, account_id: int, address: str) -> None:
    """Count a delivery by the account to `address` (one row per account and address)."""
    local, _, domain = address.rpartition("@")
    domain = domain.lower()
    now = utcnow()
    table = SentRecipient.__table__
    statement = (
        upsert_insert(session, table)
        .values(
            account_id=account_id,
            address=f"{local}@{domain}",
            domain=domain,
            org_domain=organisational_domain(domain),
            first_sent=now,
            last_sent=now,
            count=1,
        )
        .on_conflict_do_update(
            index_elements=["account_id", "address"],
            set_={"last_sent": now, "count": table.c.count + 1},
        )
    )
    session.execute(statement)


@cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # parsing the list takes a while: once per process


def organisational_domain(domain: str) -> str:
    """The registrable domain per the public suffix list (the domain itself if it is a suffix)."""
    return _public_suffixes().privatesuffix(domain) or domain
