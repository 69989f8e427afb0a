"""The durable store: files and rows together, group commit, recovery of a crash's leftovers, accounts."""

from __future__ import annotations

import asyncio
import fcntl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from app.accounts import configured_mailboxes, ensure_account, sync_from_config
from app.address import AddressError
from app.config import load_config
from app.db import engine_for, session_scope
from app.migrate import upgrade_database
from app.models import Account, Mailbox, Message, OutgoingMessage
from app.queue.enqueue import Queued
from app.store.content import FileMessages
from app.store.files import (
    COMMIT_LOCK_FILE,
    TMP_DIR,
    MailboxCopy,
    MessageStore,
    StoreError,
    message_path,
    new_file_id,
    outgoing_path,
    write_durably,
)
from app.store.mailboxes import MoveRules, find_message, has_accepted_mail_from, move_messages
from tests.support.configs import write_config


@pytest.fixture
async def store(tmp_path: Path, sqlite_url: str) -> AsyncIterator[MessageStore]:
    message_store = MessageStore(tmp_path / "data", sqlite_url)
    yield message_store
    await message_store.close()


def rows(url: str) -> list[Message]:
    with session_scope(url) as session:
        return list(session.scalars(select(Message).order_by(Message.id)))


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


async def test_store_copies_writes_the_file_and_the_row(store: MessageStore, sqlite_url: str) -> None:
    copy = MailboxCopy("alice", "Inbox", {"msg_from": "x@y.example", "message_id": "<1@y>"})
    (file_id,) = await store.store_copies(b"Subject: hi\r\n\r\nbody\r\n", [copy])
    (row,) = rows(sqlite_url)
    assert (row.file_id, row.size, row.msg_from, row.seen) == (file_id, 21, "x@y.example", False)
    assert row.path == message_path(file_id) and row.mailbox_orig_id == row.mailbox_id
    assert (store.data_dir / row.path).read_bytes() == b"Subject: hi\r\n\r\nbody\r\n"
    assert files_under(store.data_dir / TMP_DIR) == []
    with session_scope(sqlite_url) as session:
        names = session.execute(select(Account.name, Mailbox.name).join(Mailbox)).all()
    assert names == [("alice", "Inbox")], "account and mailbox rows are made on demand"


