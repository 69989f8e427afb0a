"""The store's write path for reputation (SPEC R3.1, R3.4, R3.5): a message's signal rows are committed
with its row, a forwarded message's leave out the forwarder, a retried reject without Message-ID is
recognised by its content."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Message, MessageSignal
from app.store.files import MailboxCopy, MessageStore

COLUMNS = {
    "msg_from": "a@sender.example",
    "msg_from_validated": True,
    "msg_from_domain": "sender.example",
    "spf_mailfrom_validated": True,
    "mail_from_domain": "forwarder.example",
    "remote_ip": "192.0.2.1",
}


@pytest.fixture
async def store(tmp_path: Path, sqlite_url: str) -> AsyncIterator[MessageStore]:
    message_store = MessageStore(tmp_path / "data", sqlite_url)
    yield message_store
    await message_store.close()


def signals(url: str) -> dict[int, set[str]]:
    """Signal kinds per message row id."""
    found: dict[int, set[str]] = {}
    with session_scope(url) as session:
        for signal in session.scalars(select(MessageSignal)):
            found.setdefault(signal.message_id, set()).add(signal.kind)
    return found


async def test_signals_are_committed_with_the_message(store: MessageStore, sqlite_url: str) -> None:
    plain = MailboxCopy("alice", "Inbox", dict(COLUMNS))
    forwarded = MailboxCopy("bob", "Inbox", dict(COLUMNS), forwarded=True)
    await store.store_copies(b"Subject: x\r\n\r\nbody\r\n", [plain, forwarded])
    with session_scope(sqlite_url) as session:
        alice_id, bob_id = session.scalars(select(Message.id).order_by(Message.id)).all()
    assert signals(sqlite_url) == {
        alice_id: {"from", "domain", "spf", "ip1", "ip2", "ip3"},
        bob_id: {"from", "domain"},  # the forwarder's IP and MAIL FROM domain are left out
    }


async def test_a_reject_without_message_id_is_stored_once(store: MessageStore, sqlite_url: str) -> None:
    reject = MailboxCopy("alice", "Rejects", {"is_reject": True}, destined_mailbox="Inbox")
    content = b"Subject: no id\r\n\r\nbody\r\n"
    assert len(await store.store_copies(content, [reject])) == 1
    assert await store.store_copies(content, [reject]) == [], "the retry is the same content"
    assert len(await store.store_copies(content + b"more\r\n", [reject])) == 1
    with session_scope(sqlite_url) as session:
        hashes = session.scalars(select(Message.content_hash).order_by(Message.id)).all()
    assert hashes[0] == hashlib.sha256(content).hexdigest() and len(set(hashes)) == 2


async def test_reads_run_in_a_worker_thread(store: MessageStore) -> None:
    """The SMTP workers' event loop never waits on the database: the analysis reads through this."""
    thread = await store.read(lambda session: threading.current_thread())
    assert thread is not threading.main_thread()
