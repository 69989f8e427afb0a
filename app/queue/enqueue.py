"""The one way into the outgoing queue: a `Queued` message becomes its content and one row per recipient.

Where the content goes is app/queue/content.py's choice (`[storage] content`). In the database
(several machines) it is a row added in the same transaction as the queue rows, whoever queues: what
follows is about files, the embedded default.

Submissions, DMARC reports and TLS reports all describe their message as a `Queued` value (envelope,
kind, account, due time, attempts, `require_tls`); `Queued.rows` is the one place that turns it into
queue rows, and `app.store.files.write_durably` the one writer of queue files (write, fsync, then
fsync the directory, so a committed row never names a file that a crash could lose).

The file is written at one of two moments, as each caller's transaction needs:

- The submission listener queues through its store (`MessageStore.enqueue_outgoing`): the file goes
  to the store's locked directory under `tmp/`, the rows are group-committed with other sessions'
  messages, then the file is renamed into `outgoing/`. The 250 waits for that commit; a crash after
  it leaves a committed file in `tmp/`, which the store's recovery renames and which delivery
  meanwhile treats as awaiting its rename (`awaiting_rename`).
- Jobs that compose mail call `enqueue_many` inside their own transaction: the file is written
  straight into `outgoing/`, then the rows are added, visible with the caller's commit. A job thus
  marks its work done and queues the mail atomically. A rollback or crash before that commit
  leaves only a file no row names, which the orphan sweep (`outgoing.remove_orphans`) deletes.

Why not the store's tmp-and-rename for the jobs too: the rename would have to follow a commit the
job makes (an after-commit hook), and a crash between the two would leave committed rows whose file
only the SMTP process's recovery moves into place; the jobs run in Celery workers, which never
recover the store. A file in `outgoing/` that no row names is harmless instead: delivery only
opens files rows name, and the hourly orphan sweep removes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.address import AddressError, address_domain, validate_address
from app.config import Config
from app.models.base import utcnow
from app.queue.content import queue_content
from app.queue.outgoing import add_rows
from app.store.files import new_file_id, outgoing_path

# What the queue carries: a failed report's DSN goes to the postmaster's report folder, a submission's
# to its sender; a report also gets no delay DSN (app/queue/deliver.py).
QueueKind = Literal["submission", "dmarc-report", "tls-report"]


class QueueAddressError(AddressError):
    """A sender or recipient that is not a valid address: nothing of the batch was queued."""


@dataclass(frozen=True)
class Queued:
    """One message for the outgoing queue, with every option its rows take.

    The sender and recipients become our MAIL FROM and RCPT TO: whoever built the message, nothing
    but valid addresses get that far (QueueAddressError at construction).
    """

    content: bytes
    sender: str  # "": the null reverse-path
    recipients: Sequence[str]
    kind: QueueKind = "submission"
    account_id: int | None = None
    next_attempt: datetime | None = None  # None: due at once
    max_attempts: int | None = None  # None: the configured `[delivery] max_attempts`
    require_tls: bool | None = None  # None: policy decides; False: `TLS-Required: No` (RFC 8689)

    def __post_init__(self) -> None:
        # SMTPUTF8 allowed: the SMTP client asks for it, or fails the delivery, as the addresses need.
        for address in [self.sender, *self.recipients] if self.sender else self.recipients:
            try:
                validate_address(address, smtputf8=True)
            except AddressError as e:
                raise QueueAddressError(f"cannot queue a message for {address!r}: {e}") from None

    def rows(
        self, path: str, size: int, default_max_attempts: int, account_id: int | None = None
    ) -> list[dict[str, Any]]:
        """The queue rows, one per recipient, for the file at `path` (relative to the data dir) of
        `size` bytes. `account_id` stands in for the message's own when the caller resolved the
        account by name (the store, for submissions)."""
        common = {
            "account_id": self.account_id if account_id is None else account_id,
            "sender": self.sender,
            "path": path,
            "size": size,
            "next_attempt": self.next_attempt or utcnow(),
            "max_attempts": self.max_attempts or default_max_attempts,
            "require_tls": self.require_tls,
            "is_dmarc_report": self.kind == "dmarc-report",
            "is_tls_report": self.kind == "tls-report",
        }
        return [
            {**common, "recipient": recipient, "recipient_domain": address_domain(recipient)}
            for recipient in self.recipients
        ]


def enqueue(session: Session, config: Config, message: Queued) -> list[int]:
    """`enqueue_many` for one message; its row ids."""
    return enqueue_many(session, config, [message])[0]


def enqueue_many(session: Session, config: Config, messages: Sequence[Queued]) -> list[list[int]]:
    """Store the messages' content (files written durably into `outgoing/`, or database rows: see the
    module doc), then add their rows in the caller's transaction; the row ids per message.

    The files are written and fsync'd concurrently and their directory once, before any row is
    added: a job queueing thousands of reports waits for one round of fsyncs per batch, not two
    fsyncs one after the other per message.
    """
    paths = [outgoing_path(new_file_id()) for _ in messages]
    contents = [(path, (m.content,)) for path, m in zip(paths, messages, strict=True)]
    queue_content(config).add(session, contents)
    max_attempts = config.delivery.max_attempts
    rows = [m.rows(path, len(m.content), max_attempts) for path, m in zip(paths, messages, strict=True)]
    return add_rows(session, rows)
