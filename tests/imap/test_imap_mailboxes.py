"""CREATE, DELETE, RENAME, subscriptions, LIST's selection and return options and mailbox names in
modified UTF-7 or UTF-8, over loopback TLS with a raw client and imapclient, on the real store."""

from __future__ import annotations

import imapclient
import pytest

from app.accounts import sync_from_config
from app.db import session_scope
from app.imap.names import BadName, decode_mutf7, encode_mutf7, new_name
from tests.imap.conftest import BACKENDS, PASSWORD, IMAPClients, message
from tests.imap.test_imap_server import RawClient, row_of


def logged_in(imap: IMAPClients) -> RawClient:
    client = RawClient(imap)
    assert client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')[-1].startswith(b"a OK")
    return client


def listed(client: RawClient, command: bytes) -> dict[bytes, bytes]:
    """The names of a LIST's answer -> the rest of each line."""
    lines = client.command(command)
    assert lines[-1].split(b" ")[1] == b"OK", lines
    found = {}
    for line in lines[:-1]:
        if line.startswith((b"* LIST ", b"* LSUB ")):
            head, _, name = line.rstrip(b"\r\n").rpartition(b' "/" ')
            found[name.strip(b'"')] = head
    return found


def test_create_makes_parents_and_refuses_what_exists_or_is_malformed(imap: IMAPClients) -> None:
    client = logged_in(imap)
    assert client.command(b"b CREATE Projects/2026/Q1") == [b"b OK CREATE completed\r\n"]
    boxes = listed(client, b'c LIST "" Projects*')
    assert set(boxes) == {b"Projects", b"Projects/2026", b"Projects/2026/Q1"}
    assert b"\\HasChildren" in boxes[b"Projects"] and b"\\HasNoChildren" in boxes[b"Projects/2026/Q1"]
    assert client.command(b"d CREATE Projects/") == [b"d NO [ALREADYEXISTS] The mailbox exists already\r\n"]
    assert client.command(b"e CREATE inbox")[0].startswith(b"e NO [ALREADYEXISTS]")
    assert client.command(b"f CREATE Loose/")[0] == b"f OK CREATE completed\r\n"  # the trailing / is dropped
    assert b"Loose" in listed(client, b'g LIST "" %')
    for bad, code in [
        (b'"a//b"', b"NO [CANNOT]"),
        (b'"/top"', b"NO [CANNOT]"),
        (b'"wild*card"', b"NO [CANNOT]"),
        (b"INBOX/child", b"NO [CANNOT]"),
        (b'"' + b"x" * 300 + b'"', b"NO [LIMIT]"),
        (b'"' + b"a/" * 20 + b'a"', b"NO [LIMIT]"),
        (b'"bad&Jjo!"', b"BAD"),  # not modified UTF-7
        (b'"&AGE-"', b"BAD"),  # "a" encoded: not the canonical form
        (b"{3}\r\na\tb", b"BAD"),  # a control character
    ]:
        answer = client.command(b"h CREATE " + bad)[-1]
        assert answer.startswith(b"h " + code), (bad, answer)
    assert b"a" not in listed(client, b'i LIST "" *')


@BACKENDS
def test_delete_refuses_configured_and_parent_mailboxes_and_removes_messages(
    imap: IMAPClients, content_backend: str
) -> None:
    client = logged_in(imap)
    for name in (b"INBOX", b"Junk", b"Rejects"):
        assert client.command(b"b DELETE " + name)[0].startswith(b"b NO [CANNOT]")
    assert client.command(b"c DELETE Nowhere") == [b"c NO [NONEXISTENT] No such mailbox\r\n"]
    client.command(b"d CREATE Old/Child")
    assert client.command(b"e DELETE Old")[0].startswith(b"e NO [HASCHILDREN]")
    content = message(1)
    client.send(b"f APPEND Old/Child {%d}\r\n" % len(content))
    assert client.line().startswith(b"+")
    client.send(content + b"\r\n")
    assert b"[APPENDUID" in client.until(b"f")[-1]
    file_id = imap.server.deliver(message(2), mailbox="Inbox")  # a file of another mailbox stays
    stored = str(row_of(imap, file_id)["path"])
    client.command(b"g SELECT Old/Child")
    assert client.command(b"h DELETE Old/Child")[0].startswith(b"h NO [INUSE]")
    client.command(b"i UNSELECT")
    before = imap.server.content_paths()
    assert client.command(b"j DELETE Old/Child") == [b"j OK DELETE completed\r\n"]
    assert client.command(b"k SELECT Old/Child")[0].startswith(b"k NO [NONEXISTENT]")
    gone = before - imap.server.content_paths()
    assert stored in imap.server.content_paths() and len(gone) == 1  # the deleted message's, and only it
    # Its subscription stays (RFC 9051 6.3.7); LSUB shows the name \Noselect.
    assert listed(client, b'l LSUB "" Old/*') == {b"Old/Child": b"* LSUB (\\Noselect)"}
    assert client.command(b"m DELETE Old") == [b"m OK DELETE completed\r\n"]
    with session_scope(imap.server.config.resolved_database_url) as session:
        sync_from_config(session, imap.server.config)  # the config sync does not make it again
    assert b"Old" not in listed(client, b'n LIST "" *')


