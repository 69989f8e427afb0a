"""Queue operations on the outgoing table: what is due, claim with a lease, outcomes, retry, drop, list.
(The way in, for every kind of message, is app/queue/enqueue.py.)

The rows are the truth (DESIGN.md). A delivery run claims rows by writing its own lease owner and
an expiry into them with one UPDATE whose WHERE re-checks that they are due and free, so two workers
never hold the same row; a worker that dies leaves a lease that simply expires. Leases are short
(`delivery.lease_seconds`) and a run renews its own while it works (app/queue/lease.py), so a
crashed worker's rows are free again within one lease. Every outcome is written only while the
lease is still ours.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Select,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.address import address_domain, normalize_address
from app.auth.publicsuffix import psl_organizational_domain
from app.config import Config
from app.db import affected_rows, session_scope, upsert_insert
from app.models import OutgoingMessage, SentRecipient
from app.models.base import utcnow
from app.queue.content import queue_content

# At most this many due rows are looked at per sweep; the next sweep takes the rest.
SWEEP_SCAN_LIMIT = 50_000
# A row handed back unattempted (its file not in place yet) is due again after this.
RELEASE_DELAY = timedelta(seconds=5)
# Orphaned content is looked up and removed this many paths at a time.
ORPHAN_CHUNK = 500
# Claims and outcomes use Core statements on the table: they run per message, on the hot path, where
# the ORM's bulk-statement machinery would cost more than the statement itself.
_TABLE = OutgoingMessage.__table__


def add_rows(session: Session, rows_per_message: Sequence[list[dict[str, Any]]]) -> list[list[int]]:
    """Add the rows (app/queue/enqueue.py's `Queued.rows`) in the caller's transaction; their ids, per
    message."""
    added = [[OutgoingMessage(**row) for row in rows] for rows in rows_per_message]
    session.add_all([row for rows in added for row in rows])
    session.flush()
    return [[row.id for row in rows] for rows in added]


def insert_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Add the rows in one INSERT, no ids read back (the store's group commit of submissions)."""
    session.execute(insert(OutgoingMessage), rows)


def count_due(session: Session, now: datetime | None = None) -> int:
    """How many rows are due (`due`): what the sweep, the status page, `/metrics` and `queue list`
    count."""
    query = select(func.count()).select_from(OutgoingMessage).where(due(now or utcnow()))
    return session.scalar(query) or 0


def queue_size(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OutgoingMessage)) or 0


def size_and_oldest(session: Session) -> tuple[int, datetime | None]:
    """How many rows the queue holds and when the oldest was queued (None when empty), in one read."""
    size, oldest = session.execute(
        select(func.count(OutgoingMessage.id), func.min(OutgoingMessage.created))
    ).one()
    return size or 0, oldest  # min() keeps the column's type: an aware datetime


def due(now: datetime) -> ColumnElement[bool]:
    """The one definition of a due row: its next attempt time has come and no worker holds it."""
    return (_TABLE.c.next_attempt <= now) & free(now)


def free(now: datetime) -> ColumnElement[bool]:
    """No worker holds the row: it has no lease, or the lease has expired (its worker died)."""
    return or_(_TABLE.c.lease_until.is_(None), _TABLE.c.lease_until < now)


def database_error(error: Exception) -> str:
    """For a log line: the error's class and the first line of what the driver said, at most 200
    characters; not the statement and its parameters, which may carry remote text."""
    reason = str(getattr(error, "orig", None) or error).strip().split("\n", 1)[0]
    return f"{type(error).__name__}: {reason[:200]}"


# Claiming and leases.


@dataclass(frozen=True, slots=True)
class Claimed:
    """A queue row as a delivery run holds it: the columns it uses, read through Core (for a batch of
    hundreds of rows, building ORM objects cost more than the claim's statements)."""

    id: int
    account_id: int | None
    sender: str
    recipient: str
    recipient_domain: str
    path: str
    created: datetime
    attempts: int
    max_attempts: int
    require_tls: bool | None
    is_dmarc_report: bool
    is_tls_report: bool
    lease_owner: str | None


_HELD = select(*(_TABLE.c[name] for name in Claimed.__slots__)).where(
    _TABLE.c.lease_owner == bindparam("owner")
)


