"""CONDSTORE (RFC 7162, without QRESYNC): HIGHESTMODSEQ in SELECT and STATUS, FETCH MODSEQ and
CHANGEDSINCE, STORE UNCHANGEDSINCE with [MODIFIED], SEARCH MODSEQ, ENABLE; with a raw client (exact
bytes) and imapclient."""

from __future__ import annotations

from tests.imap.conftest import PASSWORD, IMAPClients, message
from tests.imap.test_imap_server import RawClient, mailbox_state


def logged_in(imap: IMAPClients) -> RawClient:
    client = RawClient(imap)
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    return client


def test_select_status_fetch_and_search_show_modification_sequences(imap: IMAPClients) -> None:
    for n in range(3):
        imap.server.deliver(message(n))
    high = mailbox_state(imap, "Inbox").highestmodseq
    client = logged_in(imap)
    assert b"CONDSTORE" in client.command(b"b CAPABILITY")[0].split()
    assert client.command(b"c STATUS INBOX (HIGHESTMODSEQ MESSAGES)")[0] == (
        b'* STATUS "INBOX" (HIGHESTMODSEQ %d MESSAGES 3)\r\n' % high
    )
    selected = client.command(b"d SELECT INBOX (CONDSTORE)")
    assert b"* OK [HIGHESTMODSEQ %d] Highest modification sequence\r\n" % high in selected
    assert selected[-1] == b"d OK [READ-WRITE] SELECT completed\r\n"
    assert client.command(b"e FETCH 1:* (MODSEQ)")[:-1] == [
        b"* %d FETCH (MODSEQ (%d))\r\n" % (n, high - 3 + n) for n in (1, 2, 3)
    ]
    # CHANGEDSINCE: only what changed after the value, MODSEQ added to the items asked for.
    assert client.command(b"f UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % (high - 1))[:-1] == [
        b"* 3 FETCH (UID 3 FLAGS () MODSEQ (%d))\r\n" % high
    ]
    assert client.command(b"g SEARCH MODSEQ %d" % (high - 1))[0] == b"* SEARCH 2 3 (MODSEQ %d)\r\n" % high
    assert client.command(b'h UID SEARCH MODSEQ "/flags/\\\\seen" all %d' % (high + 1))[0] == b"* SEARCH\r\n"
    assert client.command(b"i FETCH 1 (FLAGS) (CHANGEDSINCE x)")[-1].startswith(b"i BAD ")


def test_store_unchangedsince_leaves_changed_messages_and_names_them(imap: IMAPClients) -> None:
    for n in range(3):
        imap.server.deliver(message(n))
    high = mailbox_state(imap, "Inbox").highestmodseq
    client = logged_in(imap)
    assert client.command(b"b ENABLE CONDSTORE")[0] == b"* ENABLED CONDSTORE\r\n"
    client.command(b"c SELECT INBOX")
    # Message 3 changed after high - 1: it is left as it is and named in [MODIFIED].
    answer = client.command(b"d STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % (high - 1))
    assert answer == [
        b"* 1 FETCH (FLAGS (\\Flagged) UID 1 MODSEQ (%d))\r\n" % (high + 1),
        b"* 2 FETCH (FLAGS (\\Flagged) UID 2 MODSEQ (%d))\r\n" % (high + 1),
        b"d OK [MODIFIED 3] STORE completed\r\n",
    ]
    assert client.command(b"e UID STORE 1:3 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Seen)") == [
        b"e OK [MODIFIED 1:3] UID STORE completed\r\n"
    ]
    # .SILENT under CONDSTORE still tells the new MODSEQ (RFC 7162 3.1.3).
    assert client.command(b"f STORE 3 +FLAGS.SILENT (\\Seen)")[0] == (
        b"* 3 FETCH (UID 3 MODSEQ (%d))\r\n" % (high + 2)
    )
    assert client.command(b"g FETCH 1:3 (FLAGS)")[:-1] == [
        b"* 1 FETCH (FLAGS (\\Flagged))\r\n",
        b"* 2 FETCH (FLAGS (\\Flagged))\r\n",
        b"* 3 FETCH (FLAGS (\\Seen))\r\n",
    ]


def test_imapclient_condstore_and_live_updates_with_modseq(imap: IMAPClients) -> None:
    imap.server.deliver(message(1))
    one, two = imap.imapclient(), imap.imapclient()
    assert one.enable("CONDSTORE") == [b"CONDSTORE"]
    selected = one.select_folder("INBOX")
    high = selected[b"HIGHESTMODSEQ"]
    two.select_folder("INBOX")
    two.add_flags([1], [b"\\Answered"])
    assert one.noop()[1] == [(1, b"FETCH", (b"FLAGS", (b"\\Answered",), b"UID", 1, b"MODSEQ", (high + 1,)))]
    assert one.fetch([1], ["FLAGS"], modifiers=[f"CHANGEDSINCE {high}"]) == {
        1: {b"FLAGS": (b"\\Answered",), b"MODSEQ": (high + 1,), b"SEQ": 1}
    }
    assert one.fetch([1], ["FLAGS"], modifiers=[f"CHANGEDSINCE {high + 1}"]) == {}
    one.logout()
    two.logout()
