"""The report suppression list (SPEC R2.6, R2.7, R5.4): addresses that get no DMARC or TLS reports.

An address lands here automatically when delivery of a report to it failed permanently (so we stop
mailing a dead address every hour), or by the admin (`postwarden dmarc suppress add`). Entries expire.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.address import address_key
from app.db import affected_rows, upsert_insert
from app.models import ReportSuppression
from app.models.base import utcnow

ReportKind = Literal["dmarc", "tlsrpt"]
KINDS: tuple[ReportKind, ...] = ("dmarc", "tlsrpt")
# After a permanent delivery failure: long enough to stop the hourly noise, short enough that a
# fixed address gets reports again without anyone remembering to remove it.
FAILURE_SUPPRESSION = timedelta(days=30)
MAX_ADDRESS = 512  # the column's length
MAX_COMMENT = 2000


class SuppressionError(ValueError):
    """Bad input for the suppression list; the message is meant for the operator."""


def suppression_key(address: str) -> str:
    """What the list stores and matches: the address without surrounding spaces or the domain's
    final dot, as `address_key` (case-insensitive, local part included: a report address differing
    only in case is the same mailbox in practice). SuppressionError if it has no local part or domain."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise SuppressionError(f"{address!r} is not an address of the form localpart@domain")
    return address_key(f"{local}@{domain.rstrip('.')}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise SuppressionError(f"unknown report kind {kind!r} (expected {' or '.join(KINDS)})")


def suppress(
    session: Session, kind: ReportKind, address: str, until: datetime, comment: str = ""
) -> ReportSuppression:
    """Add an address, or set a new expiry and comment if it is listed (an atomic upsert: two workers
    failing to deliver to the same address at once both succeed)."""
    _check_kind(kind)
    if until.tzinfo is None:
        raise SuppressionError("the expiry needs a time zone")
    address = suppression_key(address)
    if not address.isprintable() or len(address) > MAX_ADDRESS:
        raise SuppressionError(f"{address[:100]!r} has a control character or is too long for an address")
    if len(comment) > MAX_COMMENT:
        raise SuppressionError(f"the comment is longer than {MAX_COMMENT} characters")
    table = ReportSuppression.__table__
    statement = upsert_insert(session, table).values(
        kind=kind, address=address, until=until, comment=comment, created=utcnow()
    )
    statement = statement.on_conflict_do_update(
        index_elements=["kind", "address"],
        set_={"until": statement.excluded.until, "comment": statement.excluded.comment},
    )
    session.execute(statement)
    query = select(ReportSuppression).where(
        ReportSuppression.kind == kind, ReportSuppression.address == address
    )
    return session.scalars(query.execution_options(populate_existing=True)).one()


def suppression_until(last_day: date | None, now: datetime | None = None) -> datetime:
    """When an entry the admin adds ends: the end of `last_day` (UTC), or FAILURE_SUPPRESSION from
    now without one; SuppressionError("<day> is in the past") if that has passed."""
    moment = now or utcnow()
    if last_day is None:
        return moment + FAILURE_SUPPRESSION
    end = datetime(last_day.year, last_day.month, last_day.day, 23, 59, 59, tzinfo=UTC)
    if end <= moment:
        raise SuppressionError(f"{last_day:%Y-%m-%d} is in the past")
    return end


def suppress_after_failure(
    session: Session, kind: ReportKind, address: str, error: str = "", now: datetime | None = None
) -> ReportSuppression:
    """Called by the DSN code when a report could not be delivered to `address` (permanent failure)."""
    moment = now or utcnow()
    comment = f"report delivery failed permanently at {moment:%Y-%m-%d %H:%M} UTC"
    if error:
        comment += f": {error}"
    return suppress(session, kind, address, moment + FAILURE_SUPPRESSION, comment[:2000])


def is_suppressed(session: Session, kind: ReportKind, address: str, now: datetime | None = None) -> bool:
    query = select(ReportSuppression.id).where(
        ReportSuppression.kind == kind,
        ReportSuppression.address == suppression_key(address),
        ReportSuppression.until > (now or utcnow()),
    )
    return session.scalar(query) is not None


def suppressed_addresses(session: Session, kind: ReportKind, now: datetime | None = None) -> set[str]:
    """The addresses suppressed now, normalized: a report run checks each of its addresses against it."""
    query = select(ReportSuppression.address).where(
        ReportSuppression.kind == kind, ReportSuppression.until > (now or utcnow())
    )
    return set(session.scalars(query))


def suppressions(
    session: Session, kind: ReportKind, include_expired: bool = False, limit: int | None = None
) -> list[ReportSuppression]:
    """The list by address (the first `limit` entries, if given)."""
    _check_kind(kind)
    query = select(ReportSuppression).where(ReportSuppression.kind == kind)
    if not include_expired:
        query = query.where(ReportSuppression.until > utcnow())
    return list(session.scalars(query.order_by(ReportSuppression.address).limit(limit)))


def unsuppress(session: Session, kind: ReportKind, address: str) -> bool:
    """Remove an address; False if it was not listed."""
    _check_kind(kind)
    result = session.execute(
        delete(ReportSuppression).where(
            ReportSuppression.kind == kind, ReportSuppression.address == suppression_key(address)
        )
    )
    return bool(affected_rows(result))