def claim_batch(
    session: Session, queue_id: int, *, lease: timedelta, batch_size: int, now: datetime | None = None
) -> list[Claimed]:
    """Claim the row, if due and free, and more due, free rows for the same recipient domain, up to
    `batch_size` in all, oldest first.

    A wake-up for a row that another run took meanwhile still takes the domain's other due rows, so
    wake-ups sent per batch all find work; one for a row that is gone takes nothing. Commits, so the
    leases are visible to other workers before any delivery starts.
    """
    now = now or utcnow()
    domain = session.scalar(select(_TABLE.c.recipient_domain).where(_TABLE.c.id == queue_id))
    if domain is None:
        session.commit()
        return []
    owner = secrets.token_hex(8)
    values = {"lease_owner": owner, "lease_until": now + lease}
    first = update(_TABLE).where(_TABLE.c.id == queue_id, due(now)).values(values)
    claimed = affected_rows(session.execute(first))
    if batch_size > claimed:
        # SKIP LOCKED (PostgreSQL; SQLite serializes writers anyway) keeps concurrent claimers from
        # waiting on, or deadlocking over, the same rows; the outer WHERE re-checks each row.
        candidates = (
            select(_TABLE.c.id)
            .where(_TABLE.c.recipient_domain == domain, due(now))
            .order_by(_TABLE.c.next_attempt, _TABLE.c.id)
            .limit(batch_size - claimed)
            .with_for_update(skip_locked=True)
        )
        more = update(_TABLE).where(_TABLE.c.id.in_(candidates.scalar_subquery()), due(now))
        session.execute(more.values(values))
    session.commit()
    return [Claimed(*row) for row in session.execute(_HELD.order_by(_TABLE.c.id), {"owner": owner})]


def next_due_id(session: Session, domain: str) -> int | None:
    """The oldest due row for the domain that no worker holds, if any."""
    query = select(_TABLE.c.id).where(_TABLE.c.recipient_domain == domain, due(utcnow()))
    return session.scalar(query.order_by(_TABLE.c.next_attempt, _TABLE.c.id).limit(1))


def renew_lease(session: Session | Connection, owner: str, lease: timedelta) -> int:
    """Push the lease of the rows `owner` still holds further out; how many.

    Rows that the run is writing an outcome for at this moment are skipped (SKIP LOCKED on
    PostgreSQL): waiting for them, or locking the rows in another order than the run does, could
    deadlock with it; they are finished a moment later, or renewed next time.
    """
    held = select(_TABLE.c.id).where(_TABLE.c.lease_owner == owner).with_for_update(skip_locked=True)
    statement = update(_TABLE).where(_TABLE.c.id.in_(held.scalar_subquery()), _TABLE.c.lease_owner == owner)
    return affected_rows(session.execute(statement.values(lease_until=utcnow() + lease)))


def _ours(row: Claimed) -> ColumnElement[bool]:
    return (_TABLE.c.id == row.id) & (_TABLE.c.lease_owner == row.lease_owner)


# Its values are named apart from any column: one statement of `finish_cte` binds an INSERT's values
# by column name too, and takes a key that names a column for that column's value.
_FINISH = delete(_TABLE).where(
    _TABLE.c.id == bindparam("finish_id"), _TABLE.c.lease_owner == bindparam("finish_owner")
)
_PATH_IN_USE = select(_TABLE.c.id).where(_TABLE.c.path == bindparam("path")).limit(1)


def finish(session: Session | Connection, row: Claimed) -> bool:
    """Remove a row that is done (delivered, or failed for good); False if the lease was lost."""
    return bool(affected_rows(session.execute(_FINISH, finish_params(row))))


def finish_params(row: Claimed) -> dict[str, Any]:
    """The values `finish` and `finish_cte` bind."""
    return {"finish_id": row.id, "finish_owner": row.lease_owner}


def finish_cte() -> CTE:
    """`finish` as part of one PostgreSQL statement (app/queue/deliver.py's outcome in one round trip):
    the ids of the rows removed, none if the lease was lost."""
    return _FINISH.returning(_TABLE.c.id).cte("finished")


