"""SEARCH keys that read the message (HEADER, TO, CC, BCC, FROM, SUBJECT, BODY, TEXT: decoded
encoded words, transfer encodings and charsets, case-insensitive) and ESEARCH (RFC 4731), over
loopback TLS on the real store; and the text matching on hostile messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.imap.textsearch import LARGEST_KEPT, HeaderValues, MessageText, text_matches
from app.store.content import FileMessages
from tests.imap.conftest import BACKENDS, PASSWORD, IMAPClients
from tests.imap.test_imap_server import RawClient
from tests.support.smtpfixtures import make_message

MULTIPART = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <jurgen@example.net>\r\n"
    b"To: admin@example.org\r\n"
    b"Cc: Dave <dave@example.com>,\r\n eve@example.com\r\n"
    b"Subject: =?iso-8859-1?q?Gr=FC=DFe?= aus Berlin\r\n"
    b"X-Ticket: PW-1234\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"RGllIFJlY2hudW5nIGbDvHIgZGVuIE3DpHJ6Lg==\r\n"  # "Die Rechnung für den März."
    b"--b1\r\n"
    b"Content-Type: text/html; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"<p>Sch=F6ne Gr=FC=DFe</p>\r\n"
    b"--b1--\r\n"
)


def selected(imap: IMAPClients) -> RawClient:
    client = RawClient(imap)
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    client.command(b"b SELECT INBOX")
    return client


@BACKENDS
def test_text_keys_decode_headers_and_bodies(imap: IMAPClients, content_backend: str) -> None:
    imap.server.deliver(make_message("carol@example.net", "admin@example.org", subject="plain one"))
    imap.server.deliver(MULTIPART)
    imap.server.deliver(
        make_message(
            "x@example.net",
            "bob@example.org",
            body="Bcc test\r\n",
            extra_headers="Bcc: secret@example.org\r\n",
        )
    )
    client = selected(imap)
    for search, found in [
        (b'SEARCH FROM "J\xc3\xbcrgen"', b"2"),  # the decoded display name
        (b'SEARCH FROM "carol@EXAMPLE.net"', b"1"),
        (b'SEARCH SUBJECT "gr\xc3\x9c\xc3\x9fe"', b"2"),  # ISO-8859-1 encoded word, any case
        (b"SEARCH CC eve@", b"2"),  # in the folded continuation line
        (b"SEARCH TO bob@", b"3"),
        (b"SEARCH BCC secret", b"3"),
        (b"SEARCH HEADER X-Ticket pw-12", b"2"),
        (b'SEARCH HEADER X-Ticket ""', b"2"),  # an empty value: the field is there
        (b"SEARCH HEADER X-Missing x", b""),
        (b'SEARCH BODY "M\xc3\xa4rz"', b"2"),  # base64 UTF-8 decoded
        (b'SEARCH BODY "sch\xc3\xb6ne"', b"2"),  # quoted-printable ISO-8859-1 decoded
        (b"SEARCH BODY Berlin", b""),  # the subject is not in the body
        (b"SEARCH TEXT Berlin", b"2"),
        (b"SEARCH TEXT bcc", b"3"),
        (b"SEARCH NOT BODY hello", b"2 3"),
        (b"SEARCH OR SUBJECT plain BODY rechnung", b"1 2"),
    ]:
        lines = client.command(b"c " + search)
        assert lines == [b"* SEARCH" + (b" " + found if found else b"") + b"\r\n", lines[-1]], search
        assert lines[-1].startswith(b"c OK")
    assert client.command(b'd SEARCH BODY "\xff"')[-1].startswith(b"d BAD")  # not UTF-8
    assert client.command(b"e SEARCH HEADER Bad:Name x")[-1].startswith(b"e BAD")


def test_esearch_returns_min_max_count_all_with_the_tag(imap: IMAPClients) -> None:
    for n in range(1, 6):
        imap.server.deliver(make_message("carol@example.net", "admin@example.org", subject=f"m{n}"))
    client = selected(imap)
    client.command(b"c STORE 2,4:5 +FLAGS (\\Flagged)")
    assert client.command(b"d SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED")[0] == (
        b'* ESEARCH (TAG "d") MIN 2 MAX 5 COUNT 3 ALL 2,4:5\r\n'
    )
    assert client.command(b"e UID SEARCH RETURN () FLAGGED")[0] == b'* ESEARCH (TAG "e") UID ALL 2,4:5\r\n'
    assert client.command(b"f SEARCH RETURN (COUNT MIN) DELETED")[0] == b'* ESEARCH (TAG "f") COUNT 0\r\n'
    assert client.command(b"g UID SEARCH RETURN (MAX) CHARSET UTF-8 SUBJECT m3")[0] == (
        b'* ESEARCH (TAG "g") UID MAX 3\r\n'
    )
    assert client.command(b"h SEARCH RETURN (PARTIAL) ALL")[-1].startswith(b"h BAD SEARCH return options")
    assert client.command(b"i SEARCH RETURN MIN ALL")[-1].startswith(b"i BAD")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"no header at all",
        b"Subject: =?x-unknown?q?abc?=\r\n\r\nbody",
        b"Subject: =?utf-8?b?!!!?=\r\n\r\nbody",
        b'Content-Type: multipart/mixed; boundary="\r\n\r\n--\r\n--',
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nbody \xff\xfe",
        b"From: a\r\n\x00\x01: odd\r\n\r\n" + b"x" * 5000,
    ],
)
def test_hostile_messages_are_searched_without_failing(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m"
    path.write_bytes(content)
    text = MessageText(FileMessages(tmp_path), "m", 1000)
    for name, value in [("SUBJECT", "abc"), ("BODY", "body"), ("TEXT", "x"), ("HEADER", ("FROM", ""))]:
        assert text_matches(text, name, value) in (True, False)
    assert len(text.raw) <= 1000  # read no further than the cap


def test_the_file_is_read_only_up_to_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"Subject: near\r\n\r\n" + b"a" * 100 + b"needle")
    assert text_matches(MessageText(FileMessages(tmp_path), "m", 10_000), "BODY", "needle")
    assert not text_matches(MessageText(FileMessages(tmp_path), "m", 100), "BODY", "needle")


@BACKENDS
def test_binary_fetch_decodes_a_leaf_part_and_append_takes_literal8(
    imap: IMAPClients, content_backend: str
) -> None:
    imap.server.deliver(MULTIPART)
    imap.server.deliver(
        b"Subject: odd\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n"
    )
    client = selected(imap)
    text = "Die Rechnung für den März.".encode()
    answer = b"".join(client.command(b"c FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY[2]<0.9>)"))
    assert answer.startswith(
        b"* 1 FETCH (BINARY[1] {%d}\r\n%s BINARY.SIZE[1] %d "
        b"BINARY[2]<0> {9}\r\n<p>Sch\xf6ne FLAGS (\\Seen))\r\n" % (len(text), text, len(text))
    )
    assert b"\\Seen" in b"".join(client.command(b"d FETCH 1 FLAGS"))  # BINARY[2] set \Seen, not the peek
    whole = b"".join(client.command(b"e FETCH 1 BINARY.PEEK[]"))
    assert b"{%d}\r\n" % len(MULTIPART) + MULTIPART in whole  # the whole message as stored
    assert client.command(b"f FETCH 2 BINARY[1]")[-1].startswith(b"f NO [UNKNOWN-CTE]")
    imap.server.deliver(b"Subject: nul\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n")
    client.command(b"f NOOP")
    nul = b"".join(client.command(b"f FETCH 3 BINARY.PEEK[1]"))
    assert nul.startswith(b"* 3 FETCH (BINARY[1] ~{3}\r\n\x00\x01\x02)\r\n")  # NUL: a literal8
    assert client.command(b"g FETCH 1 BINARY[1.HEADER]")[-1].startswith(b"g BAD")
    content = b"Subject: utf8\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
    client.send(b"h APPEND INBOX UTF8 (~{%d+}\r\n" % len(content) + content + b")\r\n")
    assert b"[APPENDUID" in client.until(b"h")[-1]
    client.send(b"i APPEND INBOX ~{5+}\r\na\x00b\r\n\r\n")
    assert client.until(b"i")[-1].startswith(b"i NO [UNKNOWN-CTE]")
    assert client.command(b"j SEARCH RETURN (COUNT) ALL")[0] == b'* ESEARCH (TAG "j") COUNT 4\r\n'


def test_searchres_saves_a_result_that_dollar_names(imap: IMAPClients) -> None:
    for n in range(1, 6):
        imap.server.deliver(make_message("carol@example.net", "admin@example.org", subject=f"m{n}"))
    client = selected(imap)
    client.command(b"c STORE 2,4 +FLAGS (\\Flagged)")
    assert client.command(b"d SEARCH RETURN (SAVE) FLAGGED") == [b"d OK SEARCH completed\r\n"]  # no ESEARCH
    assert client.command(b"e FETCH $ (UID)")[:2] == [b"* 2 FETCH (UID 2)\r\n", b"* 4 FETCH (UID 4)\r\n"]
    assert client.command(b"f SEARCH $ NOT 4") == [b"* SEARCH 2\r\n", b"f OK SEARCH completed\r\n"]
    assert client.command(b"g UID SEARCH RETURN (SAVE MAX) ALL")[0] == b'* ESEARCH (TAG "g") UID MAX 5\r\n'
    assert client.command(b"h UID MOVE $ Junk")[-1].startswith(b"h OK")
    assert (
        client.command(b"i SEARCH RETURN (COUNT) UID $")[0] == b'* ESEARCH (TAG "i") COUNT 0\r\n'
    )  # moved away
    client.command(b"j SEARCH RETURN (SAVE MIN MAX) FLAGGED")
    assert client.command(b"k UID SEARCH $")[0] == b"* SEARCH 2 4\r\n"
    client.command(b"l SELECT INBOX")  # a new selection forgets the saved result
    assert client.command(b"m SEARCH $")[0] == b"* SEARCH\r\n"


def test_enable_imap4rev2_changes_the_responses(imap: IMAPClients) -> None:
    imap.server.deliver(make_message("carol@example.net", "admin@example.org", subject="one"))
    client = RawClient(imap)
    assert b" IMAP4rev1 IMAP4rev2 " in client.greeting
    client.command(b'a LOGIN admin "' + PASSWORD.encode() + b'"')
    assert client.command(b"b SELECT INBOX")[2] == b"* 0 RECENT\r\n"  # IMAP4rev1 until enabled
    assert client.command(b"c SEARCH ALL")[0] == b"* SEARCH 1\r\n"
    assert client.command(b"d ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
    selected = client.command(b"e SELECT INBOX")
    assert selected[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
    assert not any(b"RECENT" in line for line in selected)
    assert client.command(b"f SEARCH ALL")[0] == b'* ESEARCH (TAG "f") ALL 1\r\n'
    assert client.command(b"g UID SEARCH DELETED")[0] == b'* ESEARCH (TAG "g") UID\r\n'
    client.command(b"h STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert (
        client.command(b"i STATUS INBOX (DELETED MESSAGES)")[0]
        == b'* STATUS "INBOX" (DELETED 1 MESSAGES 1)\r\n'
    )
    assert client.command(b'j CREATE "Entw\xc3\xbcrfe"') == [b"j OK CREATE completed\r\n"]  # UTF-8 names
    listed = b"".join(client.command(b'k LIST "" Entw*'))
    assert listed.startswith(b'* LIST (\\HasNoChildren) "/" {9}\r\nEntw\xc3\xbcrfe\r\n')


def test_a_field_is_found_by_its_whole_name_in_any_case_and_unfolded(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(
        b"X-Subject: other\r\nsubject: Folded\r\n\tline\r\nSUBJECT:two\r\n"
        b"To: a\r\n Subject: no\r\n\r\nSubject: body"
    )
    text = MessageText(FileMessages(tmp_path), "m", 10_000)
    assert text.values("SUBJECT") == ("folded\tline", "two")
    assert text.values("X-SUBJECT") == ("other",)
    # Names no field can have find nothing, though a pattern made of them would match a line.
    assert text.values("SUBJECT: X") == () and text.values("subject") == () and text.values("S.*") == ()


def test_header_values_are_kept_so_a_second_search_reads_no_file(tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"Subject: Kept\r\n\r\nbody")
    kept = HeaderValues(10)
    assert text_matches(MessageText(FileMessages(tmp_path), "m", 1000, kept), "SUBJECT", "kept")
    (tmp_path / "m").unlink()  # files never change: the values kept answer without it
    assert text_matches(MessageText(FileMessages(tmp_path), "m", 1000, kept), "SUBJECT", "kept")
    assert not text_matches(MessageText(FileMessages(tmp_path), "m", 1000, kept), "SUBJECT", "other")


def test_header_values_kept_are_bounded_the_oldest_dropped_first() -> None:
    kept = HeaderValues(2)
    for n in range(3):
        kept.put(f"/data/{n}", "SUBJECT", (str(n),))
    assert len(kept) == 2
    assert kept.get("/data/0", "SUBJECT") is None and kept.get("/data/2", "SUBJECT") == ("2",)


def test_header_values_kept_are_bounded_in_characters_a_huge_field_not_kept() -> None:
    kept = HeaderValues(100, characters=1000)
    for n in range(5):
        kept.put(f"/d/{n}", "SUBJECT", ("x" * 300,))  # 300 + 4 + 7 characters each: three fit
    assert len(kept) == 3
    assert kept.get("/d/1", "SUBJECT") is None and kept.get("/d/4", "SUBJECT") == ("x" * 300,)
    kept.put("/d/4", "SUBJECT", ("y",))  # put again: replaced, its old size given back
    assert kept.get("/d/4", "SUBJECT") == ("y",) and len(kept) == 3
    big = HeaderValues(100)
    big.put("/d/huge", "SUBJECT", ("z" * LARGEST_KEPT,))  # too long to keep: searched from the file
    assert big.get("/d/huge", "SUBJECT") is None and len(big) == 0
