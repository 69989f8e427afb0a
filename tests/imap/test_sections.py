"""BODY[section] octets cut from a stored message (RFC 9051 6.4.5): whole, header, text, field
lists, numbered parts of multiparts and of an attached message, MIME headers, and partials."""

from __future__ import annotations

import random
from email.parser import BytesHeaderParser
from email.policy import compat32

from app.imap.bodystructure import body_structure
from app.imap.parser import Section
from app.imap.sections import parse_header, partial, section_octets
from tests.imap.corpus import CORPUS

INNER = (
    b"From: inner@example.net\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n"
    b"--in\r\nContent-Type: text/plain\r\n\r\ninner plain\r\n--in\r\nContent-Type: text/html\r\n\r\n"
    b"<p>inner</p>\r\n--in--\r\n"
)
MESSAGE = (
    b"From: a@example.org\r\nSubject: outer\r\n x-folded\r\nTo: b@example.org\r\n"
    b'Content-Type: multipart/mixed; boundary="b 1"\r\n\r\n'
    b"preamble\r\n--b 1\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
    b"--b 1\r\nContent-Type: message/rfc822\r\n\r\n" + INNER + b"\r\n--b 1--\r\nepilogue\r\n"
)


def test_whole_header_and_text() -> None:
    header, _, text = MESSAGE.partition(b"\r\n\r\n")
    assert section_octets(MESSAGE, Section()) == MESSAGE
    assert section_octets(MESSAGE, Section(text="HEADER")) == header + b"\r\n\r\n"
    assert section_octets(MESSAGE, Section(text="TEXT")) == text


def test_header_field_lists_keep_continuations_and_end_with_a_blank_line() -> None:
    found = section_octets(MESSAGE, Section(text="HEADER.FIELDS", fields=("SUBJECT", "X-NONE")))
    assert found == b"Subject: outer\r\n x-folded\r\n\r\n"
    kept = section_octets(MESSAGE, Section(text="HEADER.FIELDS.NOT", fields=("SUBJECT", "CONTENT-TYPE")))
    assert kept == b"From: a@example.org\r\nTo: b@example.org\r\n\r\n"


def test_numbered_parts_and_their_mime_headers() -> None:
    assert section_octets(MESSAGE, Section((1,))) == b"first part"
    assert section_octets(MESSAGE, Section((1,), "MIME")) == b"Content-Type: text/plain\r\n\r\n"
    assert section_octets(MESSAGE, Section((2,))) == INNER
    assert section_octets(MESSAGE, Section((2,), "HEADER.FIELDS", ("SUBJECT",))) == b"Subject: inner\r\n\r\n"
    assert section_octets(MESSAGE, Section((2, 1))) == b"inner plain"
    assert section_octets(MESSAGE, Section((2, 2), "MIME")) == b"Content-Type: text/html\r\n\r\n"


def test_parts_the_message_lacks_are_empty() -> None:
    for part in [(3,), (1, 1), (2, 3), (2, 1, 1), (1,) * 50]:
        assert section_octets(MESSAGE, Section(part)) == b""
    assert section_octets(MESSAGE, Section((1,), "HEADER")) == b""  # a text part has no message header


def test_a_message_that_is_not_multipart_has_its_body_as_part_one() -> None:
    simple = b"Subject: s\r\n\r\nbody\r\n"
    assert section_octets(simple, Section((1,))) == b"body\r\n"
    assert section_octets(simple, Section((2,))) == b""
    assert section_octets(b"Subject: no body", Section(text="TEXT")) == b""


def test_partials() -> None:
    assert partial(b"0123456789", (2, 3)) == b"234"
    assert partial(b"0123456789", (8, 100)) == b"89"
    assert partial(b"0123456789", (20, 5)) == b""
    assert partial(b"abc", None) == b"abc"


def test_bodystructure_numbers_parts_as_body_sections_do() -> None:
    found = body_structure(MESSAGE)
    inner_text = b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 1)'
    inner_html = b'("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 12 1)'
    assert found.startswith(
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1)("MESSAGE" "RFC822" NIL'
    )
    assert b"(" + inner_text + inner_html + b' "ALTERNATIVE")' in found
    assert found.endswith(b' "MIXED")')
    assert b'"inner" ((NIL NIL "inner" "example.net"))' in found  # the attached message's envelope


def test_bodystructure_of_hostile_nesting_stays_bounded() -> None:
    nested = b"Subject: x\r\n\r\nbody\r\n"
    for _ in range(100):
        nested = b"Content-Type: message/rfc822\r\n\r\n" + nested
    found = body_structure(nested)
    assert found.count(b'"MESSAGE" "RFC822"') == 20 and b'"APPLICATION" "OCTET-STREAM"' in found


def test_bodystructure_extension_data() -> None:
    """BODYSTRUCTURE (not BODY) adds a multipart's parameters and each part's MD5 (NIL),
    disposition, language and location (RFC 9051 7.5.2)."""
    message = (
        b"Content-Type: multipart/mixed; boundary=x\r\nContent-Language: en, de\r\n\r\n"
        b"--x\r\nContent-Type: text/plain\r\nContent-Language: en\r\n\r\nhello\r\n"
        b"--x\r\nContent-Type: application/pdf; name=a.pdf\r\n"
        b'Content-Disposition: attachment; filename="a b.pdf"\r\n'
        b"Content-Location: http://example.org/a.pdf\r\n\r\n%PDF\r\n--x--\r\n"
    )
    assert body_structure(message, extended=True) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1 NIL NIL "en" NIL)'
        b'("APPLICATION" "PDF" ("NAME" "a.pdf") NIL NIL "7BIT" 4 NIL ("ATTACHMENT" ("FILENAME" "a b.pdf"))'
        b' NIL "http://example.org/a.pdf") "MIXED" ("BOUNDARY" "x") NIL ("en" "de") NIL)'
    )
    assert body_structure(message).endswith(b' "MIXED")')  # BODY: the basic form


# Pieces of headers, well-formed and not, that random headers are made of.
_PIECES = [
    b"From ",
    b"Content-Type",
    b"Subject",
    b":",
    b" ",
    b"\t",
    b"\r\n",
    b"\n",
    b"\r",
    b"a",
    b"=?",
    b"\xff",
    b"\x00",
    b";",
]


def test_parse_header_agrees_with_the_email_parser_field_for_field() -> None:
    rng = random.Random(13)
    headers = [message.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" for message in CORPUS.values()]
    headers += [b"".join(rng.choices(_PIECES, k=rng.randrange(1, 40))) for _ in range(3000)]
    for header in headers:
        ours, theirs = parse_header(header), BytesHeaderParser(policy=compat32).parsebytes(header)
        assert list(ours.raw_items()) == list(theirs.raw_items()), header
        assert ours.get_unixfrom() == theirs.get_unixfrom(), header
