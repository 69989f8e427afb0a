"""Durable message storage: a file under the data dir plus database rows, group-committed.

SPEC R1.6: the file is written and fsync'd and its rows committed before the SMTP 250. Each file is
first written to `<data_dir>/tmp/` (name: its final relative path with `/` as `!`) and fsync'd with
the tmp directory; then the rows, which name the *final* path, are committed; then the file is renamed
into place. A crash can therefore leave a file in tmp/ only, and `recover()` settles each one: rows
exist → finish the rename; no rows → the client never got a 250, delete it. Nothing else is looked at.

Throughput: sessions hand their messages to one committer, which takes everything pending at that
moment and stores it with one database transaction and one directory fsync (group commit), in a
worker thread so the event loop never blocks. Only one process may store into a data dir at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.accounts import ensure_account, ensure_mailbox
from app.db import session_factory
from app.models import Mailbox, Message, OutgoingMessage
from app.models.base import utcnow

log = logging.getLogger(__name__)

TMP_DIR = "tmp"
MESSAGES_DIR = "messages"
OUTGOING_DIR = "outgoing"
PATH_SEPARATOR_IN_TMP = "!"
# A batch is capped so one commit never holds many megabytes or keeps early sessions waiting long.
MAX_BATCH_MESSAGES = 512


def new_file_id() -> str:
    """Unique, and sorting by time: microseconds since the epoch in hex, then random bits."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


def message_path(file_id: str) -> str:
    """Where a delivered message lives, relative to the data dir: one directory per UTC day."""
    return f"{MESSAGES_DIR}/{time.strftime('%Y%m%d', time.gmtime())}/{file_id}"


def outgoing_path(file_id: str) -> str:
    return f"{OUTGOING_DIR}/{file_id}"


@dataclass(frozen=True)
class MailboxCopy:
    """One copy of an incoming message for a mailbox; `columns` are further `Message` columns."""

    account: str
    mailbox: str
    columns: dict[str, Any] = field(default_factory=dict)
    # Set for rejects (SPEC R3.2): the mailbox it would have gone to. A reject is stored once per
    # Message-ID (SPEC R3.1: a retry of the same message is not stored twice).
    destined_mailbox: str | None = None


@dataclass(frozen=True)
class OutgoingCopy:
    """A submitted message: one file, one queue row per recipient."""

    account: str
    sender: str
    recipients: tuple[str, ...]


@dataclass
class _Job:
    content: bytes
    copies: Sequence[MailboxCopy] | OutgoingCopy
    future: asyncio.Future[list[str]]
    # Filled in by the committer: the files to write and the rows that will point at them.
    files: list[_PlannedFile] = field(default_factory=list)


@dataclass(frozen=True)
class _PlannedFile:
    relative: str  # final path under the data dir
    model: type[Message] | type[OutgoingMessage]
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class RecoveryReport:
    completed: int  # rows existed: the rename was finished
    removed: int  # no rows: the message was never acknowledged


class StoreError(Exception):
    """The message could not be stored; the SMTP reply is a temporary failure."""


