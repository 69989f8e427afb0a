"""Durable message storage: a file under the data dir plus database rows, group-committed. This module
decides when rows are written; what a mailbox message's rows are, and their SQL, is app/store/mailboxes.py.

SPEC R1.6: the file is written and fsync'd and its rows committed before the SMTP 250. Each file is
first written to the store's own directory under `<data_dir>/tmp/` (name: its final relative path with
`/` as `!`) and fsync'd with that directory; then the rows, which name the *final* path, are committed;
then the file is renamed into place. A crash can therefore leave a file in tmp/ only, and `recover()`
settles each one: rows exist → finish the rename; no rows → the client never got a 250, delete it.

Other processes (SMTP workers, the delivery workers writing DSNs) may be writing while `postwarden
smtp` starts and recovers. Each store therefore holds an exclusive flock on its directory while it
lives, and recovery settles only directories whose lock it can take: their writer is gone, so no
file in them is still being committed. (Files straight in tmp/ come from versions before this.)

The outgoing queue shares its rules with this module (app/queue/enqueue.py): a submission's queue rows
come from `Queued.rows` and are inserted (and found by recovery) through the queue table's owner,
app/queue/outgoing.py; `write_durably` here writes the files the queue's jobs enqueue too. With message
content in the database (`[storage] content`: app/store/content.py for stored mail, app/queue/content.py
for the queue) a message has no file: its content rows are inserted in the same group commit as its
message or queue rows.

Throughput: a message's file (and the tmp directory) is fsync'd by a pool of writer threads as soon
as it arrives; then one committer takes every message pending at that moment and commits their rows
in one database transaction (group commit). Blocking work stays off the event loop. The SMTP worker
processes sharing a data dir take turns at committing (a file lock); recovery runs before they start.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.orm import Session

from app.accounts import ensure_account
from app.auth.message import HeaderFields, summarize_headers
from app.config import Config
from app.db import session_factory
from app.store.content import DatabaseMessages, in_database
from app.store.mailboxes import (
    add_messages,
    ensure_mailbox,
    file_id_stored,
    has_accepted_mail_from,
    holds_message,
    new_message_row,
)
from app.store.signals import add_signals

if TYPE_CHECKING:  # app.queue.enqueue writes through this module: the name only, no import cycle
    from app.queue.enqueue import Queued

log = logging.getLogger(__name__)

TMP_DIR = "tmp"
MESSAGES_DIR = "messages"
OUTGOING_DIR = "outgoing"
PATH_SEPARATOR_IN_TMP = "!"
COMMIT_LOCK_FILE = ".store-commit.lock"
# A batch is capped so one commit never holds many megabytes or keeps early sessions waiting long.
MAX_BATCH_MESSAGES = 512
FILE_WRITERS = 8


_sequence = itertools.count()
_T = TypeVar("_T")


def new_file_id() -> str:
    """Unique and sorting by time: microseconds since the epoch, process id and a per-process counter,
    in hex. (Random bytes would cost a getrandom() call, which lets other threads take the GIL.)"""
    return f"{time.time_ns() // 1000:014x}{os.getpid():06x}{next(_sequence) & 0xFFFF:04x}"


def copy_file_ids(file_id: str, count: int) -> list[str]:
    """The file ids of a message's copies (one per mailbox): the first is `file_id` itself, so the id
    an SMTP reply gave finds the message; the others add "-2", "-3", ... to it."""
    return [file_id, *(f"{file_id}-{n}" for n in range(2, count + 1))]


def message_path(file_id: str) -> str:
    """Where a message stored in a mailbox lives, relative to the data dir: one directory per UTC day."""
    return f"{MESSAGES_DIR}/{time.strftime('%Y%m%d', time.gmtime())}/{file_id}"


def outgoing_path(file_id: str) -> str:
    return f"{OUTGOING_DIR}/{file_id}"


@dataclass(frozen=True)
class MailboxCopy:
    """One copy of an incoming message for a mailbox; `columns` are further message row columns
    (app/store/mailboxes.py)."""

    account: str
    mailbox: str
    columns: dict[str, Any] = field(default_factory=dict)
    # Set for rejects (SPEC R3.2): the mailbox it would have gone to. A reject is stored once per
    # Message-ID, or per content hash without one (SPEC R3.1: a retry is not stored twice).
    destined_mailbox: str | None = None
    # A forward ruleset matched (SPEC R3.5): its stored signals leave out the forwarder's.
    forwarded: bool = False


@dataclass(frozen=True)
class _Outgoing:
    """A submitted message for the queue, sent by the account named `account` (its id looked up, or
    the account made, at commit, like a mailbox)."""

    account: str
    message: Queued
    default_max_attempts: int


@dataclass
class _Job:
    size: int
    copies: Sequence[MailboxCopy] | _Outgoing
    relatives: list[str]  # final paths under the data dir: one per copy (one for outgoing)
    tmp_paths: list[Path]
    future: asyncio.Future[list[str]]
    # The parts (our prefix, then the message) when the content goes into the database with the rows.
    content: tuple[bytes, bytes] | None = None


@dataclass(frozen=True)
class _PlannedFile:
    tmp: Path | None  # None: content stored in the database, no file
    relative: str  # final path under the data dir (or the content's path in the database)
    rows: list[dict[str, Any]]
    # What inserts the rows of files of this kind (_insert_message_rows for a mailbox's); a batch
    # calls it once with all its files of that kind.
    insert_rows: Callable[[Session, list[_PlannedFile]], None]
    forwarded: bool = False  # a mailbox message's MailboxCopy.forwarded
    content: tuple[bytes, bytes] | None = None  # content for the database (tmp is None)


@dataclass(frozen=True)
class RecoveryReport:
    completed: int  # rows existed: the rename was finished
    removed: int  # no rows: the message was never acknowledged


class StoreError(Exception):
    """The message could not be stored; the SMTP reply is a temporary failure."""


class MessageStore:
    def __init__(self, data_dir: Path, database_url: str, *, in_database: bool = False) -> None:
        """`in_database`: message content goes into the database with its rows, not into files
        (`[storage] content`: app/store/content.py's `in_database`)."""
        self.data_dir = data_dir
        self.in_database = in_database
        self.tmp_dir = data_dir / TMP_DIR
        self._sessions = session_factory(database_url)
        # Files are written and fsync'd as messages arrive, several at once (the filesystem journal
        # commits concurrent fsyncs together); one committer thread owns the database writes.
        self._writers = ThreadPoolExecutor(max_workers=FILE_WRITERS, thread_name_prefix="store-write")
        self._committer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-commit")
        self._pending: list[_Job] = []
        self._committer: asyncio.Task[None] | None = None
        # (account, mailbox) -> (account id, mailbox id); only ids of committed rows go in.
        self._ids: dict[tuple[str, str], tuple[int, int]] = {}
        self._known_dirs: set[Path] = set()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = data_dir / COMMIT_LOCK_FILE
        self._lock_fd: int | None = None
        self._own_dir: tuple[int, Path, int] | None = None  # (pid, directory under tmp/, its locked fd)

    @classmethod
    def of(cls, config: Config) -> MessageStore:
        """The store `config` names: its data dir, its database, and `[storage] content`."""
        return cls(config.data_dir, config.resolved_database_url, in_database=in_database(config))

    # Public API.

    async def store_copies(
        self,
        content: bytes,
        copies: Sequence[MailboxCopy],
        *,
        prefix: bytes = b"",
        file_id: str | None = None,
        fields: HeaderFields | None = None,
    ) -> list[str]:
        """Store a copy per mailbox durably; the file ids stored (a copy its mailbox already holds, a
        retried reject or the retry of a rescued one, is left out: see holds_message).
        Message-ID and Subject are indexed from the message itself, whoever hands it in. `prefix`, our
        own trace fields, is written before the content: a large message is not copied to prepend them.
        `file_id` (the SMTP transaction's id, new_file_id()) names the first copy; see copy_file_ids.
        `fields`: the content's header_fields, when the caller has them already."""
        indexed = summarize_headers(content, fields)
        found = {
            "message_id": indexed.message_id,
            "subject": indexed.subject,
            "content_hash": hashlib.sha256(content).hexdigest(),
        }
        copies = [replace(c, columns={**found, **c.columns}) for c in copies]
        paths = [message_path(f) for f in copy_file_ids(file_id or new_file_id(), len(copies))]
        return await self._submit((prefix, content), copies, paths)

    async def enqueue_outgoing(
        self,
        message: Queued,
        *,
        account: str,
        default_max_attempts: int,
        prefix: bytes = b"",
        file_id: str | None = None,
    ) -> str:
        """Store a submitted message (`prefix` then its content) and its queue rows durably (the
        queue's rules: app/queue/enqueue.py); its file id (`file_id`, the SMTP transaction's id, when
        given). The rows belong to the account named `account`, made on demand like a mailbox's."""
        outgoing = _Outgoing(account, message, default_max_attempts)
        relatives = [outgoing_path(file_id or new_file_id())]
        (stored,) = await self._submit((prefix, message.content), outgoing, relatives)
        return stored

    async def has_accepted_mail_from(self, domain: str) -> bool:
        """Whether mail From `domain` was ever accepted (not rejected); read in a worker thread."""
        return await self.read(lambda session: has_accepted_mail_from(session, domain))

    async def read(self, reader: Callable[[Session], _T]) -> _T:
        """`reader`'s result, called with a session of the store's database in a worker thread: the
        SMTP workers' event loop never waits on the database."""

        def run() -> _T:
            with self._sessions() as session:
                return reader(session)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    def recover(self) -> RecoveryReport:
        """Settle files a crash left in tmp/ (see the module doc). Call before accepting mail."""
        settled: list[bool] = []  # per file: completed (True) or removed
        with self._sessions() as session:
            for entry in sorted(os.scandir(self.tmp_dir), key=_name):
                if entry.is_dir(follow_symlinks=False):
                    settled += self._recover_dir(session, Path(entry.path))
                else:
                    settled.append(self._settle(session, Path(entry.path)))
        fsync_dir(self.tmp_dir)
        return RecoveryReport(completed=settled.count(True), removed=settled.count(False))

    def _recover_dir(self, session: Session, directory: Path) -> list[bool]:
        """Settle an abandoned store directory and remove it; one whose store still lives is left alone."""
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []  # its store closed and removed it since the listing
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("store recovery: %s is in use by a running process; left alone", directory.name)
                return []
            settled = [self._settle(session, Path(e.path)) for e in sorted(os.scandir(directory), key=_name)]
            os.rmdir(directory)  # under the lock: a store that just made it sees it gone (_claim_tmp_dir)
            return settled
        finally:
            os.close(fd)

    def _settle(self, session: Session, tmp: Path) -> bool:
        """Finish the rename of a committed file (True) or delete an unacknowledged one (False)."""
        relative = tmp.name.replace(PATH_SEPARATOR_IN_TMP, "/")
        if _rows_exist(session, relative):
            self._move_into_place(tmp, relative)
            return True
        tmp.unlink()
        return False

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer
        self._writers.shutdown(wait=True)
        self._committer_thread.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._own_dir is not None and self._own_dir[0] == os.getpid():
            _, path, fd = self._own_dir
            with suppress(OSError):  # not empty: a file committed but not moved, which recovery finishes
                os.rmdir(path)
            os.close(fd)
            self._own_dir = None

    # Writing files, then the group commit.

    async def _submit(
        self, parts: tuple[bytes, bytes], copies: Sequence[MailboxCopy] | _Outgoing, relatives: list[str]
    ) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            tmp_paths = await self._write_tmp_files(copies, relatives, parts)
        except Exception as e:
            log.exception("writing a message file failed")
            raise StoreError(str(e)) from None
        content = parts if self.in_database else None
        job = _Job(sum(map(len, parts)), copies, relatives, tmp_paths, loop.create_future(), content)
        self._pending.append(job)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await job.future

    async def _write_tmp_files(
        self, copies: Sequence[MailboxCopy] | _Outgoing, relatives: list[str], parts: tuple[bytes, bytes]
    ) -> list[Path]:
        """The job's files in this store's tmp directory, written by the writer threads; none for
        content that goes into the database."""
        if self.in_database:
            return []
        directory = self._tmp_dir_of_this_process()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writers, _write_tmp_files, directory, relatives, parts)

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[:MAX_BATCH_MESSAGES]
            del self._pending[:MAX_BATCH_MESSAGES]
            try:
                outcomes = await loop.run_in_executor(self._committer_thread, self._store_batch, batch)
            except Exception as e:  # e.g. the database is unreachable: every job in the batch fails
                log.exception("storing %d message(s) failed", len(batch))
                outcomes = [StoreError(str(e))] * len(batch)
                for job in batch:
                    _unlink_all(job.tmp_paths)
            for job, outcome in zip(batch, outcomes, strict=True):
                if job.future.done():  # the session went away meanwhile
                    continue
                if isinstance(outcome, Exception):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _store_batch(self, batch: list[_Job]) -> Sequence[list[str] | Exception]:
        """All jobs in one transaction; if that fails, each job alone, so one bad job fails alone."""
        try:
            return self._store_jobs(batch)
        except Exception:
            if len(batch) == 1:
                _unlink_all(batch[0].tmp_paths)
                raise
            log.warning("group commit of %d messages failed; storing them one by one", len(batch))
        outcomes: list[list[str] | Exception] = []
        for job in batch:
            try:
                outcomes += self._store_jobs([job])
            except Exception as e:
                log.exception("storing a message failed")
                _unlink_all(job.tmp_paths)
                outcomes.append(StoreError(str(e)))
        return outcomes

    def _store_jobs(self, jobs: list[_Job]) -> list[list[str]]:
        new_ids: dict[tuple[str, str], tuple[int, int]] = {}
        try:
            with self._commit_lock(), self._sessions() as session:
                planned = [self._plan_rows(session, job, new_ids) for job in jobs]
                _insert_planned_rows(session, planned)
                session.commit()
        except BaseException:
            self._ids.clear()  # ids created in the failed transaction are gone; ask the DB again
            raise
        self._ids.update(new_ids)
        # Committed: from here on each message is stored whatever happens (recover() finishes a rename).
        for job, files in zip(jobs, planned, strict=True):
            kept = {f.tmp for f in files}
            _unlink_all([p for p in job.tmp_paths if p not in kept])  # duplicate rejects
            for f in files:
                if f.tmp is None:
                    continue  # committed with its rows: nothing to move
                try:
                    self._move_into_place(f.tmp, f.relative)
                except OSError as e:  # stored all the same: the next start's recover() renames it
                    log.error("moving %s into place failed (recovery will finish it): %s", f.relative, e)
        return [[f.relative.rpartition("/")[2] for f in files] for files in planned]

    @contextmanager
    def _commit_lock(self) -> Iterator[None]:
        """Serialise the commits of the SMTP worker processes sharing this data dir.

        Left to SQLite, a writer that finds the database locked sleeps in steps of 1, 2, 5, 10 ms
        and more before it tries again; a lock the kernel hands over at release wakes it at once."""
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _plan_rows(
        self, session: Session, job: _Job, new_ids: dict[tuple[str, str], tuple[int, int]]
    ) -> list[_PlannedFile]:
        """The job's files with the rows that will point at them (a duplicate reject has none)."""
        size = job.size
        if isinstance(job.copies, _Outgoing):
            out = job.copies
            account_id, _ = self._ids_for(session, out.account, None, new_ids)
            relative = job.relatives[0]
            rows = out.message.rows(relative, size, out.default_max_attempts, account_id)
            tmp = job.tmp_paths[0] if job.tmp_paths else None
            return [_PlannedFile(tmp, relative, rows, _insert_outgoing_rows, content=job.content)]
        files = []
        # No files: the content goes into the database.
        tmps: Sequence[Path | None] = job.tmp_paths or [None] * len(job.relatives)
        for copy, relative, tmp in zip(job.copies, job.relatives, tmps, strict=True):
            account_id, mailbox_id = self._ids_for(session, copy.account, copy.mailbox, new_ids)
            destined_id = None
            if copy.destined_mailbox is not None:
                _, destined_id = self._ids_for(session, copy.account, copy.destined_mailbox, new_ids)
                if holds_message(session, mailbox_id, copy.columns):
                    continue
            elif holds_message(session, mailbox_id, copy.columns, rescued=True):
                continue
            row = new_message_row(
                copy.columns,
                account_id=account_id,
                mailbox_id=mailbox_id,
                destined_mailbox_id=destined_id,
                path=relative,
                size=size,
            )
            planned = _PlannedFile(tmp, relative, [row], _insert_message_rows, copy.forwarded, job.content)
            files.append(planned)
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

    # Files.

    def _tmp_dir_of_this_process(self) -> Path:
        """This store's locked directory under tmp/, made on first use (and anew in a forked child:
        the lock is the parent's)."""
        if self._own_dir is None or self._own_dir[0] != os.getpid():
            path, fd = _claim_tmp_dir(self.tmp_dir)
            self._own_dir = (os.getpid(), path, fd)
        return self._own_dir[1]

    def _move_into_place(self, tmp: Path, relative: str) -> None:
        final = self.data_dir / relative
        if final.parent not in self._known_dirs:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(final.parent)
        os.replace(tmp, final)


