"""Moving, copying and flagging messages (SPEC R3.3), on SQLite and PostgreSQL: the one store function
every client calls, with the reputation columns and the signal rows following."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.accounts import ensure_account
from app.db import session_scope
from app.models import Message, MessageSignal
from app.store.content import FileMessages
from app.store.mailboxes import (
    MailboxError,
    MoveRules,
    ensure_mailbox,
    find_message,
    move_messages,
    set_flags,
)
from app.store.signals import add_signals, flagged_history
from tests.store.test_mailboxes import store

MAILBOXES = ("Inbox", "Archive", "Junk", "Rejects")
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
def rules(tmp_path: Path) -> MoveRules:
    return MoveRules(junk="Junk", rejects="Rejects", content=FileMessages(tmp_path / "data"))


def stored(session: Session, mailbox: str, file_id: str, **columns: Any) -> int:
    """A message of alice (her mailboxes made), with signal rows; its row id."""
    account_id = ensure_account(session, "alice").id
    for name in MAILBOXES:
        ensure_mailbox(session, account_id, name)
    columns = {"msg_from": "bob@example.net", "msg_from_domain": "example.net", **columns}
    row_id = store(session, "alice", mailbox, file_id, **columns)
    message = find_message(session, row_id)
    assert message is not None
    add_signals(session, [(row_id, message, False)])
    return row_id


def reject(session: Session, file_id: str = "r1") -> int:
    """A reject in Rejects, as the store keeps it: seen, destined for Inbox."""
    return stored(session, "Rejects", file_id, destined="Inbox", is_reject=True, seen=True)


def state(url: str, row_id: int) -> dict[str, Any]:
    """The message's mailbox names and flags, and what its signal rows copy."""
    with session_scope(url) as session:
        message = find_message(session, row_id)
        assert message is not None
        names = {ensure_mailbox(session, message["account_id"], name): name for name in MAILBOXES}
        signals = {
            (names.get(s.mailbox_orig_id), s.junk, s.notjunk)
            for s in session.scalars(select(MessageSignal).where(MessageSignal.message_id == row_id))
        }
    return {
        "mailbox": names[message["mailbox_id"]],
        "orig": names.get(message["mailbox_orig_id"]),
        "reject": message["is_reject"],
        "junk": message["junk"],
        "notjunk": message["notjunk"],
        "seen": message["seen"],
        "signals": signals,
    }


def pick(url: str, row_id: int, *keys: str) -> tuple[Any, ...]:
    found = state(url, row_id)
    return tuple(found[key] for key in keys)


def move(url: str, row_ids: list[int], target: str, rules: MoveRules, *, copy: bool = False) -> list[int]:
    with session_scope(url) as session:
        account_id = ensure_account(session, "alice").id
        return move_messages(session, account_id, row_ids, target, rules=rules, copy=copy)


@pytest.mark.parametrize(
    ("target", "junk", "notjunk"),
    [("Inbox", False, True), ("Archive", False, True), ("Junk", True, False)],
)
def test_a_reject_moved_out_of_rejects_counts_as_delivered_to_its_destined_mailbox(
    url: str, rules: MoveRules, target: str, junk: bool, notjunk: bool
) -> None:
    """Out of Rejects, even into Junk (training the filter), the original mailbox becomes the destined
    one (Inbox), so reputation for Inbox counts it; the flag follows the target."""
    with session_scope(url) as session:
        row_id = reject(session)
    assert move(url, [row_id], target, rules) == [row_id]
    assert state(url, row_id) == {
        "mailbox": target,
        "orig": "Inbox",
        "reject": False,
        "junk": junk,
        "notjunk": notjunk,
        "seen": True,
        "signals": {("Inbox", junk, notjunk)},
    }


