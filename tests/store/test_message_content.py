"""Stored mail's content behind one interface (app/store/content.py, SPEC R9.1): in files under the
data dir (the default) or in the database (`[storage] content = "database"`), each on SQLite and
PostgreSQL. Committed with the rows, read whole or in ranges, copied with a copy's row and removed
with the last row that names it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from app.accounts import account_id, sync_from_config
from app.config import Config, load_config
from app.db import session_scope
from app.imap.textsearch import HEADER_STEP, HeaderValues, MessageText
from app.inreports.intake import ReportMessage, parse_stored_report
from app.migrate import upgrade_database
from app.models import MessageContent
from app.store.content import DatabaseMessages, stored_content
from app.store.files import MESSAGES_DIR, MailboxCopy, MessageStore
from app.store.mailboxes import (
    MailboxError,
    MoveRules,
    discard_unnamed,
    expunge_deleted,
    find_message,
    mailbox_id,
    move_messages,
    remove_old_rejects,
    set_flags,
)
from tests.inreports.samples import RFC7489_REPORT, gzipped, message_with
from tests.support.configs import write_config

PREFIX = b"Received: by us\r\n"
CONTENT = b"Subject: stored\r\nMessage-ID: <one@example.net>\r\n\r\n" + b"0123456789" * 100


@pytest.fixture(params=["files", "database"])
def config(request: pytest.FixtureRequest, tmp_path: Path, url: str) -> Config:
    extra = f'\n[storage]\ncontent = "{request.param}"\n\n[rejects]\nkeep_max = 1\n'
    return load_config(write_config(tmp_path / "config", extra, database_url=url))


def deliver(config: Config, content: bytes, copies: list[MailboxCopy]) -> list[str]:
    """Store as SMTP does; the paths of the copies stored."""

    async def store() -> list[str]:
        message_store = MessageStore.of(config)
        try:
            return await message_store.store_copies(content, copies, prefix=PREFIX)
        finally:
            await message_store.close()

    file_ids = asyncio.run(store())
    with session_scope(config.resolved_database_url) as session:
        return [str(row(session, file_id)["path"]) for file_id in file_ids]


def row(session: object, key: int | str) -> dict[str, object]:
    found = find_message(session, key)  # type: ignore[arg-type]
    assert found is not None
    return found


def held(config: Config) -> set[str]:
    """The paths that have content: files under messages/, or rows of message_content."""
    if config.storage.content == "database":
        with session_scope(config.resolved_database_url) as session:
            return set(session.scalars(select(MessageContent.path)))
    return {str(p.relative_to(config.data_dir)) for p in config.data_dir.glob(f"{MESSAGES_DIR}/*/*")}


def test_copies_are_committed_with_their_content_and_read_whole_or_in_ranges(config: Config) -> None:
    paths = deliver(config, CONTENT, [MailboxCopy("admin", "Inbox"), MailboxCopy("admin", "Archive")])
    whole = PREFIX + CONTENT
    content = stored_content(config)
    assert held(config) == set(paths)
    assert list(config.data_dir.glob("tmp/*/*")) == []  # nothing left to rename
    if config.storage.content == "database":
        assert list(config.data_dir.glob(f"{MESSAGES_DIR}/**/*")) == []  # no file at all
    assert content.read_all(paths) == [whole, whole]
    assert content.read(paths[0], 10) == whole[:10]
    assert content.read(paths[0], 10, start=5) == whole[5:15]
    assert content.read(paths[0], start=len(whole) - 3) == whole[-3:]
    assert content.read(paths[0], len(whole) + 100) == whole  # a limit beyond the end
    with pytest.raises(FileNotFoundError):
        content.read("messages/20260101/missing")
    with pytest.raises(FileNotFoundError):
        content.read_all([paths[0], "messages/20260101/missing"])


def test_a_copy_has_content_of_its_own_and_content_goes_with_the_last_row(config: Config) -> None:
    (path,) = deliver(config, CONTENT, [MailboxCopy("admin", "Inbox")])
    rules = MoveRules.of(config, "admin")
    url = config.resolved_database_url
    with session_scope(url) as session:
        sync_from_config(session, config)  # makes Junk
        admin, original = account_id(session, "admin"), int(str(row(session, path.rpartition("/")[2])["id"]))
        (copy_id,) = move_messages(session, admin, [original], "Junk", rules=rules, copy=True)
        copy_path = str(row(session, copy_id)["path"])
    assert held(config) == {path, copy_path}
    assert stored_content(config).read(copy_path) == PREFIX + CONTENT

    with session_scope(url) as session:  # EXPUNGE of the original, as IMAP does it
        set_flags(session, admin, [original], deleted=True)
        inbox = mailbox_id(session, admin, "Inbox")
        assert inbox is not None
        removed = expunge_deleted(session, admin, inbox)
        after_commit = discard_unnamed(session, stored_content(config), [p for _, p in removed])
    after_commit()
    assert held(config) == {copy_path}

    # Content that is gone cannot be copied: refused, nothing added.
    with session_scope(url) as session:
        after_commit = stored_content(config).discard(session, [copy_path])
    after_commit()
    with session_scope(url) as session, pytest.raises(MailboxError, match="cannot be copied"):
        move_messages(session, admin, [copy_id], "Inbox", rules=rules, copy=True)
    assert held(config) == set()


def test_the_rejects_cleanup_removes_content_with_the_rows(config: Config) -> None:
    def reject(number: int) -> str:
        content = CONTENT.replace(b"<one@", b"<reject-%d@" % number)
        copy = MailboxCopy("admin", "Rejects", {"is_reject": True}, destined_mailbox="Inbox")
        (path,) = deliver(config, content, [copy])
        return path

    older, newer = reject(1), reject(2)
    assert held(config) == {older, newer}
    assert remove_old_rejects(config) == 1  # keep_max = 1: the older goes
    assert held(config) == {newer}


def test_search_reads_a_long_header_in_steps_from_either_backend(config: Config) -> None:
    field = b"X-Long: " + b"a" * (2 * HEADER_STEP) + b"\r\n"
    (path,) = deliver(config, field + CONTENT, [MailboxCopy("admin", "Inbox")])
    text = MessageText(stored_content(config), path, 10 * HEADER_STEP, HeaderValues(10))
    assert text.header == PREFIX + field + CONTENT.partition(b"\r\n\r\n")[0]
    assert text.values("SUBJECT") == ("stored",)


def test_a_stored_report_is_parsed_from_either_backend(config: Config) -> None:
    """The worker that parses an incoming report reads its message where `[storage] content` says."""
    report = message_with(gzipped(RFC7489_REPORT), "application/gzip", "report.xml.gz")
    (path,) = deliver(config, report, [MailboxCopy("admin", "DMARC")])
    file_id = path.rpartition("/")[2]
    assert parse_stored_report(config, ReportMessage(file_id, "dmarc")) == "stored"
    assert parse_stored_report(config, ReportMessage(f"{file_id}-9", "dmarc")) == "missing"


def test_searches_of_two_databases_keep_their_header_values_apart(tmp_path: Path) -> None:
    """One process may serve several databases (tests do; so could a CLI): the header values a
    SEARCH keeps are keyed by the database too, not only by the path, which each database names."""
    kept, path = HeaderValues(10), "messages/same-path"
    texts = []
    for n in (1, 2):
        database_url = f"sqlite:///{tmp_path / f'db{n}.db'}"
        upgrade_database(database_url)
        with session_scope(database_url) as session:
            DatabaseMessages.add(session, [(path, [f"Subject: database {n}\r\n\r\nbody\r\n".encode()])])
        texts.append(MessageText(DatabaseMessages(database_url), path, 1000, kept))
    assert [text.values("SUBJECT") for text in texts] == [("database 1",), ("database 2",)]