def _claim_tmp_dir(tmp_dir: Path) -> tuple[Path, int]:
    """A new directory under `tmp_dir` and an fd holding its exclusive flock (see the module doc)."""
    while True:
        path = tmp_dir / new_file_id()
        path.mkdir()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Between mkdir and flock a recovery may have found it empty and removed it: then another.
        if _names_same_file(path, fd):
            fsync_dir(tmp_dir)
            return path, fd
        os.close(fd)


def _names_same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _write_tmp_files(directory: Path, relatives: list[str], parts: tuple[bytes, bytes]) -> list[Path]:
    """One tmp file per final path, written durably (`write_durably`)."""
    paths = [directory / relative.replace("/", PATH_SEPARATOR_IN_TMP) for relative in relatives]
    write_durably([(path, parts) for path in paths])
    return paths


def write_durably(files: Sequence[tuple[Path, Sequence[bytes]]], *, concurrently: bool = False) -> None:
    """Create each file (never over another) from its parts and fsync it, then fsync the files'
    directories, so that the files and their names are durable before any row names them; on
    failure none is left behind. The one writer of message files: the store's and the queue's.

    `concurrently`: several files at once in a thread pool (the filesystem journal commits
    concurrent fsyncs together), for a caller with many files and no writer threads of its own."""
    written: list[Path] = []  # only files this call created are removed on failure

    def write(path: Path, parts: Sequence[bytes]) -> None:
        with open(path, "xb") as f:
            written.append(path)
            f.writelines(parts)
            f.flush()
            os.fsync(f.fileno())

    try:
        if concurrently and len(files) > 1:
            with ThreadPoolExecutor(min(16, len(files)), thread_name_prefix="file-writer") as writers:
                list(writers.map(lambda file: write(*file), files))
        else:
            for path, parts in files:
                write(path, parts)
        for directory in {path.parent for path, _ in files}:
            fsync_dir(directory)
    except BaseException:
        _unlink_all(written)
        raise


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _insert_message_rows(session: Session, files: list[_PlannedFile]) -> None:
    """Mailbox messages' rows (and their content, when in the database) and, in the same transaction,
    their reputation signals (SPEC R3.4)."""
    in_database = _database_contents(files)
    if in_database:
        DatabaseMessages.add(session, in_database)
    rows = [row for f in files for row in f.rows]
    forwarded = [f.forwarded for f in files for _ in f.rows]
    ids = add_messages(session, rows)
    add_signals(session, zip(ids, rows, forwarded, strict=True))


