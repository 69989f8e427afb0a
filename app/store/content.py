"""Where stored mail (mailbox messages) keeps its content, named by its rows' `path` (SPEC R9.1).

One interface, two backends, chosen by `[storage] content`, the setting that places the outgoing
queue's content too (app/queue/content.py):

- `FileMessages` (the default, one machine): a file under the data dir. app/store/files.py writes it
  (fsync'd in tmp/, renamed into place after its rows' commit); a copy's file is a hard link.
- `DatabaseMessages` (several machines): a row of `message_content`, added in the group commit that
  adds the message rows, so it is committed before the 250, and copied in the transaction that adds
  a copy's row. Any node sharing the database reads it: IMAP and the web need no SMTP node's disk.

Content goes when no message row names it any more (`discard`): the database's in the transaction
that deletes the last row naming it, a file after that transaction's commit, so a rollback never
leaves a row without its content (a crash after the commit leaves a file no row names).

Readers (IMAP FETCH and SEARCH, the web message view, `message show`, the parsing of incoming
reports) read a bounded range (`read`) or, for FETCH, whole messages (`read_all`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import ColumnElement, Connection, LargeBinary, delete, func, insert, literal, select
from sqlalchemy.orm import Session

from app.config import Config
from app.db import engine_for
from app.models import MessageContent

Contents = Sequence[tuple[str, Sequence[bytes]]]  # (path, the parts of its content)


def _nothing() -> None:
    """What is left to do after the commit when the transaction did it all."""


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no content stored", path)


class FileMessages:
    """Content as files under the data dir (the embedded default)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.name = str(data_dir)  # what tells this store's content from another's (a cache key)

    def read(self, path: str, limit: int | None = None, start: int = 0) -> bytes:
        """Up to `limit` octets from offset `start` (None: to the end); OSError if it is gone."""
        with open(self.data_dir / path, "rb") as file:
            if start:
                file.seek(start)
            return file.read(-1 if limit is None else limit)

    def read_all(self, paths: Sequence[str]) -> list[bytes]:
        """Each whole message, in the order given; FileNotFoundError if one is gone."""
        return [(self.data_dir / path).read_bytes() for path in paths]

    def copy(self, session: Session, source: str, target: str) -> None:
        """`target` names the content of `source`: a hard link (message files never change) or,
        where the filesystem cannot link, a copy; durable with its name before the caller commits
        the row naming it (a failed commit leaves it unnamed). OSError if it cannot be made."""
        # A local import: app/store/files.py imports app/store/mailboxes.py, which imports this module.
        from app.store.files import fsync_dir, write_durably

        original, copy = self.data_dir / source, self.data_dir / target
        copy.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(original, copy)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                raise
            write_durably([(copy, [original.read_bytes()])])
            return
        fsync_dir(copy.parent)

    def discard(self, session: Session | Connection, paths: Sequence[str]) -> Callable[[], None]:
        """Nothing before the commit (whose rollback would leave rows without files): what to call
        after it, which unlinks the files."""
        files = [self.data_dir / path for path in paths]
        return lambda: _unlink(files)

    def location(self, path: str) -> str:
        """Where an operator finds the content (`message show`)."""
        return str(self.data_dir / path)


class DatabaseMessages:
    """Content as rows of `message_content`, reached by every node sharing the database."""

    _TABLE = MessageContent.__table__

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.name = database_url  # a cache key (never shown): one process may serve several databases

    @classmethod
    def add(cls, session: Session, contents: Contents) -> None:
        """Add the content rows in the caller's transaction, with the message rows that name them."""
        rows = [{"path": path, "content": b"".join(parts)} for path, parts in contents]
        session.execute(insert(cls._TABLE), rows)

    def read(self, path: str, limit: int | None = None, start: int = 0) -> bytes:
        """Up to `limit` octets from offset `start` (None: to the end), cut by the database so no
        more than that crosses to this process; FileNotFoundError if it is gone."""
        column: ColumnElement[bytes] = self._TABLE.c.content
        if start or limit is not None:
            bounds = (start + 1,) if limit is None else (start + 1, limit)
            column = func.substr(column, *bounds, type_=LargeBinary)
        with engine_for(self.database_url).connect() as connection:
            found = connection.execute(select(column).where(self._TABLE.c.path == path)).scalar()
        if found is None:
            raise _missing(path)
        return bytes(found)

    def read_all(self, paths: Sequence[str]) -> list[bytes]:
        """Each whole message, in the order given, in one query; FileNotFoundError if one is gone."""
        table = self._TABLE
        with engine_for(self.database_url).connect() as connection:
            query = select(table.c.path, table.c.content).where(table.c.path.in_(set(paths)))
            found = {path: bytes(content) for path, content in connection.execute(query)}
        missing = next((path for path in paths if path not in found), None)
        if missing is not None:
            raise _missing(missing)
        return [found[path] for path in paths]

    def copy(self, session: Session, source: str, target: str) -> None:
        """A row for `target` with the content of `source`, in the caller's transaction, without the
        content crossing to this process. FileNotFoundError if `source` has none."""
        table = self._TABLE
        copied = select(literal(target), table.c.content).where(table.c.path == source)
        # RETURNING, not the row count: psycopg reports none (-1) for an INSERT ... SELECT.
        statement = insert(table).from_select(["path", "content"], copied).returning(table.c.path)
        added = session.execute(statement)
        if added.scalar() is None:
            raise _missing(source)

    def discard(self, session: Session | Connection, paths: Sequence[str]) -> Callable[[], None]:
        """Delete the rows in the caller's transaction: nothing is left for after the commit."""
        if paths:
            session.execute(delete(self._TABLE).where(self._TABLE.c.path.in_(paths)))
        return _nothing

    def location(self, path: str) -> str:
        return f"database table message_content, path {path}"


StoredContent = FileMessages | DatabaseMessages


def in_database(config: Config) -> bool:
    """Whether `[storage] content` puts message content in the database (several machines)."""
    return config.storage.content == "database"


def stored_content(config: Config) -> StoredContent:
    """The backend `[storage] content` names."""
    if in_database(config):
        return DatabaseMessages(config.resolved_database_url)
    return FileMessages(config.data_dir)


def _unlink(files: list[Path]) -> None:
    for file in files:
        file.unlink(missing_ok=True)