async def test_concurrent_messages_share_commits(store: MessageStore, sqlite_url: str) -> None:
    commits: list[int] = []
    event.listen(engine_for(sqlite_url), "commit", lambda _conn: commits.append(1))
    contents = [f"Subject: {i}\r\n\r\n{i}\r\n".encode() for i in range(50)]
    # Hold the commit lock, as another SMTP worker committing would: every message queues up behind it.
    with open(store.data_dir / COMMIT_LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sending = [
            asyncio.ensure_future(store.store_copies(c, [MailboxCopy("alice", "Inbox", {"subject": str(i)})]))
            for i, c in enumerate(contents)
        ]
        deadline = time.monotonic() + 10
        while len(files_under(store.data_dir / TMP_DIR)) < len(contents):  # all written, waiting
            assert time.monotonic() < deadline, "the files were not written"
            await asyncio.sleep(0.01)
        fcntl.flock(lock, fcntl.LOCK_UN)
    await asyncio.gather(*sending)
    stored = rows(sqlite_url)
    assert len(stored) == 50
    for row in stored:
        assert (store.data_dir / row.path).read_bytes() == contents[int(row.subject or "")]
    # The batch that was waiting for the lock, then (nearly) all the others in one.
    assert len(commits) <= 5, f"{len(commits)} commits for 50 waiting messages: no group commit"


async def test_one_bad_message_fails_alone(store: MessageStore, sqlite_url: str) -> None:
    good = [MailboxCopy("alice", "Inbox", {"subject": "good"})]
    bad = [MailboxCopy("alice", "Inbox", {"subject": object()})]  # cannot be bound as a value
    results = await asyncio.gather(
        store.store_copies(b"good 1\r\n", good),
        store.store_copies(b"bad\r\n", bad),
        store.store_copies(b"good 2\r\n", good),
        return_exceptions=True,
    )
    assert isinstance(results[1], StoreError)
    assert [r.subject for r in rows(sqlite_url)] == ["good", "good"]
    assert sorted(p.read_bytes() for p in files_under(store.data_dir / "messages")) == [
        b"good 1\r\n",
        b"good 2\r\n",
    ]
    assert files_under(store.data_dir / TMP_DIR) == [], "the failed message's file is removed"


async def test_reject_is_stored_once_per_message_id(store: MessageStore, sqlite_url: str) -> None:
    reject = MailboxCopy(
        "alice", "Rejects", {"message_id": "<same@x>", "is_reject": True}, destined_mailbox="Inbox"
    )
    assert len(await store.store_copies(b"one\r\n", [reject])) == 1
    assert await store.store_copies(b"one\r\n", [reject]) == []
    other = MailboxCopy("alice", "Rejects", {"message_id": "<other@x>"}, destined_mailbox="Inbox")
    assert len(await store.store_copies(b"two\r\n", [other])) == 1
    (first, second) = rows(sqlite_url)
    assert first.mailbox_destined_id is not None and first.mailbox_destined_id != first.mailbox_id
    assert second.mailbox_destined_id == first.mailbox_destined_id


async def test_a_rescued_reject_is_not_stored_again(store: MessageStore, sqlite_url: str) -> None:
    """A junk reject is answered 451, so its sender retries; once the user has moved it out of
    Rejects, the retry is accepted (250) but the mailbox already holds the message."""
    held = {"message_id": "<held@x>", "is_reject": True, "seen": True}
    reject = MailboxCopy("alice", "Rejects", held, "Inbox")
    (file_id,) = await store.store_copies(b"held\r\n", [reject])
    with session_scope(sqlite_url) as session:
        row = find_message(session, file_id)
        assert row is not None
        rules = MoveRules("Junk", "Rejects", FileMessages(store.data_dir))
        move_messages(session, row["account_id"], [row["id"]], "Inbox", rules=rules)
    retry = MailboxCopy("alice", "Inbox", {"message_id": "<held@x>"})
    assert await store.store_copies(b"held\r\n", [retry]) == []
    # Mail that was never held is stored however often it comes: only a rescue makes a retry known.
    again = MailboxCopy("alice", "Inbox", {"message_id": "<plain@x>"})
    assert len(await store.store_copies(b"plain\r\n", [again])) == 1
    assert len(await store.store_copies(b"plain\r\n", [again])) == 1
    assert sorted(r.message_id for r in rows(sqlite_url)) == ["<held@x>", "<plain@x>", "<plain@x>"]


async def test_outgoing_file_and_one_row_per_recipient(store: MessageStore, sqlite_url: str) -> None:
    message = Queued(b"msg\r\n", "bob@a.example", ("x@B.example", "y@c.example"))
    file_id = await store.enqueue_outgoing(message, account="bob", default_max_attempts=3, prefix=b"T\r\n")
    with session_scope(sqlite_url) as session:
        queued = session.scalars(select(OutgoingMessage).order_by(OutgoingMessage.id)).all()
        account_id = session.scalars(select(Account.id).where(Account.name == "bob")).one()
        assert [(q.recipient, q.recipient_domain, q.path, q.size) for q in queued] == [
            ("x@B.example", "b.example", outgoing_path(file_id), 8),
            ("y@c.example", "c.example", outgoing_path(file_id), 8),
        ]
        assert all(q.account_id == account_id and q.max_attempts == 3 for q in queued)
        assert all(q.require_tls is None and not (q.is_dmarc_report or q.is_tls_report) for q in queued)
    assert (store.data_dir / outgoing_path(file_id)).read_bytes() == b"T\r\nmsg\r\n"


@pytest.mark.parametrize("bad", ["bob\r\nRCPT TO:<x@evil.example>@a.example", "no-domain", "a b@c.example"])
async def test_the_queue_takes_only_valid_addresses(bad: str) -> None:
    """The queue's addresses become MAIL FROM and RCPT TO: nothing else gets that far."""
    with pytest.raises(AddressError):
        Queued(b"", bad, ("x@b.example",))
    with pytest.raises(AddressError):
        Queued(b"", "bob@a.example", ("x@b.example", bad))
    assert Queued(b"", "", ("x@b.example",)).sender == ""  # the null reverse-path


@pytest.mark.parametrize("concurrently", [False, True])
def test_a_failed_write_leaves_no_file_of_its_own(tmp_path: Path, concurrently: bool) -> None:
    """write_durably, the store's and the queue's writer: never over an existing file, and on failure
    it removes what it wrote (nothing a row could name), not the file that was there."""
    (tmp_path / "taken").write_bytes(b"someone else's")
    files = [(tmp_path / name, (b"a", b"b")) for name in ("one", "taken", "two")]
    with pytest.raises(FileExistsError):
        write_durably(files, concurrently=concurrently)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken").read_bytes() == b"someone else's"
    write_durably([(tmp_path / "one", (b"a", b"b"))], concurrently=concurrently)
    assert (tmp_path / "one").read_bytes() == b"ab"


async def test_has_accepted_mail_from(store: MessageStore, sqlite_url: str) -> None:
    reject = MailboxCopy("alice", "Rejects", {"msg_from_domain": "a.example", "is_reject": True}, "Inbox")
    await store.store_copies(b"x\r\n", [reject])
    assert not await store.has_accepted_mail_from("a.example")
    await store.store_copies(b"y\r\n", [MailboxCopy("alice", "Inbox", {"msg_from_domain": "a.example"})])
    assert await store.has_accepted_mail_from("a.example")
    assert not await store.has_accepted_mail_from("b.example")
    with session_scope(sqlite_url) as session:
        assert has_accepted_mail_from(session, "a.example")


def test_recovery_finishes_committed_files_and_removes_the_rest(tmp_path: Path, sqlite_url: str) -> None:
    data = tmp_path / "data"
    store = MessageStore(data, sqlite_url)
    committed, unacknowledged = new_file_id(), new_file_id()
    queued = new_file_id()
    # A crash after the commit, before the rename; and one before the commit.
    with session_scope(sqlite_url) as session:
        account = ensure_account(session, "alice")
        mailbox = Mailbox(account_id=account.id, name="Inbox")
        session.add(mailbox)
        session.flush()
        session.add(
            Message(
                file_id=committed,
                account_id=account.id,
                mailbox_id=mailbox.id,
                uid=1,
                modseq=1,
                size=4,
                path=message_path(committed),
            )
        )
        session.add(
            OutgoingMessage(
                sender="a@b", recipient="c@d", recipient_domain="d", path=outgoing_path(queued), size=4
            )
        )
    for relative in (message_path(committed), message_path(unacknowledged), outgoing_path(queued)):
        (data / TMP_DIR / relative.replace("/", "!")).write_bytes(b"body")
    (data / TMP_DIR / "stray-file").write_bytes(b"?")

    report = store.recover()

    assert (report.completed, report.removed) == (2, 2)
    assert list((data / TMP_DIR).iterdir()) == []
    assert (data / message_path(committed)).read_bytes() == b"body"
    assert (data / outgoing_path(queued)).read_bytes() == b"body"
    assert not (data / message_path(unacknowledged)).exists()
    assert store.recover().completed == 0, "recovery is idempotent"


def test_sync_from_config_creates_every_configured_mailbox(tmp_path: Path) -> None:
    extra = """
[[accounts.admin.rulesets]]
mailbox = "Lists"
smtp_mail_from_regexp = "@lists\\\\.example$"
"""
    config = load_config(write_config(tmp_path / "cfg", extra))
    upgrade_database(config.resolved_database_url)
    assert configured_mailboxes(config) == {
        "admin": {"Inbox", "Junk", "Rejects", "Lists", "Postmaster", "TLSRPT"}
    }
    for _ in range(2):  # a second run finds everything there
        with session_scope(config.resolved_database_url) as session:
            sync_from_config(session, config)
    with session_scope(config.resolved_database_url) as session:
        names = session.scalars(select(Mailbox.name).order_by(Mailbox.name)).all()
        assert names == ["Inbox", "Junk", "Lists", "Postmaster", "Rejects", "TLSRPT"]
        assert session.scalar(select(func.count()).select_from(Account)) == 1
