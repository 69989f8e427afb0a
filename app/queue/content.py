"""Where the outgoing queue keeps each message's content, named by its rows' `path` (SPEC R9.1).

One interface, two backends, chosen by `[storage] content` (which places stored mail's content too,
app/store/content.py):

- `FileContent` (the default, one machine): a file under the data dir, written durably before any
  row names it (app/queue/enqueue.py); a submission's file is renamed into place after its rows'
  commit (app/store/files.py), and read as "not in place yet" until then.
- `DatabaseContent` (several machines): a row of `outgoing_content`, added in the same transaction
  as the queue rows that name it, so a worker on any node reads what any node queued, and there is
  nothing to rename or recover.

Content goes away with the last row that names it (`end`): the database's in the transaction that
ends that row, a file only after its commit (`remove_soon`, many files at once), so a rollback never
leaves rows without their content. No row is ever added for content older than the rows' own
transaction, so content found without a row stays so: what a crash or two workers finishing one
message's rows at once leave over, the hourly sweep (app/queue/outgoing.py's `remove_orphans`) deletes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy import CTE, ColumnElement, Connection, bindparam, delete, insert, select
from sqlalchemy.orm import Session

from app.config import Config
from app.models import OutgoingContent
from app.models.base import utcnow
from app.store.content import in_database
from app.store.files import OUTGOING_DIR, awaiting_rename, write_durably

Contents = Sequence[tuple[str, Sequence[bytes]]]  # (path, the parts of its content)
P = TypeVar("P")


class FileContent:
    """Content as files under the data dir (the embedded default)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def add(self, session: Session, contents: Contents) -> None:
        """Write the files durably (concurrently, their directory fsync'd once) before the caller adds
        the rows that name them; a rollback leaves files no row names, for the orphan sweep."""
        (self.data_dir / OUTGOING_DIR).mkdir(parents=True, exist_ok=True)
        write_durably([(self.data_dir / path, parts) for path, parts in contents], concurrently=True)

    def read(self, connection: Session | Connection, path: str) -> bytes | None:
        """The content; None while its committed rows wait for the file's rename; OSError if it is lost."""
        try:
            return (self.data_dir / path).read_bytes()
        except FileNotFoundError:
            if awaiting_rename(self.data_dir, path):
                return None
            return (self.data_dir / path).read_bytes()  # renamed since the first read, or lost

    def end(self, connection: Session | Connection, path: str) -> str | None:
        """Nothing before the commit: the path, whose file `remove_soon` deletes after it."""
        return path

    def remove_soon(self, paths: Sequence[str]) -> None:
        """Delete the files of content ended in committed transactions, in this process's background
        thread, all in one hand-off (see `remove_files_soon`)."""
        remove_files_soon([self.data_dir / path for path in paths])

    def delete(self, connection: Session | Connection, paths: set[str]) -> None:
        for path in paths:
            (self.data_dir / path).unlink(missing_ok=True)

    def older_than(self, connection: Session | Connection, age: timedelta) -> list[str]:
        directory = self.data_dir / OUTGOING_DIR
        if not directory.is_dir():
            return []
        cutoff = time.time() - age.total_seconds()
        entries = os.scandir(directory)
        return sorted(
            f"{OUTGOING_DIR}/{e.name}" for e in entries if e.is_file() and e.stat().st_mtime < cutoff
        )

    def location(self, path: str) -> str:
        """Where an operator finds the content (`queue show`)."""
        return str(self.data_dir / path)


class DatabaseContent:
    """Content as rows of `outgoing_content`, reached by every node sharing the database."""

    _TABLE = OutgoingContent.__table__

    def add(self, session: Session, contents: Contents) -> None:
        """Add the content rows in the caller's transaction, with the queue rows that name them."""
        now = utcnow()
        rows = [{"path": path, "content": b"".join(parts), "created": now} for path, parts in contents]
        session.execute(insert(self._TABLE), rows)

    def read(self, connection: Session | Connection, path: str) -> bytes | None:
        """The content (never "not in place yet": it was committed with its rows); OSError if lost."""
        content = connection.execute(select(self._TABLE.c.content).where(self._TABLE.c.path == path)).scalar()
        if content is None:
            raise FileNotFoundError(f"no content stored for {path}")
        return bytes(content)

    def end(self, connection: Session | Connection, path: str) -> str | None:
        """Delete the row in the caller's transaction: nothing is left for after the commit (None)."""
        self.delete(connection, {path})
        return None

    @classmethod
    def end_cte(cls, only_if: ColumnElement[bool]) -> CTE:
        """`end`, if `only_if` holds, as part of one PostgreSQL statement (app/queue/deliver.py's
        outcome in one round trip); it binds `end_params`."""
        table = cls._TABLE
        return delete(table).where(table.c.path == bindparam("content_path"), only_if).cte("ended")

    def end_params(self, path: str) -> dict[str, str]:
        return {"content_path": path}

    def remove_soon(self, paths: Sequence[str]) -> None:
        """Nothing to do: `end` never leaves a path for after the commit."""

    def delete(self, connection: Session | Connection, paths: set[str]) -> None:
        if paths:
            connection.execute(delete(self._TABLE).where(self._TABLE.c.path.in_(paths)))

    def older_than(self, connection: Session | Connection, age: timedelta) -> list[str]:
        query = select(self._TABLE.c.path).where(self._TABLE.c.created < utcnow() - age)
        return sorted(connection.execute(query).scalars())

    def location(self, path: str) -> str:
        return f"database table outgoing_content, path {path}"


QueueContent = FileContent | DatabaseContent


def queue_content(config: Config) -> QueueContent:
    """The backend `[storage] content` names."""
    return DatabaseContent() if in_database(config) else FileContent(config.data_dir)


def remove_files_soon(paths: Sequence[Path]) -> None:
    """Delete finished message files in this process's background thread.

    Unlinking a file that was fsync'd waits on the disk (a millisecond here, more on busy disks); a
    delivery need not wait for it. One hand-off for many files: a hand-off per file cost the delivery
    more than the unlink (the thread wakes and takes the GIL each time). A file whose removal a crash
    prevents is an orphan for the sweep.
    """
    if paths:
        in_background(_unlink_all, paths)


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def in_background(work: Callable[[P], object], argument: P) -> None:
    """Run `work(argument)` in this process's background thread (one, so work runs in the order given):
    what follows a delivery's commits and need not hold up the next message."""
    _background().submit(work, argument)


@cache
def _background_for(pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-background")


def _background() -> ThreadPoolExecutor:
    # Keyed by process id: worker processes are forked, and threads do not survive a fork.
    return _background_for(os.getpid())