def postpone(session: Session | Connection, row: Claimed, error: str, next_attempt: datetime) -> bool:
    """Count a failed attempt and free the row until `next_attempt`; False if the lease was lost."""
    statement = (
        update(_TABLE)
        .where(_ours(row))
        .values(
            attempts=_TABLE.c.attempts + 1,
            last_attempt=utcnow(),
            last_error=error[:2000],
            next_attempt=next_attempt,
            lease_owner=None,
            lease_until=None,
        )
    )
    return bool(affected_rows(session.execute(statement)))


def release(session: Session | Connection, row: Claimed) -> bool:
    """Free a row without counting an attempt, due again in RELEASE_DELAY; False if the lease was lost.
    Not at once: a run that found its batch full would claim the same row again straight away."""
    values = {"lease_owner": None, "lease_until": None, "next_attempt": utcnow() + RELEASE_DELAY}
    statement = update(_TABLE).where(_ours(row)).values(values)
    return bool(affected_rows(session.execute(statement)))


def path_in_use(session: Session | Connection, path: str) -> bool:
    """Whether any queue row still points at the message file."""
    return session.execute(_PATH_IN_USE, {"path": path}).first() is not None


def rows_per_path(session: Session, paths: Sequence[str]) -> dict[str, int]:
    """How many queue rows point at each of the files."""
    query = select(_TABLE.c.path, func.count()).where(_TABLE.c.path.in_(paths)).group_by(_TABLE.c.path)
    return {path: count for path, count in session.execute(query)}


def paths_in_use(session: Session | Connection, paths: set[str]) -> set[str]:
    """Which of the message paths some queue row still names."""
    query = select(_TABLE.c.path).where(_TABLE.c.path.in_(paths)).distinct()
    return set(session.execute(query).scalars())


def remove_unreferenced(config: Config, paths: set[str]) -> None:
    """Delete content no queue row names any more (after the rows' deletion is committed)."""
    if not paths:
        return
    store = queue_content(config)
    with session_scope(config.resolved_database_url) as session:
        store.delete(session, paths - paths_in_use(session, paths))


def remove_orphans(config: Config, older_than: timedelta) -> int:
    """Delete queue content no row names that is older than `older_than`; how many.

    Left by a crash between a row's removal and its content's, by an enqueueing transaction that
    rolled back (files), or by two workers finishing rows of one message at the same moment. The age
    limit spares content whose rows are still being committed.
    """
    store = queue_content(config)
    with session_scope(config.resolved_database_url) as session:
        candidates = store.older_than(session, older_than)
    removed = 0
    for start in range(0, len(candidates), ORPHAN_CHUNK):
        chunk = set(candidates[start : start + ORPHAN_CHUNK])
        with session_scope(config.resolved_database_url) as session:
            unused = chunk - paths_in_use(session, chunk)
            store.delete(session, unused)
        removed += len(unused)
    return removed


# The sweep.


