"""Reports that arrived by mail, parsed after the message is stored (SPEC R6.1): the SMTP reply never
waits for the parse. The verdict step (app/verdict/reports.py) has checked the sender and the report's
head and marked the reporting address's copy (`is_dmarc_report` / `is_tls_report`); the SMTP process
then hands a `ReportMessage` to a task (tasks/inreports.py), which calls `parse_stored_report`.

Owner of `report_intakes` (app/models/inreports.py ReportIntake): one row per message parsed, with the
outcome. It makes the parse idempotent per message (a second run reads the row and does nothing; the
report itself is stored once per reporter and report id by app/inreports/store.py in any case), and
lets `sweep_report_messages` (a beat job) find marked messages whose hand-off the broker lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Config
from app.db import session_scope
from app.inreports.errors import Kind, ReportError
from app.inreports.read import parse, read_payload
from app.inreports.store import Stored, store_report
from app.inreports.unpack import MAX_MESSAGE
from app.models.base import utcnow
from app.models.inreports import ReportIntake
from app.store.content import StoredContent, stored_content
from app.store.mailboxes import find_message, report_messages

log = logging.getLogger(__name__)

KINDS: tuple[Kind, ...] = ("dmarc", "tls")
Outcome = Literal["stored", "duplicate", "refused", "missing", "already processed"]
# The sweep looks at messages received in this window: older than the grace (their hand-off normally
# ran within seconds), younger than the window (older lost ones: `postwarden reports import`).
SWEEP_GRACE = timedelta(minutes=5)
SWEEP_WINDOW = timedelta(days=2)
IN_CHUNK = 500  # file ids per IN (...) query


@dataclass(frozen=True)
class ReportMessage:
    """A stored message whose report passed the checks of SPEC R6.2: its file id (the reporting
    address's copy) and the kind of report that address receives."""

    file_id: str
    kind: Kind

    @classmethod
    def from_args(cls, file_id: str, kind: str) -> ReportMessage:
        """From the task's arguments, as the broker carried them."""
        known = next((k for k in KINDS if k == kind), None)
        if known is None:
            raise ValueError("unknown report kind")
        return cls(file_id, known)


def parse_stored_report(config: Config, message: ReportMessage) -> Outcome:
    """Parse the report of a stored message and store it, once per message."""
    with session_scope(config.resolved_database_url) as session:
        done = session.scalar(select(ReportIntake.outcome).where(ReportIntake.file_id == message.file_id))
        if done is not None:
            log.info("report message already processed file_id=%r outcome=%s", message.file_id, done)
            return "already processed"
        row = find_message(session, message.file_id)
        raw = None if row is None else _read(stored_content(config), row["path"])
        if raw is None:
            log.warning("report message not found file_id=%r", message.file_id)
            return "missing"
        outcome = _parse_and_store(session, message, raw)
    return outcome


def _parse_and_store(session: Session, message: ReportMessage, raw: bytes) -> Outcome:
    try:
        payload = read_payload(raw, message.kind)
        stored = store_report(session, parse(payload), payload.data)
    except ReportError as error:  # reason and detail are fixed strings of ours, never report text
        log.info("report not stored file_id=%r reason=%s (%s)", message.file_id, error.reason, error.detail)
        _record(session, message.file_id, "refused", error.reason)
        return "refused"
    outcome: Outcome = "stored" if isinstance(stored, Stored) else "duplicate"
    summary = stored.summary
    log.info(
        "report %s file_id=%r kind=%s report=%d records=%d messages=%d",
        "stored" if outcome == "stored" else "already stored",
        message.file_id,
        summary.kind,
        summary.id,
        summary.records,
        summary.messages,
    )
    _record(session, message.file_id, outcome, "")
    return outcome


def _record(session: Session, file_id: str, outcome: Outcome, reason: str) -> None:
    """The message is processed; a concurrent run of the same hand-off that recorded it first wins."""
    try:
        with session.begin_nested():
            session.add(ReportIntake(file_id=file_id, outcome=outcome, reason=reason[:64]))
    except IntegrityError:
        log.info("report message processed concurrently file_id=%r", file_id)


def _read(content: StoredContent, path: str) -> bytes | None:
    """The message, read up to one byte past the largest message (which unpack then refuses)."""
    try:
        return content.read(path, MAX_MESSAGE + 1)
    except OSError:
        return None


def sweep_report_messages(config: Config, now: datetime | None = None) -> int:
    """Parse the marked report messages of the sweep window that no run has processed (their hand-off
    was lost); how many."""
    now = now or utcnow()
    with session_scope(config.resolved_database_url) as session:
        found = report_messages(session, now - SWEEP_WINDOW, now - SWEEP_GRACE)
        done = _processed(session, [file_id for file_id, _ in found])
    missed = [
        ReportMessage(file_id, "tls" if tls else "dmarc") for file_id, tls in found if file_id not in done
    ]
    for message in missed:
        parse_stored_report(config, message)
    return len(missed)


def _processed(session: Session, file_ids: list[str]) -> set[str]:
    done: set[str] = set()
    for start in range(0, len(file_ids), IN_CHUNK):
        chunk = file_ids[start : start + IN_CHUNK]
        done |= set(session.scalars(select(ReportIntake.file_id).where(ReportIntake.file_id.in_(chunk))))
    return done