class MessageStore:
    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.tmp_dir = data_dir / TMP_DIR
        self._sessions = session_factory(database_url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-commit")
        self._pending: list[_Job] = []
        self._committer: asyncio.Task[None] | None = None
        # (account, mailbox) -> (account id, mailbox id); only ids of committed rows go in.
        self._ids: dict[tuple[str, str], tuple[int, int]] = {}
        self._known_dirs: set[Path] = set()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    # Public API.

    async def deliver(self, content: bytes, copies: Sequence[MailboxCopy]) -> list[str]:
        """Store a copy per mailbox durably; the file ids stored (a duplicate reject is left out)."""
        return await self._submit(content, copies)

    async def enqueue_outgoing(self, content: bytes, outgoing: OutgoingCopy) -> str:
        """Store a submitted message and its queue rows durably; its file id."""
        (file_id,) = await self._submit(content, outgoing)
        return file_id

    async def has_accepted_mail_from(self, domain: str) -> bool:
        """Whether mail From `domain` was ever delivered (not rejected); read in a worker thread."""

        def query() -> bool:
            with self._sessions() as session:
                return has_accepted_mail_from(session, domain)

        return await asyncio.get_running_loop().run_in_executor(None, query)

    def recover(self) -> RecoveryReport:
        """Settle files a crash left in tmp/ (see the module doc). Call before accepting mail."""
        completed = removed = 0
        with self._sessions() as session:
            for entry in sorted(os.scandir(self.tmp_dir), key=lambda e: e.name):
                relative = entry.name.replace(PATH_SEPARATOR_IN_TMP, "/")
                if _rows_exist(session, relative):
                    self._move_into_place(Path(entry.path), relative)
                    completed += 1
                else:
                    os.unlink(entry.path)
                    removed += 1
        _fsync_dir(self.tmp_dir)
        return RecoveryReport(completed=completed, removed=removed)

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer
        self._executor.shutdown(wait=True)

    # Group commit.

    async def _submit(self, content: bytes, copies: Sequence[MailboxCopy] | OutgoingCopy) -> list[str]:
        job = _Job(content, copies, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await job.future

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[:MAX_BATCH_MESSAGES]
            del self._pending[:MAX_BATCH_MESSAGES]
            try:
                outcomes = await loop.run_in_executor(self._executor, self._store_batch, batch)
            except Exception as e:  # e.g. the database is unreachable: every job in the batch fails
                log.exception("storing %d message(s) failed", len(batch))
                outcomes = [StoreError(str(e))] * len(batch)
            for job, outcome in zip(batch, outcomes, strict=True):
                if job.future.done():  # the session went away meanwhile
                    continue
                if isinstance(outcome, Exception):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _store_batch(self, batch: list[_Job]) -> list[list[str] | Exception]:
        """All jobs in one transaction; if that fails, each job alone, so one bad job fails alone."""
        try:
            return list(self._store_jobs(batch))
        except Exception:
            if len(batch) == 1:
                raise
            log.warning("group commit of %d messages failed; storing them one by one", len(batch))
        outcomes: list[list[str] | Exception] = []
        for job in batch:
            try:
                outcomes += self._store_jobs([job])
            except Exception as e:
                log.exception("storing a message failed")
                outcomes.append(StoreError(str(e)))
        return outcomes

    def _store_jobs(self, jobs: list[_Job]) -> list[list[str]]:
        new_ids: dict[tuple[str, str], tuple[int, int]] = {}
        written: list[Path] = []
        try:
            with self._sessions() as session:
                for job in jobs:
                    job.files = self._plan_files(session, job, new_ids)
                for job in jobs:
                    written += [self._write_tmp(planned.relative, job.content) for planned in job.files]
                _fsync_dir(self.tmp_dir)
                self._insert_rows(session, jobs)
                session.commit()
        except BaseException:
            self._ids.clear()  # ids created in the failed transaction are gone; ask the DB again
            for path in written:
                path.unlink(missing_ok=True)
            raise
        self._ids.update(new_ids)
        # Committed: from here on the message is stored, whatever happens (recover() finishes it).
        for path in written:
            self._move_into_place(path, path.name.replace(PATH_SEPARATOR_IN_TMP, "/"))
        return [[planned.relative.rpartition("/")[2] for planned in job.files] for job in jobs]

    def _plan_files(
        self, session: Session, job: _Job, new_ids: dict[tuple[str, str], tuple[int, int]]
    ) -> list[_PlannedFile]:
        """The files to write for a job, each with the rows that will point at it."""
        size = len(job.content)
        if isinstance(job.copies, OutgoingCopy):
            out = job.copies
            account_id, _ = self._ids_for(session, out.account, None, new_ids)
            relative = outgoing_path(new_file_id())
            rows = [_outgoing_row(account_id, out.sender, rcpt, relative, size) for rcpt in out.recipients]
            return [_PlannedFile(relative, OutgoingMessage, rows)]
        files = []
        for copy in job.copies:
            account_id, mailbox_id = self._ids_for(session, copy.account, copy.mailbox, new_ids)
            destined_id = None
            if copy.destined_mailbox is not None:
                _, destined_id = self._ids_for(session, copy.account, copy.destined_mailbox, new_ids)
                if _already_stored(session, mailbox_id, copy.columns.get("message_id")):
                    continue
            file_id = new_file_id()
            relative = message_path(file_id)
            row = {
                **copy.columns,
                "file_id": file_id,
                "account_id": account_id,
                "mailbox_id": mailbox_id,
                "mailbox_orig_id": mailbox_id,
                "mailbox_destined_id": destined_id,
                "path": relative,
                "size": size,
                "received": utcnow(),
            }
            files.append(_PlannedFile(relative, Message, [row]))
        return files

    def _ids_for(
        self,
        session: Session,
        account: str,
        mailbox: str | None,
        new_ids: dict[tuple[str, str], tuple[int, int]],
    ) -> tuple[int, int]:
        """(account id, mailbox id), creating rows on demand; mailbox None gives the account id only."""
        key = (account, mailbox or "")
        ids = self._ids.get(key) or new_ids.get(key)
        if ids is None:
            account_id = ensure_account(session, account).id
            mailbox_id = ensure_mailbox(session, account_id, mailbox) if mailbox is not None else 0
            ids = new_ids[key] = (account_id, mailbox_id)
        return ids

    @staticmethod
    def _insert_rows(session: Session, jobs: list[_Job]) -> None:
        for model in (Message, OutgoingMessage):
            rows = [
                row for job in jobs for planned in job.files if planned.model is model for row in planned.rows
            ]
            if rows:
                session.execute(insert(model), rows)

    # Files.

    def _write_tmp(self, relative: str, content: bytes) -> Path:
        path = self.tmp_dir / relative.replace("/", PATH_SEPARATOR_IN_TMP)
        with open(path, "xb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        return path

    def _move_into_place(self, tmp: Path, relative: str) -> None:
        final = self.data_dir / relative
        if final.parent not in self._known_dirs:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(final.parent)
        os.replace(tmp, final)


def _outgoing_row(account_id: int, sender: str, recipient: str, relative: str, size: int) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "sender": sender,
        "recipient": recipient,
        "recipient_domain": recipient.rpartition("@")[2].lower(),
        "path": relative,
        "size": size,
    }


def _already_stored(session: Session, mailbox_id: int, message_id: str | None) -> bool:
    if not message_id:
        return False
    query = select(Message.id).where(Message.mailbox_id == mailbox_id, Message.message_id == message_id)
    return session.scalar(query.limit(1)) is not None


def _rows_exist(session: Session, relative: str) -> bool:
    if relative.startswith(f"{MESSAGES_DIR}/"):
        file_id = relative.rpartition("/")[2]
        query = select(Message.id).where(Message.file_id == file_id)
    elif relative.startswith(f"{OUTGOING_DIR}/"):
        query = select(OutgoingMessage.id).where(OutgoingMessage.path == relative)
    else:
        return False
    return session.scalar(query.limit(1)) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def has_accepted_mail_from(session: Session, domain: str) -> bool:
    """Whether any message From `domain` was ever delivered (not rejected); SPEC R2.1's optional rule."""
    query = select(Message.id).where(
        Message.mailbox_orig_id.in_(select(Mailbox.id)),
        Message.msg_from_domain == domain,
        Message.is_reject.is_(False),
    )
    return session.scalar(query.limit(1)) is not None