def test_rename_moves_a_tree_with_its_uids_and_inbox_rename_moves_its_messages(imap: IMAPClients) -> None:
    imap.server.deliver(message(1))
    imap.server.deliver(message(2))
    client = logged_in(imap)
    client.command(b"b CREATE Work/Deep")
    client.command(b"c SUBSCRIBE Work/Deep")
    before = client.command(b"d STATUS Work/Deep (UIDVALIDITY UIDNEXT)")[0]
    assert client.command(b"e RENAME Work Archive/Work") == [b"e OK RENAME completed\r\n"]
    boxes = listed(client, b'f LIST "" *')
    assert b"Work" not in boxes and {b"Archive", b"Archive/Work", b"Archive/Work/Deep"} <= set(boxes)
    after = client.command(b"g STATUS Archive/Work/Deep (UIDVALIDITY UIDNEXT)")[0]
    assert before.split(b"(")[1] == after.split(b"(")[1]  # the same mailbox: its UIDs stay valid
    assert b"Archive/Work/Deep" in listed(client, b'h LSUB "" *')  # the subscription followed it
    assert client.command(b"i RENAME Archive/Work Archive/Work/In")[0].startswith(b"i NO [CANNOT]")
    assert client.command(b"j RENAME Junk Spam")[0].startswith(b"j NO [CANNOT]")
    assert client.command(b"k RENAME Nowhere Else")[0].startswith(b"k NO [NONEXISTENT]")
    assert client.command(b"l RENAME Archive Rejects")[0].startswith(b"l NO [ALREADYEXISTS]")
    assert client.command(b"m RENAME INBOX Saved") == [b"m OK RENAME completed\r\n"]
    assert client.command(b"n STATUS INBOX (MESSAGES)")[0] == b'* STATUS "INBOX" (MESSAGES 0)\r\n'
    assert (
        client.command(b"o STATUS Saved (MESSAGES UIDNEXT)")[0]
        == b'* STATUS "Saved" (MESSAGES 2 UIDNEXT 3)\r\n'
    )


