"""Modification sequences (SPEC R8.3, RFC 7162): every transaction that changes a mailbox's messages
(one arriving, leaving or changing flags) raises the mailbox's HIGHESTMODSEQ by one, and the messages
it changed take the new value; changes_since reads what changed after a value."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.accounts import ensure_account
from app.db import session_scope
from app.migrate import upgrade_database
from app.store.content import FileMessages
from app.store.mailboxes import (
    MoveRules,
    changes_since,
    ensure_mailbox,
    expunge_deleted,
    move_messages,
    set_flags,
    uid_state,
)
from tests.store.test_mailboxes import store
from tests.store.test_uids import old_database


def highest(session: Session, mailbox: str) -> int:
    found = uid_state(session, ensure_account(session, "alice").id, mailbox)
    assert found is not None
    return found.highestmodseq


def modseqs(session: Session, mailbox: str, since: int = 0) -> dict[int, int]:
    """UID -> modseq of alice's messages in the mailbox changed after `since`."""
    account_id = ensure_account(session, "alice").id
    found = uid_state(session, account_id, mailbox)
    assert found is not None
    changes = changes_since(session, account_id, found.mailbox_id, since)
    return {} if changes is None else {row["uid"]: row["modseq"] for row in changes.changed}


def test_each_change_raises_the_mailboxs_modseq_once_and_marks_what_it_changed(
    url: str, tmp_path: Path
) -> None:
    with session_scope(url) as session:
        ids = [store(session, "alice", "Inbox", f"m{n}") for n in range(3)]
        alice = ensure_account(session, "alice").id
        ensure_mailbox(session, alice, "Archive")
        start = highest(session, "Inbox")
        assert modseqs(session, "Inbox") == {1: start - 2, 2: start - 1, 3: start}
    with session_scope(url) as session:  # two messages change in one transaction: one new value
        assert set_flags(session, alice, ids[:2], seen=True) == 2
    with session_scope(url) as session:
        assert highest(session, "Inbox") == start + 1
        assert modseqs(session, "Inbox", start) == {1: start + 1, 2: start + 1}
        assert set_flags(session, alice, ids[:2], seen=True) == 0  # nothing changes: nothing raised
        assert highest(session, "Inbox") == start + 1
    rules = MoveRules("Junk", "Rejects", FileMessages(tmp_path))
    with session_scope(url) as session:  # a move changes both mailboxes
        archive = highest(session, "Archive")
        move_messages(session, alice, [ids[2]], "Archive", rules=rules)
    with session_scope(url) as session:
        assert highest(session, "Inbox") == start + 2
        assert modseqs(session, "Archive", archive) == {1: archive + 1}
        found = uid_state(session, alice, "Inbox")
        assert found is not None
        changes = changes_since(session, alice, found.mailbox_id, start + 1)
        assert changes is not None and changes.uids == [1, 2] and changes.changed == []
        assert changes_since(session, alice, found.mailbox_id, start + 2) is None
        set_flags(session, alice, [ids[0]], deleted=True)
    with session_scope(url) as session:
        assert expunge_deleted(session, alice, found.mailbox_id) != []
        assert expunge_deleted(session, alice, found.mailbox_id) == []  # nothing to expunge: not raised
    with session_scope(url) as session:
        assert highest(session, "Inbox") == start + 4
        changes = changes_since(session, alice, found.mailbox_id, start + 3)
        assert changes is not None and changes.uids == [2]


def test_changes_since_is_the_accounts_own(url: str) -> None:
    with session_scope(url) as session:
        store(session, "alice", "Inbox", "a1")
        bob = ensure_account(session, "bob").id
        box = uid_state(session, ensure_account(session, "alice").id, "Inbox")
        assert box is not None
        assert changes_since(session, bob, box.mailbox_id, 0) is None


def test_migration_starts_existing_mailboxes_and_messages_at_one(tmp_path: Path) -> None:
    url, engine = old_database(tmp_path, "0012")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, file_id, account_id, mailbox_id, uid, received, size, path, seen,"
                " junk, notjunk, is_reject, is_dmarc_report, is_tls_report, spf_mailfrom_validated,"
                " ehlo_validated, msg_from_validated, flagged, answered, draft, deleted)"
                " VALUES (1, 'f', 1, 1, 1, '2026-01-01', 1, 'f', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)"
            )
        )
    engine.dispose()
    upgrade_database(url, "0014")
    with session_scope(url) as session:
        alice = ensure_account(session, "alice").id
        box = uid_state(session, alice, "Inbox")
        assert box is not None and box.highestmodseq == 1
        changes = changes_since(session, alice, box.mailbox_id, 0)
        assert changes is not None and [row["modseq"] for row in changes.changed] == [1]
        set_flags(session, alice, [1], seen=True)  # the next change is above every existing value
    with session_scope(url) as session:
        assert highest(session, "Inbox") == 2