def due_wakeups(session: Session, batch_size: int, now: datetime | None = None) -> list[int]:
    """One row id per batch of due, free rows of a recipient domain: what the sweep wakes workers for."""
    now = now or utcnow()
    query = (
        select(OutgoingMessage.id, OutgoingMessage.recipient_domain)
        .where(due(now))
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


@dataclass(frozen=True)
class Listed:
    """A queue row as operators see it: whether it is due and whether a worker holds it are the
    queue's own answers (`due`, `free`), so `queue list` agrees with the sweep and the status page."""

    row: OutgoingMessage
    due: bool
    held: bool


def row_values(row: OutgoingMessage) -> dict[str, Any]:
    """Every column of the row, by name (what `queue list --json` shows of it)."""
    return {column.key: getattr(row, column.key) for column in _TABLE.columns}


def list_rows(
    session: Session,
    ids: Sequence[int] = (),
    path: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Listed]:
    """The rows (those with the ids, or of the file at `path`, when given), next attempt first; a
    page of them with `limit` and `offset` (the web page)."""
    now = utcnow()
    query = select(OutgoingMessage, due(now), free(now))
    query = query.order_by(OutgoingMessage.next_attempt, OutgoingMessage.id).limit(limit).offset(offset)
    if ids:
        query = query.where(OutgoingMessage.id.in_(ids))
    if path is not None:
        query = query.where(OutgoingMessage.path == path)
    return [Listed(row, bool(is_due), not is_free) for row, is_due, is_free in session.execute(query)]


def retry_now(session: Session, ids: Sequence[int] = ()) -> list[int]:
    """Make rows due now (all rows when `ids` is empty); rows a worker holds are left alone."""
    now = utcnow()
    query = select(OutgoingMessage.id).where(free(now))
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
    rows = session.execute(
        select(OutgoingMessage.id, OutgoingMessage.path).where(OutgoingMessage.id.in_(ids), free(utcnow()))
    ).all()
    dropped = [queue_id for queue_id, _ in rows]
    if dropped:
        session.execute(delete(OutgoingMessage).where(OutgoingMessage.id.in_(dropped)))
    return dropped, {path for _, path in rows}


def drop_messages(config: Config, ids: Sequence[int]) -> list[int]:
    """`drop` in a transaction of its own, then the content no row needs any more deleted (after the
    commit: a rollback must not leave rows without their content); the dropped ids. `queue drop` and the
    web queue page both drop this way."""
    with session_scope(config.resolved_database_url) as session:
        dropped, paths = drop(session, ids)
    remove_unreferenced(config, paths)
    return dropped


# Recipients our users sent to (SPEC R3.4 b, c).


def record_sent_recipient(session: Session | Connection, account_id: int, address: str) -> None:
    """Count a delivery by the account to `address` (one row per account and address)."""
    statement = _sent_upsert(upsert_insert(session, SentRecipient.__table__))
    session.execute(statement, sent_params(account_id, address))


def sent_params(account_id: int, address: str) -> dict[str, Any]:
    """The values `record_sent_recipient` and `sent_cte` bind."""
    address = normalize_address(address)
    domain = address_domain(address)
    return {
        "sent_account_id": account_id,
        "sent_address": address,
        "sent_domain": domain,
        "sent_org_domain": psl_organizational_domain(domain),
        "sent_now": utcnow(),
    }


def sent_cte() -> CTE:
    """`record_sent_recipient` as part of one PostgreSQL statement (see `finish_cte`)."""
    return _sent_upsert(postgresql.insert(SentRecipient.__table__)).cte("sent")


def _sent_upsert(statement: postgresql.Insert | sqlite.Insert) -> postgresql.Insert | sqlite.Insert:
    table = SentRecipient.__table__
    now = bindparam("sent_now", type_=table.c.first_sent.type)
    # Literal SQL, not a bound value: an anonymous bound value in a CTE got no value when executed.
    one: ColumnElement[int] = literal_column("1")
    return statement.values(
        account_id=bindparam("sent_account_id"),
        address=bindparam("sent_address"),
        domain=bindparam("sent_domain"),
        org_domain=bindparam("sent_org_domain"),
        first_sent=now,
        last_sent=now,
        count=one,
    ).on_conflict_do_update(
        index_elements=["account_id", "address"], set_={"last_sent": now, "count": table.c.count + one}
    )


def has_sent_to(
    session: Session, account_id: int, *, address: str = "", domain: str = "", org_domain: str = ""
) -> bool:
    """Whether the account sent mail to this address, or to any address in this domain or
    organisational domain (give one or more: whether any of them); each one lookup of a unique or
    plain index on (account_id, address | domain | org_domain)."""
    values = {
        "address": normalize_address(address) if address else "",
        "domain": domain.lower(),
        "org_domain": org_domain.lower(),
    }
    given = tuple(column for column, value in values.items() if value)
    if not given:
        return False
    bound = {f"b_{column}": values[column] for column in given}
    found = session.connection().execute(_sent_to_query(given), {"b_account": account_id, **bound})
    return found.first() is not None


@cache
def _sent_to_query(columns: tuple[str, ...]) -> Select[Any]:
    """has_sent_to's statement for these columns, built once (values bound at execution): inbound
    reputation asks it for most messages."""
    table = SentRecipient.__table__.c
    matches = [table[column] == bindparam(f"b_{column}") for column in columns]
    return select(table.id).where(table.account_id == bindparam("b_account"), or_(*matches)).limit(1)
