"""app/store/mailboxes.py on its own: its queries against a real database, SQLite and PostgreSQL (the
aggregates, LIKE, aware datetimes and savepoints are where the two differ; the `url` fixture,
tests/store/conftest.py, gives each)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.accounts import ensure_account
from app.db import insert_once, session_scope
from app.models import Mailbox, Message
from app.models.base import utcnow
from app.store.mailboxes import (
    add_messages,
    count_received_since,
    ensure_mailbox,
    file_id_stored,
    find_message,
    has_accepted_mail_from,
    holding_query,
    holds_message,
    mailbox_id,
    mailbox_names,
    mailbox_summaries,
    message_placement,
    new_message_row,
    newest_messages,
    other_copies,
)


def store(
    session: Session, account: str, mailbox: str, file_id: str, destined: str | None = None, **columns: object
) -> int:
    """Add one message row as the store does; its row id."""
    account_id = ensure_account(session, account).id
    box = ensure_mailbox(session, account_id, mailbox)
    destined_id = ensure_mailbox(session, account_id, destined) if destined else None
    row = new_message_row(
        columns,
        account_id=account_id,
        mailbox_id=box,
        destined_mailbox_id=destined_id,
        path=f"messages/20260101/{file_id}",
        size=len(file_id),
    )
    add_messages(session, [row])
    found = find_message(session, file_id)
    assert found is not None
    return int(found["id"])


def set_received(session: Session, row_id: int, when: datetime) -> None:
    session.execute(update(Message).where(Message.id == row_id).values(received=when))


def test_ensure_mailbox_makes_a_mailbox_once_per_account(url: str) -> None:
    with session_scope(url) as session:
        alice, bob = ensure_account(session, "alice").id, ensure_account(session, "bob").id
        inbox = ensure_mailbox(session, alice, "Inbox")
        assert ensure_mailbox(session, alice, "Inbox") == inbox
        assert ensure_mailbox(session, bob, "Inbox") != inbox
        ensure_mailbox(session, alice, "Archive")
    with session_scope(url) as session:
        assert mailbox_id(session, alice, "Inbox") == inbox
        assert mailbox_id(session, alice, "Nope") is None
        assert mailbox_names(session, alice) == ["Archive", "Inbox"]
        assert mailbox_names(session, bob) == ["Inbox"]


def test_a_mailbox_another_process_made_first_is_found(url: str) -> None:
    """The unique key decides: the losing insert is undone in its savepoint, the session goes on."""
    with session_scope(url) as session:
        alice = ensure_account(session, "alice").id
        inbox = ensure_mailbox(session, alice, "Inbox")
    with session_scope(url) as session:
        assert not insert_once(session, Mailbox(account_id=alice, name="Inbox"))
        assert ensure_mailbox(session, alice, "Inbox") == inbox
        assert ensure_mailbox(session, alice, "Junk") != inbox


def test_mailbox_summaries_count_messages_unseen_and_size(url: str) -> None:
    with session_scope(url) as session:
        store(session, "alice", "Inbox", "f1")
        store(session, "alice", "Inbox", "f22", seen=True)
        store(session, "alice", "Junk", "f333")
        ensure_mailbox(session, ensure_account(session, "alice").id, "Empty")
        store(session, "bob", "Inbox", "f4444")
        alice = ensure_account(session, "alice").id
    with session_scope(url) as session:
        assert mailbox_summaries(session, alice) == [
            {"name": "Empty", "messages": 0, "unseen": 0, "size": 0},
            {"name": "Inbox", "messages": 2, "unseen": 1, "size": 5},
            {"name": "Junk", "messages": 1, "unseen": 1, "size": 4},
        ]


def test_newest_messages_and_find_message(url: str) -> None:
    now = utcnow()
    with session_scope(url) as session:
        first = store(session, "alice", "Inbox", "a1", subject="first")
        second = store(session, "alice", "Inbox", "a2", subject="second")
        third = store(session, "alice", "Inbox", "a3", subject="same time as second")
        store(session, "alice", "Junk", "a4")
        for row_id, age in ((first, 3), (second, 1), (third, 1)):
            set_received(session, row_id, now - timedelta(hours=age))
        inbox = ensure_mailbox(session, ensure_account(session, "alice").id, "Inbox")
    with session_scope(url) as session:
        newest = newest_messages(session, inbox, 2)
        assert [m["id"] for m in newest] == [third, second]  # ties: the later row first
        assert [m["id"] for m in newest_messages(session, inbox, 10)] == [third, second, first]
        assert newest[0]["received"] == now - timedelta(hours=1)  # aware UTC on both databases
        by_id, by_file_id = find_message(session, first), find_message(session, "a1")
        assert by_id == by_file_id and by_id is not None and by_id["subject"] == "first"
        assert list(by_id) == [column.key for column in Message.__table__.columns]
        assert find_message(session, "1") is None  # a str is a file id, never a row id
        assert find_message(session, 10**9) is None


def test_message_placement_names_the_reject_mailboxes(url: str) -> None:
    with session_scope(url) as session:
        accepted = store(session, "alice", "Inbox", "p1")
        rejected = store(session, "alice", "Rejects", "p2", destined="Inbox", is_reject=True)
    with session_scope(url) as session:
        assert message_placement(session, accepted) == {
            "mailbox": "Inbox",
            "mailbox_orig": "Inbox",
            "mailbox_destined": None,
        }
        assert message_placement(session, rejected) == {
            "mailbox": "Rejects",
            "mailbox_orig": "Rejects",
            "mailbox_destined": "Inbox",
        }


def test_other_copies_are_those_of_the_same_transaction(url: str) -> None:
    with session_scope(url) as session:
        for file_id in ("0abc", "0abc-2", "0abc-3", "0abcd", "0ab-2"):
            store(session, "alice", "Inbox", file_id)
    with session_scope(url) as session:
        assert other_copies(session, "0abc") == ["0abc-2", "0abc-3"]
        assert other_copies(session, "0abc-2") == ["0abc", "0abc-3"]
        assert other_copies(session, "0abcd") == []


def test_count_received_since_counts_from_the_instant_on(url: str) -> None:
    since = utcnow().replace(microsecond=0) - timedelta(hours=2)
    with session_scope(url) as session:
        ages = {"c1": timedelta(0), "c2": timedelta(seconds=1), "c3": -timedelta(microseconds=1)}
        for file_id, age in ages.items():
            row_id = store(session, "alice", "Inbox", file_id)
            set_received(session, row_id, since - age)
    with session_scope(url) as session:
        assert count_received_since(session, since) == 2
        assert count_received_since(session, since + timedelta(hours=1)) == 0


def test_has_accepted_mail_from_ignores_rejects(url: str) -> None:
    with session_scope(url) as session:
        store(
            session, "alice", "Rejects", "r1", destined="Inbox", is_reject=True, msg_from_domain="a.example"
        )
    with session_scope(url) as session:
        assert not has_accepted_mail_from(session, "a.example")
        store(session, "alice", "Inbox", "r2", msg_from_domain="a.example")
        assert has_accepted_mail_from(session, "a.example")
        assert not has_accepted_mail_from(session, "b.example")


def test_holds_message_and_file_id_stored(url: str) -> None:
    with session_scope(url) as session:
        store(session, "alice", "Rejects", "h1", message_id="<1@x>", content_hash="aa")
        store(session, "alice", "Rejects", "h3", content_hash="bb")
        alice = ensure_account(session, "alice").id
        rejects, inbox = ensure_mailbox(session, alice, "Rejects"), ensure_mailbox(session, alice, "Inbox")
    with session_scope(url) as session:
        assert holds_message(session, rejects, {"message_id": "<1@x>"})
        assert not holds_message(session, inbox, {"message_id": "<1@x>"})  # per mailbox
        assert not holds_message(session, rejects, {"message_id": "<2@x>", "content_hash": "aa"})
        assert not holds_message(session, rejects, {"message_id": None})
        assert not holds_message(session, rejects, {})
        # Without a Message-ID, the same content is the same message.
        assert holds_message(session, rejects, {"message_id": None, "content_hash": "bb"})
        assert not holds_message(session, rejects, {"content_hash": "cc"})
        assert file_id_stored(session, "h1") and not file_id_stored(session, "h2")


def test_a_rescued_message_is_found_among_many_copies_with_its_message_id(url: str) -> None:
    """The retry check looks among rescued messages only: copies that were never rejects (a sender
    may put one Message-ID on all its mail) are not read one by one to find none rescued."""
    with session_scope(url) as session:
        for n in range(20):
            store(session, "alice", "Inbox", f"c{n}", message_id="<same@x>", content_hash=f"{n:02x}")
        alice = ensure_account(session, "alice").id
        inbox = ensure_mailbox(session, alice, "Inbox")
        assert holds_message(session, inbox, {"message_id": "<same@x>"})  # the reject check: any copy
        assert not holds_message(session, inbox, {"message_id": "<same@x>"}, rescued=True)
        rescued = store(session, "alice", "Inbox", "r1", destined="Inbox", message_id="<same@x>")
        store(session, "alice", "Inbox", "r2", destined="Inbox", content_hash="ff", is_reject=True)
        assert holds_message(session, inbox, {"message_id": "<same@x>"}, rescued=True)
        assert not holds_message(session, inbox, {"content_hash": "ff"}, rescued=True)  # still a reject
        session.execute(update(Message).where(Message.id == rescued).values(message_id="<other@x>"))
        assert not holds_message(session, inbox, {"message_id": "<same@x>"}, rescued=True)


@pytest.mark.parametrize("key", ["message_id", "content_hash"])
def test_the_rescued_lookup_searches_the_partial_index(sqlite_url: str, key: str) -> None:
    with session_scope(sqlite_url) as session:
        compiled = holding_query(key, rescued=True).compile(session.get_bind())
        params = (1, "<x@y>", 1, 0)  # mailbox, key, LIMIT, OFFSET
        plan = session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
    assert [row[-1] for row in plan] == [
        f"SEARCH messages USING INDEX ix_messages_rescued_{key} (mailbox_id=? AND {key}=?)"
    ]


def test_add_messages_returns_the_new_row_ids_in_order(url: str) -> None:
    with session_scope(url) as session:
        alice = ensure_account(session, "alice").id
        inbox = ensure_mailbox(session, alice, "Inbox")
        rows = [
            new_message_row(
                {},
                account_id=alice,
                mailbox_id=inbox,
                destined_mailbox_id=None,
                path=f"messages/20260101/o{n}",
                size=1,
            )
            for n in range(3)
        ]
        ids = add_messages(session, rows)
        assert [(find_message(session, i) or {}).get("file_id") for i in ids] == ["o0", "o1", "o2"]
        assert add_messages(session, []) == []


def test_new_message_row_points_at_its_file_and_mailbox() -> None:
    row = new_message_row(
        {"subject": "s", "is_reject": True},
        account_id=1,
        mailbox_id=2,
        destined_mailbox_id=3,
        path="messages/20260101/abc-2",
        size=9,
    )
    assert row.pop("received").tzinfo is not None
    assert row == {
        "subject": "s",
        "is_reject": True,
        "file_id": "abc-2",
        "account_id": 1,
        "mailbox_id": 2,
        "mailbox_orig_id": 2,
        "mailbox_destined_id": 3,
        "path": "messages/20260101/abc-2",
        "size": 9,
    }
