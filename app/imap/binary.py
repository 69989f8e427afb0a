"""FETCH BINARY[part], BINARY.PEEK and BINARY.SIZE (RFC 3516, part of IMAP4rev2): a part's content
with its Content-Transfer-Encoding undone (base64 and quoted-printable decoded; 7bit, 8bit and
binary as they are). The whole message (BINARY[]) and a multipart are sent as stored. The octets
are sent as a literal, or as a literal8 (~{n}) when they hold NUL."""

from __future__ import annotations

import binascii
import re

from app.imap.errors import CommandFailed
from app.imap.parser import FetchItem, Section
from app.imap.sections import parse_header, partial, section_octets

_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_AS_STORED = ("", "7bit", "8bit", "binary")


def binary_item(content: bytes, item: FetchItem) -> bytes:
    """The FETCH data of a BINARY item of the message `content`."""
    part = item.section.part if item.section is not None else ()
    data = decoded_part(content, part)
    if item.name == "BINARY.SIZE":
        return b"%s %d" % (item.response_name().encode(), len(data))
    data = partial(data, item.partial)
    # RFC 9051's grammar allows an nstring or a literal8: a literal8 only when the octets hold NUL,
    # which a literal cannot carry (clients such as imapclient read no literal8).
    marker = b"~" if b"\x00" in data else b""
    return item.response_name().encode() + b" " + marker + b"{%d}\r\n" % len(data) + data


def decoded_part(content: bytes, part: tuple[int, ...]) -> bytes:
    """The part's content, its transfer encoding undone; CommandFailed (NO [UNKNOWN-CTE]) for an
    encoding we do not know."""
    if not part:
        return content
    body = section_octets(content, Section(part))
    header = section_octets(content, Section(part, "MIME"))
    parsed = parse_header(header)
    encoding = str(parsed.get("content-transfer-encoding", "")).strip().lower()
    if encoding in _AS_STORED:
        return body
    if encoding == "base64":
        return _base64(body)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    raise CommandFailed("NO", "[UNKNOWN-CTE] The part's Content-Transfer-Encoding is not one we decode")


def _base64(body: bytes) -> bytes:
    """Base64 decoded leniently, as mail readers do: line breaks and stray octets skipped, the
    decoding stopping at the padding, an incomplete last group dropped."""
    data = _NOT_BASE64.sub(b"", body.split(b"=", 1)[0])
    data = data[: len(data) - len(data) % 4 if len(data) % 4 == 1 else len(data)]
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