@pytest.mark.parametrize(
    ("source", "target", "junk", "notjunk"),
    [
        ("Inbox", "Junk", True, False),
        ("Junk", "Inbox", False, True),
        ("Junk", "Archive", False, True),
        ("Rejects", "Archive", False, True),  # not a reject: moved there by hand
        ("Inbox", "Archive", False, False),
        ("Inbox", "Rejects", False, False),
        ("Junk", "Rejects", False, False),
    ],
)
def test_the_flags_a_move_sets(
    url: str, rules: MoveRules, source: str, target: str, junk: bool, notjunk: bool
) -> None:
    with session_scope(url) as session:
        row_id = stored(session, source, "m1")
    move(url, [row_id], target, rules)
    after = pick(url, row_id, "mailbox", "orig", "junk", "notjunk", "signals")
    assert after == (target, source, junk, notjunk, {(source, junk, notjunk)})


def test_a_reject_moved_into_rejects_or_left_where_it_is_stays_a_reject(url: str, rules: MoveRules) -> None:
    with session_scope(url) as session:
        row_id = reject(session)
        elsewhere = stored(session, "Archive", "a1", destined="Inbox", is_reject=True)
    move(url, [row_id], "Rejects", rules)
    move(url, [elsewhere], "Rejects", rules)
    assert pick(url, row_id, "orig", "reject") == ("Rejects", True)
    assert pick(url, elsewhere, "mailbox", "orig", "reject", "notjunk") == ("Rejects", "Archive", True, False)


def test_unknown_mailboxes_and_other_accounts_messages_are_refused(url: str, rules: MoveRules) -> None:
    with session_scope(url) as session:
        mine = reject(session)
        theirs = store(session, "bob", "Inbox", "b1")
    with pytest.raises(MailboxError, match=r"no mailbox 'Nope' \(mailboxes: Archive, Inbox, Junk, Rejects\)"):
        move(url, [mine], "Nope", rules)
    with pytest.raises(MailboxError, match=f"no message {theirs} in this account"):
        move(url, [mine, theirs], "Inbox", rules)
    with pytest.raises(MailboxError, match="no message 999999"):
        move(url, [999999], "Inbox", rules, copy=True)
    assert state(url, mine)["mailbox"] == "Rejects"


def signal_values(url: str, row_id: int) -> list[tuple[str, str, Any]]:
    with session_scope(url) as session:
        query = select(MessageSignal.kind, MessageSignal.value, MessageSignal.received)
        rows = session.execute(query.where(MessageSignal.message_id == row_id))
        return sorted((kind, value, received) for kind, value, received in rows)


def test_copies_count_in_reputation_for_their_mailbox(url: str, rules: MoveRules) -> None:
    """Several copies in one call, each with its own state; reputation for Inbox finds the rescued
    copy (and, after the original is expunged, still does) but not the unflagged one."""
    with session_scope(url) as session:
        rescued = reject(session)
        plain = stored(session, "Inbox", "m1", msg_from="carol@example.net")
        inbox = ensure_mailbox(session, ensure_account(session, "alice").id, "Inbox")
    for row_id in (rescued, plain):
        write_file(rules, row_id, url)
    copies = move(url, [rescued, plain], "Archive", rules, copy=True)
    assert [pick(url, c, "mailbox", "orig", "notjunk", "signals") for c in copies] == [
        ("Archive", "Inbox", True, {("Inbox", False, True)}),
        ("Archive", "Inbox", False, {("Inbox", False, False)}),
    ]
    with session_scope(url) as session:
        session.execute(delete(Message).where(Message.id == rescued))  # EXPUNGE of the original
    with session_scope(url) as session:
        found = flagged_history(session, inbox, [("from-unvalidated", "bob@example.net")], EPOCH, 10)
    assert [(f.message_id, f.junk) for f in found] == [(copies[0], False)]


