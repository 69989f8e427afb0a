"""The IMAP server over real loopback sockets with TLS, driven by Python's imaplib, imapclient and a
raw line client: logins only after TLS, LIST, SELECT, FETCH of flags, bodies and partials, STORE
through the store's set_flags (what the web UI reads), malformed commands, limits and timeouts."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import time
from collections.abc import Callable

import imapclient
import pytest

from app.accounts import account_id
from app.db import session_scope
from app.imap import session as imap_session
from app.store.content import stored_content
from app.store.mailboxes import (
    MoveRules,
    UidState,
    account_message,
    find_message,
    move_messages,
    uid_state,
)
from tests.imap.conftest import BACKENDS, PASSWORD, IMAPClients, message
from tests.support.smtpfixtures import make_message


class RawClient:
    """Exact bytes over a TLS connection; every read has a timeout."""

    def __init__(self, clients: IMAPClients, timeout: float = 10.0) -> None:
        plain = socket.create_connection(("127.0.0.1", clients.server.tls_port), timeout=timeout)
        self.sock = clients.tls.wrap_socket(plain, server_hostname="mail.example.org")
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, data: bytes) -> list[bytes]:
        """Send one command line; the lines up to its tagged answer (the tag is its first word)."""
        self.send(data + b"\r\n")
        return self.until(data.split(b" ", 1)[0])

    def until(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if not line or line.startswith(tag + b" "):
                return lines


def row_of(clients: IMAPClients, file_id: str) -> dict[str, object]:
    with session_scope(clients.server.config.resolved_database_url) as session:
        found = find_message(session, file_id)
        assert found is not None
        return found


def test_passwords_are_refused_before_tls_and_taken_after_starttls(imap: IMAPClients) -> None:
    client = imap.plain()
    assert {"STARTTLS", "LOGINDISABLED"} <= set(client.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login("admin", PASSWORD)
    client.starttls(imap.tls)
    typ, _ = client.capability()
    assert typ == "OK" and "LOGINDISABLED" not in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login("admin", "wrong")
    assert client.login("admin@example.org", PASSWORD)[0] == "OK"  # an address logs in like the name
    client.logout()


def test_authenticate_plain_with_imapclient(imap: IMAPClients) -> None:
    client = imap.imapclient(log_in=False)
    client.plain_login("admin", PASSWORD)
    assert client.list_folders()  # logged in
    client.logout()


def test_list_shows_inbox_and_special_use_with_rejects_ordinary(imap: IMAPClients) -> None:
    client = imap.logged_in()
    typ, lines = client.list('""', "*")
    assert typ == "OK"
    listed = {line.rsplit(b" ", 1)[1].strip(b'"'): line for line in lines if isinstance(line, bytes)}
    assert b"INBOX" in listed and b"Inbox" not in listed
    assert listed[b"Junk"].startswith(b"(\\Junk \\HasNoChildren)")
    assert listed[b"Rejects"].startswith(b"(\\HasNoChildren)")
    typ, lines = client.list('""', "%")
    assert typ == "OK" and not any(
        b"/" in line.rsplit(b" ", 1)[1] for line in lines if isinstance(line, bytes)
    )


@BACKENDS
def test_search_keys_over_the_sessions_view(imap: IMAPClients, content_backend: str) -> None:
    for n in (1, 2, 3):  # the From address as SMTP analysis indexes it (msg_from)
        imap.server.deliver(message(n), msg_from="carol@example.net")
    client = RawClient(imap)
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    client.command(b"b SELECT INBOX")
    client.command(b"c STORE 1 +FLAGS (\\Seen)")
    client.command(b"c STORE 2 +FLAGS ($Junk \\Flagged)")
    today = time.strftime("%d-%b-%Y", time.gmtime()).encode()
    for search, found in [
        (b"SEARCH UNSEEN", b"2 3"),
        (b"SEARCH OR SEEN FLAGGED", b"1 2"),
        (b"SEARCH NOT 1:2", b"3"),
        (b"SEARCH (UNSEEN NOT KEYWORD $Junk)", b"3"),
        (b'UID SEARCH CHARSET UTF-8 SUBJECT "MESSAGE 2"', b"2"),
        (b"SEARCH FROM carol@ UID 2:*", b"2 3"),
        (b"SEARCH SINCE " + today + b" BEFORE 1-Jan-2000", b""),
        (b"SEARCH ON " + today + b" SMALLER 100000 LARGER 10", b"1 2 3"),
        (b"SEARCH DELETED", b""),
    ]:
        lines = client.command(b"d " + search)
        assert lines == [b"* SEARCH" + (b" " + found if found else b"") + b"\r\n", lines[-1]], search
        assert lines[-1].startswith(b"d OK")
    for bad in (b"d SEARCH HEADER x", b"d SEARCH SINCE 31-Feb-2026", b"d SEARCH CHARSET KOI8-R ALL"):
        assert client.command(bad)[-1].startswith(b"d BAD "), bad
    imapclient_client = imap.imapclient()
    imapclient_client.select_folder("INBOX", readonly=True)
    assert imapclient_client.search(["UNSEEN", "NOT", "FLAGGED"]) == [3]
    imapclient_client.logout()


def test_a_fault_of_ours_is_a_tagged_no_and_the_session_goes_on(imap: IMAPClients) -> None:
    file_id = imap.server.deliver(message(1))
    (imap.server.config.data_dir / str(row_of(imap, file_id)["path"])).unlink()  # the file is gone
    client = RawClient(imap)
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    client.command(b"b SELECT INBOX")
    assert client.command(b"c FETCH 1 BODY.PEEK[]") == [
        b"c NO [SERVERBUG] The command failed; it was logged\r\n"
    ]
    assert client.command(b"d FETCH 1 FLAGS")[-1] == b"d OK FETCH completed\r\n"


@BACKENDS
def test_files_beyond_the_read_budget_are_read_one_by_one(
    imap: IMAPClients, monkeypatch: pytest.MonkeyPatch, content_backend: str
) -> None:
    ids = [imap.server.deliver(message(n, body=f"body {n}\r\n")) for n in (1, 2, 3)]
    stored = [imap.server.content(str(row_of(imap, i)["path"])) for i in ids]
    # The first file is read with the rows, the others alone: each answer still carries its own file.
    monkeypatch.setattr(imap_session, "CONTENT_BUDGET", len(stored[0]) + 1)
    client = imap.logged_in()
    client.select("INBOX")
    typ, data = client.fetch("1:3", "(BODY.PEEK[])")
    assert typ == "OK"
    assert [part[1] for part in data if isinstance(part, tuple)] == stored


def test_lsub_subscribe_namespace_and_enable(imap: IMAPClients) -> None:
    client = RawClient(imap)
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    assert b'* LSUB () "/" "INBOX"\r\n' in client.command(b'b LSUB "" *')  # configured ones start subscribed
    assert client.command(b"c SUBSCRIBE Junk") == [b"c OK SUBSCRIBE completed\r\n"]
    assert client.command(b"d UNSUBSCRIBE Nowhere") == [b"d NO [NONEXISTENT] The name is not subscribed\r\n"]
    assert client.command(b"e NAMESPACE")[0] == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert client.command(b"f ENABLE CONDSTORE UTF8=ACCEPT") == [
        b"* ENABLED CONDSTORE UTF8=ACCEPT\r\n",
        b"f OK ENABLE completed\r\n",
    ]
    assert client.command(b"g ENABLE")[-1].startswith(b"g BAD ENABLE names at least one")


@BACKENDS
def test_select_fetch_flags_bodies_and_partials(imap: IMAPClients, content_backend: str) -> None:
    first = imap.server.deliver(message(1, body="first body\r\n"))
    imap.server.deliver(message(2))
    stored = imap.server.content(str(row_of(imap, first)["path"]))
    client = imap.logged_in()
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"2"])
    assert client.untagged_responses["UIDNEXT"] == [b"3"]
    assert int(client.untagged_responses["UIDVALIDITY"][0]) > 0
    typ, data = client.fetch("1", "(FLAGS UID RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == stored  # type: ignore[index]
    assert re.search(rb"FLAGS \(\) UID 1 RFC822.SIZE %d" % len(stored), data[0][0])  # type: ignore[index]
    typ, data = client.fetch("1", "(BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[]<5.10>)")
    header, _, text = stored.partition(b"\r\n\r\n")
    assert [part[1] for part in data if isinstance(part, tuple)] == [header + b"\r\n\r\n", text, stored[5:15]]
    assert b"BODY[]<5>" in data[2][0]  # type: ignore[index]
    assert row_of(imap, first)["seen"] is False  # PEEK leaves \Seen alone
    typ, data = client.uid("FETCH", "1", "(BODY[TEXT])")
    assert data[0][1] == b"first body\r\n"  # type: ignore[index]
    assert b"FLAGS (\\Seen)" in data[1] and b"UID 1" in data[0][0]  # type: ignore[index,operator]
    assert row_of(imap, first)["seen"] is True
    typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [part[1] for part in data if isinstance(part, tuple)] == [
        b"Subject: message 1\r\n\r\n",
        b"Subject: message 2\r\n\r\n",
    ]
    client.logout()


def test_store_goes_through_set_flags_and_shows_where_the_web_reads(imap: IMAPClients) -> None:
    file_id = imap.server.deliver(message(1))
    client = imap.imapclient()
    client.select_folder("INBOX")
    flags = client.add_flags([1], [b"$Junk", imapclient.FLAGGED])
    assert set(flags[1]) == {b"$Junk", b"\\Flagged"}
    row = row_of(imap, file_id)
    with session_scope(imap.server.config.resolved_database_url) as session:
        shown = account_message(session, account_id(session, "admin"), int(str(row["id"])))
    assert shown is not None and (shown["junk"], shown["flagged"], shown["notjunk"]) == (True, True, False)
    client.add_flags([1], [b"$NotJunk"])  # the store keeps junk and notjunk exclusive
    assert (row_of(imap, file_id)["junk"], row_of(imap, file_id)["notjunk"]) == (False, True)
    client.set_flags([1], [imapclient.SEEN])
    assert {k: row_of(imap, file_id)[k] for k in ("seen", "flagged", "notjunk")} == {
        "seen": True,
        "flagged": False,
        "notjunk": False,
    }
    client.logout()


def test_envelope_and_bodystructure_with_imapclient(imap: IMAPClients) -> None:
    imap.server.deliver(
        make_message(
            "carol@example.net",
            "admin@example.org",
            subject="=?utf-8?q?caf=C3=A9?=",
            extra_headers='Cc: "Dan D." <dan@example.com>, eve@example.com\r\n',
        )
    )
    client = imap.imapclient()
    client.select_folder("INBOX", readonly=True)
    envelope = client.fetch([1], ["ENVELOPE"])[1][b"ENVELOPE"]
    assert envelope.subject == b"=?utf-8?q?caf=C3=A9?="  # as sent: the client decodes it
    assert [(a.mailbox, a.host) for a in envelope.from_] == [(b"carol", b"example.net")]
    assert envelope.sender == envelope.from_ and envelope.reply_to == envelope.from_
    assert [(a.name, a.mailbox) for a in envelope.cc] == [(b"Dan D.", b"dan"), (None, b"eve")]
    assert envelope.bcc is None and envelope.message_id.startswith(b"<")
    structure = client.fetch([1], ["BODYSTRUCTURE"])[1][b"BODYSTRUCTURE"]
    assert not structure.is_multipart and structure[:2] == (b"TEXT", b"PLAIN")
    client.logout()


def test_a_move_out_of_rejects_trains_reputation_as_the_web_ui_does(imap: IMAPClients) -> None:
    """SPEC R3.3 end to end: imapclient's UID MOVE from Rejects to INBOX makes the reject the
    delivery it would have been (mailbox_orig_id is Inbox's, notjunk set); a move to Junk sets junk."""
    rejected = imap.server.reject(message(1))
    kept = imap.server.deliver(message(2))
    client = imap.imapclient()
    assert b"MOVE" in client.capabilities()
    client.select_folder("Rejects")
    client.move([1], "INBOX")
    row = row_of(imap, rejected)
    assert (row["is_reject"], row["notjunk"], row["uid"]) == (False, True, 2)  # a new UID in Inbox
    assert row["mailbox_orig_id"] == row["mailbox_id"] == mailbox_of(imap, "Inbox")
    client.select_folder("INBOX")
    client.move([1], "Junk")
    assert (row_of(imap, kept)["junk"], row_of(imap, kept)["mailbox_id"]) == (True, mailbox_of(imap, "Junk"))
    assert client.select_folder("INBOX")[b"EXISTS"] == 1
    client.logout()


@BACKENDS
def test_copy_adds_a_message_with_a_new_uid_and_move_reports_expunge(
    imap: IMAPClients, content_backend: str
) -> None:
    imap.server.deliver(message(1))
    imap.server.deliver(message(2))
    client = RawClient(imap)
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    client.command(b"b SELECT INBOX")
    validity = mailbox_uidvalidity(imap, "Junk")
    # UIDPLUS (RFC 4315): COPYUID names the source UIDs and the UIDs they got in the target.
    assert client.command(b"c COPY 2 Junk") == [b"c OK [COPYUID %d 2 1] COPY completed\r\n" % validity]
    assert client.command(b"d UID MOVE 1 Junk") == [
        b"* OK [COPYUID %d 1 2] Moved\r\n" % validity,
        b"* 1 EXPUNGE\r\n",
        b"d OK UID MOVE completed\r\n",
    ]
    assert client.command(b"e FETCH 1 (UID)") == [b"* 1 FETCH (UID 2)\r\n", b"e OK FETCH completed\r\n"]
    assert client.command(b"f MOVE 1 Nowhere")[-1] == b"f NO [TRYCREATE] No such mailbox\r\n"
    assert (
        client.command(b"g STATUS Junk (MESSAGES UIDNEXT)")[0]
        == b'* STATUS "Junk" (MESSAGES 2 UIDNEXT 3)\r\n'
    )


@BACKENDS
def test_expunge_removes_deleted_messages_and_only_files_no_copy_names(
    imap: IMAPClients, content_backend: str
) -> None:
    first, second = imap.server.deliver(message(1)), imap.server.deliver(message(2))
    first_file, second_file = (str(row_of(imap, f)["path"]) for f in (first, second))
    client = RawClient(imap)
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    client.command(b"b SELECT INBOX")
    client.command(b"c COPY 2 Junk")  # the copy has content of its own (a link, or a row)
    client.command(b"d STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert client.command(b"e EXPUNGE") == [
        b"* 2 EXPUNGE\r\n",
        b"* 1 EXPUNGE\r\n",
        b"e OK EXPUNGE completed\r\n",
    ]
    assert not {first_file, second_file} & imap.server.content_paths()
    with session_scope(imap.server.config.resolved_database_url) as session:
        assert find_message(session, first) is None and find_message(session, second) is None
    client.command(b"f SELECT Junk")
    fetched = client.command(b"g FETCH 1 BODY.PEEK[TEXT]")
    assert fetched[1] == b"Hello.\r\n"  # the copy's content is still there
    client.command(b"h STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert client.command(b"i CLOSE") == [b"i OK CLOSE completed\r\n"]  # expunged without telling
    assert client.command(b"j STATUS Junk (MESSAGES)")[0] == b'* STATUS "Junk" (MESSAGES 0)\r\n'
    assert imap.server.content_paths() == set()


def test_idle_announces_new_mail_within_a_second_and_moves_by_others(imap: IMAPClients) -> None:
    """SPEC R8.3 (new and departed messages): imapclient IDLEs on INBOX while mail is delivered and
    the web UI's move function takes a message away."""
    first = imap.server.deliver(message(1))
    client = imap.imapclient()
    client.select_folder("INBOX")
    client.idle()
    started = time.monotonic()
    imap.server.deliver(message(2))
    assert idle_until(client, (2, b"EXISTS")) and time.monotonic() - started < 1.5
    with session_scope(imap.server.config.resolved_database_url) as session:
        rules = MoveRules("Junk", "Rejects", stored_content(imap.server.config))
        move_messages(
            session, account_id(session, "admin"), [int(str(row_of(imap, first)["id"]))], "Junk", rules=rules
        )
    assert idle_until(client, (1, b"EXPUNGE"))
    client.idle_done()
    assert list(client.fetch([1, 2], ["FLAGS"])) == [2]  # UIDs: the first went to Junk
    client.logout()


@BACKENDS
def test_append_stores_the_message_with_its_flags_and_a_new_uid(
    imap_factory: Callable[..., IMAPClients], content_backend: str
) -> None:
    clients = imap_factory(max_append=5000, max_literal=100)
    client = clients.imapclient()
    client.select_folder("INBOX")
    draft = message(7, body="a draft\r\n")
    client.append("INBOX", draft, flags=[imapclient.SEEN, imapclient.DRAFT], msg_time=None)
    assert client.fetch([1], ["FLAGS", "BODY.PEEK[]"]) == {
        1: {b"FLAGS": (b"\\Seen", b"\\Draft"), b"BODY[]": draft, b"SEQ": 1}
    }
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="TRYCREATE"):
        client.append("Nowhere", draft)
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="literal too large"):
        client.append("INBOX", draft + b"x" * 6000)  # over the message size limit
    client.logout()
    raw = RawClient(clients)
    raw.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    raw.command(b"b SELECT INBOX")
    raw.send(
        b'c APPEND INBOX (\\Flagged) " 2-Dec-2026 10:00:00 +0000" {%d+}\r\n' % len(draft) + draft + b"\r\n"
    )
    validity = mailbox_uidvalidity(clients, "Inbox")
    assert raw.until(b"c") == [b"* 2 EXISTS\r\n", b"c OK [APPENDUID %d 2] APPEND completed\r\n" % validity]
    raw.command(b"d STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert raw.command(b"e UID EXPUNGE 2:5") == [b"* 2 EXPUNGE\r\n", b"e OK UID EXPUNGE completed\r\n"]
    assert raw.command(b"f LOGIN {200}")[-1].startswith(
        b"f BAD literal too large (at most 100"
    )  # only APPEND


def test_idle_ends_with_done_only_and_is_bounded_in_time(imap_factory: Callable[..., IMAPClients]) -> None:
    client = RawClient(imap_factory(idle_timeout=1.0))
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    client.send(b"b IDLE\r\n")
    assert client.line() == b"+ idling\r\n"
    client.send(b"NOPE\r\n")
    assert client.line() == b"b BAD IDLE ends with DONE\r\n"
    client.send(b"c IDLE\r\n")
    client.line()
    started = time.monotonic()
    assert client.line().startswith(b"* BYE Autologout") and client.line() == b""
    assert 0.8 < time.monotonic() - started < 5


def idle_until(client: imapclient.IMAPClient, wanted: tuple[int, bytes], timeout: float = 5.0) -> bool:
    """Whether the IDLE responses include `wanted` before the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted in client.idle_check(timeout=max(0.1, deadline - time.monotonic())):
            return True
    return False


def mailbox_state(clients: IMAPClients, name: str) -> UidState:
    """Admin's mailbox `name`: its id, UIDVALIDITY and UIDNEXT."""
    with session_scope(clients.server.config.resolved_database_url) as session:
        state = uid_state(session, account_id(session, "admin"), name)
        assert state is not None
        return state


def mailbox_uidvalidity(clients: IMAPClients, name: str) -> int:
    return mailbox_state(clients, name).uidvalidity


def mailbox_of(clients: IMAPClients, name: str) -> int:
    return mailbox_state(clients, name).mailbox_id


def test_examine_is_read_only(imap: IMAPClients) -> None:
    file_id = imap.server.deliver(message(1))
    client = imap.logged_in()
    client.select("INBOX", readonly=True)
    assert client.store("1", "+FLAGS", "(\\Seen)")[0] == "NO"
    client.fetch("1", "(BODY[])")
    assert row_of(imap, file_id)["seen"] is False
    client.logout()


def test_noop_reports_new_mail_and_messages_moved_away(imap: IMAPClients) -> None:
    first = imap.server.deliver(message(1))
    client = imap.logged_in()
    client.select("INBOX")
    imap.server.deliver(message(2))
    client.noop()
    assert client.untagged_responses.pop("EXISTS", None)[-1] == b"2"  # type: ignore[index]
    with session_scope(imap.server.config.resolved_database_url) as session:
        owner = account_id(session, "admin")
        rules = MoveRules("Junk", "Rejects", stored_content(imap.server.config))
        move_messages(session, owner, [int(str(row_of(imap, first)["id"]))], "Junk", rules=rules)
    typ, _ = client.noop()
    assert typ == "OK" and client.untagged_responses.pop("EXPUNGE") == [b"1"]
    typ, data = client.fetch("1", "(UID)")
    assert data == [b"1 (UID 2)"]
    client.logout()


MALFORMED = [
    (b'a1 LOGIN "unterminated', b"unterminated quoted string"),
    (b"a2 FETCH 1 (FLAGS", b"unterminated list"),
    (b"a3 FROBNICATE", b"unknown command"),
    (b"a4 SELECT INBOX extra", b"unexpected text"),
    (b"a5 LOGIN us\xc3\xa9r pw", b"8-bit"),
    (b"a6 LOGIN user\x00 pw", b"NUL"),
    (b"a7 ID " + b"(" * 20 + b")" * 20, b"nest"),
]


def test_malformed_commands_get_a_tagged_bad_and_the_session_goes_on(
    imap_factory: Callable[..., IMAPClients],
) -> None:
    clients = imap_factory(max_errors=50)
    client = RawClient(clients)
    for command, reason in MALFORMED:
        *_, answer = client.command(command)
        tag = command.split(b" ", 1)[0]
        assert answer.startswith(tag + b" BAD ") and reason in answer, (command, answer)
    client.send(b"b1 LOGIN admin {4}\r\n")
    assert client.line().startswith(b"+ ")
    client.send(b'pass "x"\r\n')  # the command goes on after the literal: `"x"` is one argument too many
    assert client.until(b"b1")[-1].startswith(b"b1 BAD unexpected text")
    assert client.command(b"c1 NOOP") == [b"c1 OK NOOP completed\r\n"]


def test_selected_state_commands_and_bad_sequence_sets(imap: IMAPClients) -> None:
    imap.server.deliver(message(1))
    client = RawClient(imap)
    assert client.command(b"a FETCH 1 FLAGS")[-1].startswith(b"a BAD FETCH is not allowed")
    client.command(b'b LOGIN admin "' + PASSWORD.encode() + b'"')
    client.command(b"c SELECT INBOX")
    for bad in (b"d FETCH 0 FLAGS", b"d FETCH 1:x FLAGS", b"d FETCH 5 FLAGS", b"d FETCH 1 (FLAGS BOGUS)"):
        assert client.command(bad)[-1].startswith(b"d BAD "), bad
    assert client.command(b"e UID FETCH 5:9 FLAGS") == [
        b"e OK UID FETCH completed\r\n"
    ]  # no such UIDs: nothing
    assert client.command(b"f FETCH 1 BODYSTRUCTURE")[0] == (
        b'* 1 FETCH (BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 1'
        b" NIL NIL NIL NIL))\r\n"
    )


def test_too_large_literals_are_refused(imap_factory: Callable[..., IMAPClients]) -> None:
    clients = imap_factory(max_literal=1000)
    client = RawClient(clients)
    assert client.command(b"a LOGIN {100000}")[-1].startswith(b"a BAD literal too large")
    assert (
        client.command(b"b NOOP")[-1] == b"b OK NOOP completed\r\n"
    )  # a synchronizing one: the session goes on
    client.send(b"c LOGIN {100000+}\r\n" + b"x" * 2000)
    lines = client.until(b"c")
    assert lines[-1].startswith(b"c BAD literal too large")
    assert (
        client.line().startswith(b"* BYE") and client.line() == b""
    )  # its octets cannot be told from commands


def test_over_long_lines_are_refused_and_dropped(imap_factory: Callable[..., IMAPClients]) -> None:
    client = RawClient(imap_factory(max_line=1000))
    client.send(b"a NOOP " + b"x" * 5000 + b"\r\n")
    assert client.until(b"a")[-1].startswith(b"a BAD line too long")
    assert client.command(b"b NOOP")[-1] == b"b OK NOOP completed\r\n"


def test_idle_clients_are_logged_out_after_a_bounded_time(imap_factory: Callable[..., IMAPClients]) -> None:
    clients = imap_factory(login_timeout=0.5, idle_timeout=1.0)
    started = time.monotonic()
    client = RawClient(clients)
    assert client.line().startswith(b"* BYE Autologout")
    assert client.line() == b""
    assert time.monotonic() - started < 5
    logged_in = RawClient(clients)
    logged_in.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    started = time.monotonic()
    assert logged_in.line().startswith(b"* BYE Autologout")
    assert 0.8 < time.monotonic() - started < 5


def test_too_many_connections_from_one_address_are_refused(imap_factory: Callable[..., IMAPClients]) -> None:
    clients = imap_factory(max_sessions_per_ip=2)
    kept = [RawClient(clients), RawClient(clients)]
    assert all(c.greeting.startswith(b"* OK") for c in kept)
    assert RawClient(clients).greeting.startswith(b"* BYE Too many connections")
    kept[0].command(b"a LOGOUT")
    deadline = time.monotonic() + 5
    while True:  # the server counts the session as ended once it has closed it
        greeting = RawClient(clients).greeting
        if greeting.startswith(b"* OK") or time.monotonic() > deadline:
            break
    assert greeting.startswith(b"* OK")


def test_too_many_bad_commands_end_the_session(imap_factory: Callable[..., IMAPClients]) -> None:
    client = RawClient(imap_factory(max_errors=3))
    for n in range(3):
        client.send(b"x%d BOGUS\r\n" % n)
    lines = [client.line() for _ in range(5)]
    assert lines[3].startswith(b"* BYE Too many bad commands") and lines[4] == b""


def test_starttls_with_pipelined_plaintext_is_refused(imap: IMAPClients) -> None:
    sock = socket.create_connection(("127.0.0.1", imap.server.port), timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"a STARTTLS\r\nb LOGIN admin x\r\n")
    assert reader.readline().startswith(b"a BAD Commands were sent after STARTTLS")
    assert reader.readline() == b""  # closed: the injected command is never run
    with pytest.raises((ssl.SSLError, OSError)):
        imap.tls.wrap_socket(sock, server_hostname="mail.example.org")
