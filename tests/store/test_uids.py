"""IMAP UIDs (SPEC R8.2): each message has a UID in its mailbox, taken from the mailbox's UIDNEXT when
it enters it (stored, moved or copied there), so UIDs only grow; migration 0012 numbers existing
messages in the order they were stored."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from app.accounts import ensure_account
from app.db import session_scope
from app.migrate import upgrade_database
from app.store.content import FileMessages
from app.store.mailboxes import (
    MoveRules,
    ensure_mailbox,
    expunge_deleted,
    find_message,
    mailbox_uids,
    messages_by_uid,
    move_messages,
    set_flags,
    uid_state,
    unreferenced_paths,
)
from tests.store.test_mailboxes import store


def state(url: str, mailbox: str) -> tuple[int, list[int]]:
    """(UIDNEXT, the UIDs in order) of alice's mailbox."""
    with session_scope(url) as session:
        found = uid_state(session, ensure_account(session, "alice").id, mailbox)
        assert found is not None
        return found.uidnext, mailbox_uids(session, found.mailbox_id)


def test_stored_moved_and_copied_messages_take_the_next_uid_of_their_mailbox(
    url: str, tmp_path: Path
) -> None:
    with session_scope(url) as session:
        ids = [store(session, "alice", "Inbox", f"m{n}") for n in range(3)]
        ensure_mailbox(session, ensure_account(session, "alice").id, "Archive")
    assert state(url, "Inbox") == (4, [1, 2, 3])
    rules = MoveRules(junk="Junk", rejects="Rejects", content=FileMessages(tmp_path))
    with session_scope(url) as session:
        account_id = ensure_account(session, "alice").id
        move_messages(session, account_id, [ids[1]], "Archive", rules=rules)
    assert state(url, "Inbox") == (4, [1, 3])
    assert state(url, "Archive") == (2, [1])
    with session_scope(url) as session:
        move_messages(session, account_id, [ids[1], ids[0]], "Inbox", rules=rules)  # one is there already
    # The message back in Inbox has a UID above every earlier one: a client never reuses its old one.
    assert state(url, "Inbox") == (5, [1, 3, 4])
    assert state(url, "Archive") == (2, [])


def test_a_copy_takes_a_new_uid_and_the_original_keeps_its_own(url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "messages/20260101").mkdir(parents=True)
    (data / "messages/20260101/c1").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    with session_scope(url) as session:
        row_id = store(session, "alice", "Inbox", "c1")
        account_id = ensure_account(session, "alice").id
        rules = MoveRules("Junk", "Rejects", FileMessages(data))
        (copy_id,) = move_messages(session, account_id, [row_id], "Inbox", rules=rules, copy=True)
        box = uid_state(session, account_id, "Inbox")
        assert box is not None
        rows = messages_by_uid(session, account_id, box.mailbox_id, [1, 2, 3])
    assert [(r["id"], r["uid"]) for r in rows] == [(row_id, 1), (copy_id, 2)]


def test_imap_flags_are_set_through_set_flags(url: str) -> None:
    with session_scope(url) as session:
        row_id = store(session, "alice", "Inbox", "f1")
        account_id = ensure_account(session, "alice").id
        assert set_flags(session, account_id, [row_id], flagged=True, deleted=True) == 1
        assert set_flags(session, account_id, [row_id], flagged=True) == 0
        box = uid_state(session, account_id, "Inbox")
        assert box is not None
        (row,) = messages_by_uid(session, account_id, box.mailbox_id, [1])
    assert (row["flagged"], row["deleted"], row["answered"], row["seen"]) == (True, True, False, False)


def old_database(tmp_path: Path, revision: str) -> tuple[str, Engine]:
    """A SQLite database migrated to `revision` with alice and her mailboxes Inbox (1) and B (2)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_database(url, revision)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO accounts (id, name, created) VALUES (1, 'alice', '2026-01-01')"))
        connection.execute(
            text("INSERT INTO mailboxes (id, account_id, name) VALUES (1, 1, 'Inbox'), (2, 1, 'B')")
        )
    return url, engine


def test_migration_numbers_existing_messages_in_id_order_per_mailbox(tmp_path: Path) -> None:
    url, engine = old_database(tmp_path, "0009")
    with engine.begin() as connection:
        for row_id, box in [(10, 1), (11, 2), (12, 1), (13, 1), (14, 2)]:
            connection.execute(
                text(
                    "INSERT INTO messages (id, file_id, account_id, mailbox_id, received, size, path, seen,"
                    " junk, notjunk, is_reject, is_dmarc_report, is_tls_report, spf_mailfrom_validated,"
                    " ehlo_validated, msg_from_validated)"
                    " VALUES (:id, :f, 1, :box, '2026-01-01', 1, :f, 0, 0, 0, 0, 0, 0, 0, 0, 0)"
                ),
                {"id": row_id, "f": f"f{row_id}", "box": box},
            )
    engine.dispose()
    upgrade_database(url, "0012")
    engine = create_engine(url)
    with engine.connect() as connection:
        uids = connection.execute(text("SELECT id, uid, flagged FROM messages ORDER BY id")).all()
        boxes = connection.execute(
            text("SELECT id, uidnext, uidvalidity > 0 FROM mailboxes ORDER BY id")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in uids] == [(10, 1, 0), (11, 1, 0), (12, 2, 0), (13, 3, 0), (14, 2, 0)]
    assert [tuple(r) for r in boxes] == [(1, 4, 1), (2, 3, 1)]


def test_expunge_deletes_only_the_mailboxes_deleted_messages_and_names_their_files(url: str) -> None:
    with session_scope(url) as session:
        kept, gone = store(session, "alice", "Inbox", "e1"), store(session, "alice", "Inbox", "e2")
        other = store(session, "bob", "Inbox", "e3")
        alice, bob = ensure_account(session, "alice").id, ensure_account(session, "bob").id
        set_flags(session, alice, [gone], deleted=True)
        set_flags(session, bob, [other], deleted=True)
        box = uid_state(session, alice, "Inbox")
        assert box is not None
        assert expunge_deleted(session, alice, box.mailbox_id) == [(2, "messages/20260101/e2")]
    with session_scope(url) as session:
        assert mailbox_uids(session, box.mailbox_id) == [1]
        assert unreferenced_paths(session, ["messages/20260101/e1", "messages/20260101/e2"]) == [
            "messages/20260101/e2"
        ]
        assert find_message(session, other) is not None and find_message(session, kept) is not None