def write_file(rules: MoveRules, row_id: int, url: str) -> Path:
    with session_scope(url) as session:
        message = find_message(session, row_id)
        assert message is not None
    path = rules.content.data_dir / message["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"Subject: rescued\r\n\r\nHello.\r\n")
    return path


def test_a_copy_out_of_rejects_is_a_new_message_with_its_own_file(url: str, rules: MoveRules) -> None:
    with session_scope(url) as session:
        row_id = reject(session)
    original_file = write_file(rules, row_id, url)
    (copy_id,) = move(url, [row_id], "Inbox", rules, copy=True)
    assert copy_id != row_id
    assert pick(url, row_id, "mailbox", "reject") == ("Rejects", True)  # left as it was
    # The copy has the original's signal rows with its own mailbox and flags: it counts for Inbox.
    assert pick(url, copy_id, "mailbox", "orig", "reject", "notjunk", "signals") == (
        "Inbox",
        "Inbox",
        False,
        True,
        {("Inbox", False, True)},
    )
    assert pick(url, row_id, "signals") == ({("Rejects", False, False)},)
    assert signal_values(url, copy_id) == signal_values(url, row_id) != []
    with session_scope(url) as session:
        original, copy = find_message(session, row_id), find_message(session, copy_id)
    assert original is not None and copy is not None
    assert copy["file_id"] != original["file_id"] and copy["path"].endswith(f"/{copy['file_id']}")
    for same in ("subject", "received", "size", "msg_from", "mailbox_destined_id"):
        assert copy[same] == original[same]
    copy_file = rules.content.data_dir / copy["path"]
    assert copy_file.read_bytes() == original_file.read_bytes()
    assert copy_file.stat().st_ino == original_file.stat().st_ino  # a hard link
    original_file.unlink()
    assert copy_file.exists()


def test_a_copy_where_no_hard_link_can_be_made_is_a_file_copy(
    url: str, rules: MoveRules, monkeypatch: pytest.MonkeyPatch
) -> None:
    with session_scope(url) as session:
        row_id = stored(session, "Inbox", "m1")
    original_file = write_file(rules, row_id, url)

    def no_link(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", no_link)
    (copy_id,) = move(url, [row_id], "Archive", rules, copy=True)
    with session_scope(url) as session:
        copy = find_message(session, copy_id)
    assert copy is not None
    copy_file = rules.content.data_dir / copy["path"]
    assert copy_file.read_bytes() == original_file.read_bytes()
    assert copy_file.stat().st_ino != original_file.stat().st_ino


def test_a_copy_of_a_message_whose_file_is_missing_is_refused(url: str, rules: MoveRules) -> None:
    with session_scope(url) as session:
        row_id = stored(session, "Inbox", "m1")
    with pytest.raises(MailboxError, match="cannot be copied"):
        move(url, [row_id], "Archive", rules, copy=True)


def flag(url: str, row_ids: list[int], **flags: bool) -> int:
    with session_scope(url) as session:
        return set_flags(session, ensure_account(session, "alice").id, row_ids, **flags)


def test_set_flags(url: str) -> None:
    with session_scope(url) as session:
        first, second = stored(session, "Inbox", "m1"), stored(session, "Inbox", "m2", notjunk=True)
        theirs = store(session, "bob", "Inbox", "b1")
    assert flag(url, [first, second], junk=True) == 2
    assert flag(url, [first, second], junk=True) == 0  # nothing left to change
    for row_id in (first, second):
        assert state(url, row_id)["signals"] == {("Inbox", True, False)}
        assert not state(url, row_id)["notjunk"]
    assert flag(url, [first], notjunk=True, seen=True) == 1
    after = state(url, first)
    assert (after["junk"], after["notjunk"], after["seen"], after["signals"]) == (
        False,
        True,
        True,
        {("Inbox", False, True)},
    )
    assert flag(url, [first], notjunk=False, seen=False) == 1
    assert state(url, first)["signals"] == {("Inbox", False, False)}
    with pytest.raises(MailboxError, match="both junk and not junk"):
        flag(url, [first], junk=True, notjunk=True)
    with pytest.raises(MailboxError, match=f"no message {theirs}"):
        flag(url, [first, theirs], seen=True)
    assert state(url, first)["seen"] is False
