"""The delivery history: one row per attempt per recipient, kept after the queue row is gone.

`postwarden queue show` lists it, by queue id or by the id the submission listener's 250 reply gave
(the message file's id), so a user can see when a message went, to which relay (host and IP), with
what TLS and the relay's reply, also once it was delivered or failed for good. Rows older than
`[delivery] history_days` are removed at the start of each delivery run (one indexed DELETE).

Reply text comes from the remote server: the SMTP client has already made it printable ASCII on one
line (app/queue/smtpclient.py); it is cut to REPLY_KEPT characters here, REPLY_LOGGED in log lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import CTE, Connection, bindparam, delete, insert, select
from sqlalchemy.orm import Session

from app.db import affected_rows
from app.models.base import utcnow
from app.models.queue import DeliveryAttempt
from app.queue.smtpclient import DeliveryError, Reply, SessionInfo

if TYPE_CHECKING:  # the rows a delivery run claimed
    from app.queue.outgoing import Claimed


Result = Literal["delivered", "deferred", "failed"]
REPLY_KEPT = 512  # DeliveryAttempt.reply's length
HOST_KEPT = 255  # DeliveryAttempt.host's length
REPLY_LOGGED = 200
_TABLE = DeliveryAttempt.__table__
# A DSN diagnostic as the SMTP client writes it for a server's reply (Reply.diagnostic).
_SMTP_DIAGNOSTIC = re.compile(r"smtp; ([2-5]\d\d) ?(.*)", re.DOTALL)


@dataclass(frozen=True)
class Relay:
    """Who an attempt reached: the host name, its IP and the TLS the session had (None: unknown)."""

    host: str | None = None
    ip: str | None = None
    tls: str | None = None

    @classmethod
    def of(cls, host: str | None, info: SessionInfo | None) -> Relay:
        # An MX name from DNS, in presentation form with \DDD escapes, can outgrow its column (255).
        if info is None:
            return cls(host and host[:HOST_KEPT])
        return cls(info.target.host[:HOST_KEPT], info.target.ip, tls_summary(info))


def tls_summary(info: SessionInfo) -> str:
    """E.g. "TLSv1.3", "none", or "TLSv1.3 (certificate-expired)" when verification failed but the
    policy let the session go on."""
    summary = info.tls_version or "none"
    if info.tls_failure is not None:
        summary += f" ({info.tls_failure.result_type})"
    return summary[:128]


@dataclass(frozen=True)
class Attempt:
    """One recipient's outcome of one attempt, as logged and kept."""

    row: Claimed
    relay: Relay
    reply_code: int | None
    reply: str
    result: Result
    attempted: datetime

    @classmethod
    def of(
        cls,
        row: Claimed,
        relay: Relay,
        outcome: Reply | DeliveryError,
        result: Result,
        attempted: datetime,
    ) -> Attempt:
        code, text = reply_parts(outcome)
        return cls(row, relay, code, text[:REPLY_KEPT], result, attempted)

    @property
    def file_id(self) -> str:
        return file_id_of(self.row.path)

    def log_fields(self) -> dict[str, str]:
        """The log line's fields: relay, TLS and the reply (cut to REPLY_LOGGED characters)."""
        relay = self.relay
        shown = f"{self.reply_code} {self.reply}" if self.reply_code is not None else self.reply
        return {
            "relay": relay.host or "-",
            "ip": relay.ip or "-",
            "tls": relay.tls or "-",
            "reply": shown[:REPLY_LOGGED],
        }

    def values(self) -> dict[str, Any]:
        return {
            "queue_id": self.row.id,
            "file_id": self.file_id,
            "attempted": self.attempted,
            "recipient": self.row.recipient,
            "host": self.relay.host,
            "ip": self.relay.ip,
            "tls": self.relay.tls,
            "reply_code": self.reply_code,
            "reply": self.reply,
            "result": self.result,
        }


def reply_parts(outcome: Reply | DeliveryError) -> tuple[int | None, str]:
    """(reply code, text) of a server's reply; (None, what went wrong) when there was no reply."""
    if isinstance(outcome, Reply):
        return outcome.code, outcome.text
    match = _SMTP_DIAGNOSTIC.fullmatch(outcome.diagnostic or "")
    if match:
        return int(match[1]), match[2]
    return None, str(outcome)


def file_id_of(path: str) -> str:
    """A queue file's id: its name (outgoing/<id>)."""
    return path.rpartition("/")[2]


# Built once: building and caching the statement anew per message cost more than running it.
_INSERT = insert(_TABLE)


def record(connection: Connection, attempts: Sequence[Attempt]) -> None:
    """Add the attempts in the caller's transaction (committed with the rows' outcome)."""
    if len(attempts) == 1:  # the common case: one row, without executemany's batching machinery
        connection.execute(_INSERT, attempts[0].values())
    elif attempts:
        connection.execute(_INSERT, [a.values() for a in attempts])


def record_cte() -> CTE:
    """`record` of one attempt as part of one PostgreSQL statement (app/queue/deliver.py's outcome in
    one round trip); it binds `Attempt.values()`."""
    columns = [column.name for column in _TABLE.columns if column.name != "id"]
    return insert(_TABLE).values({name: bindparam(name) for name in columns}).cte("recorded")


def prune(session: Session | Connection, days: float, now: datetime | None = None) -> int:
    """Remove attempts older than `days`; how many."""
    cutoff = (now or utcnow()) - timedelta(days=days)
    return affected_rows(session.execute(delete(_TABLE).where(_TABLE.c.attempted < cutoff)))


def attempts_for(
    session: Session, *, queue_ids: Sequence[int] = (), file_id: str = ""
) -> list[DeliveryAttempt]:
    """The kept attempts of the queue rows or of the message file, oldest first."""
    query = select(DeliveryAttempt).order_by(DeliveryAttempt.attempted, DeliveryAttempt.id)
    if file_id:
        query = query.where(DeliveryAttempt.file_id == file_id)
    else:
        query = query.where(DeliveryAttempt.queue_id.in_(queue_ids))
    return list(session.scalars(query))


def attempts_of(
    rows: Sequence[Claimed],
    outcomes: Sequence[DeliveryError | None],
    finals: Sequence[bool],
    replies: Sequence[Reply],
    relay: Relay,
    attempted: datetime,
) -> list[Attempt]:
    """An attempt per row: delivered (outcome None; `replies`, the server's reply per row, say
    how), failed for good (final) or deferred."""
    attempts = []
    for index, (row, error, final) in enumerate(zip(rows, outcomes, finals, strict=True)):
        if error is None:
            attempts.append(Attempt.of(row, relay, replies[index], "delivered", attempted))
        else:
            attempts.append(Attempt.of(row, relay, error, "failed" if final else "deferred", attempted))
    return attempts
