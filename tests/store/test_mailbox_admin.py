"""The store's side of IMAP mailbox management (on SQLite and PostgreSQL): deleting a mailbox with
its messages while messages that came from it elsewhere keep their rows, renaming with the
subscriptions following, and a subscription list that outlives a deleted mailbox."""

from __future__ import annotations

from pathlib import Path

from app.accounts import ensure_account
from app.db import session_scope
from app.store.content import FileMessages
from app.store.mailboxes import (
    MoveRules,
    create_mailbox,
    delete_mailbox,
    find_message,
    mailbox_id,
    mailbox_names,
    move_messages,
    rename_mailboxes,
    subscribe,
    subscriptions,
    uid_state,
    unsubscribe,
)
from tests.store.test_mailboxes import store


def test_delete_keeps_messages_that_came_from_the_mailbox_and_its_subscription(
    url: str, tmp_path: Path
) -> None:
    with session_scope(url) as session:
        alice = ensure_account(session, "alice").id
        assert create_mailbox(session, alice, "Lists") is not None
        assert create_mailbox(session, alice, "Lists") is None  # exists already
        moved, stays = store(session, "alice", "Lists", "d1"), store(session, "alice", "Lists", "d2")
        store(session, "alice", "Inbox", "d3")
        rules = MoveRules(junk="Junk", rejects="Rejects", content=FileMessages(tmp_path))
        move_messages(session, alice, [moved], "Inbox", rules=rules)  # arrived in Lists, now in Inbox
    with session_scope(url) as session:
        box = mailbox_id(session, alice, "Lists")
        assert box is not None
        assert delete_mailbox(session, alice, box) == ["messages/20260101/d2"]
    with session_scope(url) as session:
        assert "Lists" not in mailbox_names(session, alice)
        assert find_message(session, stays) is None
        kept = find_message(session, moved)
        assert kept is not None and kept["mailbox_orig_id"] is None  # no longer counted for Lists
        assert "Lists" in subscriptions(session, alice)  # RFC 9051 6.3.7: the server does not drop it


def test_rename_keeps_the_mailbox_and_moves_its_subscription(url: str) -> None:
    with session_scope(url) as session:
        alice, bob = ensure_account(session, "alice").id, ensure_account(session, "bob").id
        create_mailbox(session, alice, "Work")
        create_mailbox(session, alice, "Work/Old")
        create_mailbox(session, bob, "Work")
        before = uid_state(session, alice, "Work/Old")
        unsubscribe(session, alice, "Work")
    with session_scope(url) as session:
        rename_mailboxes(session, alice, {"Work": "Job", "Work/Old": "Job/Old"})
    with session_scope(url) as session:
        assert uid_state(session, alice, "Job/Old") == before
        assert subscriptions(session, alice) == ["Job/Old"]
        assert mailbox_names(session, bob) == ["Work"] and subscriptions(session, bob) == ["Work"]
        subscribe(session, alice, "Job")
        subscribe(session, alice, "Job")  # once
        assert subscriptions(session, alice) == ["Job", "Job/Old"]
        assert unsubscribe(session, alice, "Job") and not unsubscribe(session, alice, "Job")