def _database_contents(files: list[_PlannedFile]) -> list[tuple[str, tuple[bytes, bytes]]]:
    """(path, parts) of the files whose content goes into the database."""
    return [(f.relative, f.content) for f in files if f.content is not None]


def _insert_planned_rows(session: Session, planned: list[list[_PlannedFile]]) -> None:
    """The rows of every planned file, one INSERT per kind of row."""
    by_insert: dict[Callable[[Session, list[_PlannedFile]], None], list[_PlannedFile]] = {}
    for files in planned:
        for f in files:
            by_insert.setdefault(f.insert_rows, []).append(f)
    for insert_rows, kind in by_insert.items():
        insert_rows(session, kind)


def _rows_exist(session: Session, relative: str) -> bool:
    if relative.startswith(f"{MESSAGES_DIR}/"):
        return file_id_stored(session, relative.rpartition("/")[2])
    if relative.startswith(f"{OUTGOING_DIR}/"):
        return _outgoing_path_in_use(session, relative)
    return False


# The queue's rows and content, through their owners app/queue/outgoing.py and app/queue/content.py.
# Their modules are imported here, when the store first queues or recovers a submission, and nowhere
# else in this module: the queue imports this module (OUTGOING_DIR, write_durably), so importing them
# at the top would be a cycle.


def _insert_outgoing_rows(session: Session, files: list[_PlannedFile]) -> None:
    from app.queue.content import DatabaseContent
    from app.queue.outgoing import insert_rows

    in_database = _database_contents(files)
    if in_database:
        DatabaseContent().add(session, in_database)
    insert_rows(session, [row for f in files for row in f.rows])


def _outgoing_path_in_use(session: Session, relative: str) -> bool:
    from app.queue.outgoing import path_in_use

    return path_in_use(session, relative)


def awaiting_rename(data_dir: Path, relative: str) -> bool:
    """Whether the committed file `relative` is still in tmp/: rows are committed before their file is
    renamed into place, and a crash in between leaves the rename to the next start's recover()."""
    name = relative.replace("/", PATH_SEPARATOR_IN_TMP)
    tmp = data_dir / TMP_DIR
    return (tmp / name).exists() or any(tmp.glob(f"*/{name}"))


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
