"""Reports that arrived by mail, parsed after the message is stored (SPEC R6.1): the SMTP reply never
waits for the parse. The verdict step (app/verdict/reports.py) has checked the sender and the report's
head; the SMTP process then hands a `ReportMessage` to a task (tasks/inreports.py), which calls
`parse_stored_report`. Idempotent per message: the report is stored once per (reporter, report id) by
app/inreports/store.py, so a second run for the same message stores nothing new. If the hand-off is
lost, the message is still in its mailbox and `postwarden reports import` reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.config import Config
from app.db import session_scope
from app.inreports.errors import Kind, ReportError
from app.inreports.read import parse, read_payload
from app.inreports.store import Stored, store_report
from app.inreports.unpack import MAX_MESSAGE
from app.store.mailboxes import find_message

log = logging.getLogger(__name__)

KINDS: tuple[Kind, ...] = ("dmarc", "tls")
Outcome = Literal["stored", "duplicate", "refused", "missing"]


@dataclass(frozen=True)
class ReportMessage:
    """A stored message whose report passed the checks of SPEC R6.2: its file id (the first copy's,
    the SMTP transaction's id) and the kind of report its recipient address receives."""

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
    """Parse the report of a stored message and store it (once per reporter and report id)."""
    with session_scope(config.resolved_database_url) as session:
        row = find_message(session, message.file_id)
        raw = None if row is None else _read(config.data_dir / row["path"])
        if raw is None:
            log.warning("report message not found file_id=%r", message.file_id)
            return "missing"
        try:
            payload = read_payload(raw, message.kind)
            outcome = store_report(session, parse(payload), payload.data)
        except ReportError as error:  # reason and detail are fixed strings of ours, never report text
            log.info(
                "report not stored file_id=%r reason=%s (%s)", message.file_id, error.reason, error.detail
            )
            return "refused"
    summary = outcome.summary
    stored = isinstance(outcome, Stored)
    log.info(
        "report %s file_id=%r kind=%s report=%d records=%d messages=%d",
        "stored" if stored else "already stored",
        message.file_id,
        summary.kind,
        summary.id,
        summary.records,
        summary.messages,
    )
    return "stored" if stored else "duplicate"


def _read(path: Path) -> bytes | None:
    """The message file, read up to one byte past the largest message (which unpack then refuses)."""
    try:
        with path.open("rb") as file:
            return file.read(MAX_MESSAGE + 1)
    except OSError:
        return None