def test_subscriptions_and_list_selection_and_return_options(imap: IMAPClients) -> None:
    imap.server.deliver(message(1), mailbox="Junk")
    client = logged_in(imap)
    client.command(b"b CREATE Lists/rust")
    client.command(b"c CREATE Lists/python")
    assert client.command(b"d UNSUBSCRIBE Lists/python") == [b"d OK UNSUBSCRIBE completed\r\n"]
    assert client.command(b"e UNSUBSCRIBE Lists")[0] == b"e OK UNSUBSCRIBE completed\r\n"
    subscribed = listed(client, b'f LIST (SUBSCRIBED) "" Lists*')
    assert subscribed == {b"Lists/rust": b"* LIST (\\HasNoChildren \\Subscribed)"}
    recursive = client.command(b'g LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
    assert b'* LIST (\\HasChildren) "/" "Lists" ("CHILDINFO" ("SUBSCRIBED"))\r\n' in recursive
    special = listed(client, b'h LIST (SPECIAL-USE) "" *')
    assert set(special) == {b"Junk"}
    lines = client.command(b'i LIST "" Junk RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN SIZE))')
    assert lines[0] == b'* LIST (\\Junk \\HasNoChildren \\Subscribed) "/" "Junk"\r\n'
    assert lines[1].startswith(b'* STATUS "Junk" (MESSAGES 1 UNSEEN 1 SIZE ')
    patterns = listed(client, b'j LIST "" (INBOX Lists/%)')
    assert set(patterns) == {b"INBOX", b"Lists/rust", b"Lists/python"}
    assert client.command(b"k SUBSCRIBE Nowhere")[0].startswith(b"k NO [NONEXISTENT]")
    assert client.command(b'l LIST (BOGUS) "" *')[0].startswith(b"l BAD LIST selection options")
    assert client.command(b'm LIST (RECURSIVEMATCH) "" *')[0].startswith(b"m BAD RECURSIVEMATCH")
    assert client.command(b'n LIST "" * RETURN (STATUS (BOGUS))')[0].startswith(b"n BAD STATUS items")


def test_names_are_modified_utf7_until_utf8_is_enabled(imap: IMAPClients) -> None:
    client = logged_in(imap)
    assert client.command(b"b CREATE Entw&APw-rfe/&ZeVnLIqe-")[-1] == b"b OK CREATE completed\r\n"
    assert client.command(b'c CREATE "Tom & Jerry"')[-1].startswith(b"c BAD")  # a bare & is malformed
    assert client.command(b'c CREATE "Tom &- Jerry"')[-1] == b"c OK CREATE completed\r\n"
    boxes = listed(client, b'd LIST "" *')
    assert {b"Entw&APw-rfe", b"Entw&APw-rfe/&ZeVnLIqe-", b"Tom &- Jerry"} <= set(boxes)
    assert client.command(b"e ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT\r\n"
    lines = client.command(b'f LIST "" Entw*')
    assert "Entwürfe/日本語".encode() in b"".join(lines)
    assert client.command(b'g SELECT "Tom & Jerry"')[-1].startswith(b"g OK")
    # imapclient decodes modified UTF-7 itself: the folder names a Python client sees.
    other = imap.imapclient()
    names = {folder[2] for folder in other.list_folders()}
    assert {"Entwürfe", "Entwürfe/日本語", "Tom & Jerry"} <= names
    other.create_folder("Música")
    assert other.folder_exists("Música")
    other.logout()


@pytest.mark.parametrize("name", ["Entwürfe", "~peter/mail/台北/日本語", "A&B", "&", "émoji 😀 &-", "plain"])
def test_modified_utf7_round_trips(name: str) -> None:
    encoded = encode_mutf7(name)
    assert encoded.isascii() and decode_mutf7(encoded) == name


@pytest.mark.parametrize("bad", ["&", "&Jjo!", "&AGE-", "&U,BTFw", "a&-&b", "&2D0-", "&AAA-"])
def test_malformed_modified_utf7_is_refused(bad: str) -> None:
    with pytest.raises(BadName):
        decode_mutf7(bad)


def test_new_names_are_bounded_and_have_no_empty_levels() -> None:
    assert new_name("a/b/") == "a/b"
    for bad in ["", "/", "a//b", "/a", "a%", "x" * 256, "INBOX/x", "inbox/x", "a\x01b"]:
        with pytest.raises(BadName):
            new_name(bad)


def test_folder_management_with_imapclient(imap: IMAPClients) -> None:
    imap.server.deliver(message(1))
    client = imap.imapclient()
    client.create_folder("Clients/Old")
    client.rename_folder("Clients", "Customers")
    assert client.folder_exists("Customers/Old") and not client.folder_exists("Clients")
    client.unsubscribe_folder("Customers/Old")
    assert "Customers/Old" not in {name for _, _, name in client.list_sub_folders()}
    client.delete_folder("Customers/Old")
    assert not client.folder_exists("Customers/Old")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="CANNOT"):
        client.delete_folder("Junk")
    client.select_folder("INBOX")
    fetched = client.fetch([1], ["BINARY.PEEK[1]", "BINARY.SIZE[1]"])
    assert fetched[1][b"BINARY[1]"] == b"Hello.\r\n" and fetched[1][b"BINARY.SIZE[1]"] == 8
    client.logout()
