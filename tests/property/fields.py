"""The check every header field we build must pass, for the builder tests and the end-to-end ones:
one field of the expected name, lines ending in CRLF and only there, every continuation line starting
with white space, no other control character, lines within RFC 5322's 998 octets, and the stdlib's
parser reads it as that one field without a defect."""

from __future__ import annotations

import unicodedata
from email import message_from_bytes
from email import policy as email_policy

MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


def check_field(field: bytes, name: str) -> list[str]:
    """The field's lines, after checking the properties in the module doc."""
    assert field.startswith(name.encode() + b": ") and field.endswith(b"\r\n")
    lines = field[:-2].split(b"\r\n")
    for number, line in enumerate(lines):
        assert b"\r" not in line and b"\n" not in line, line
        assert len(line) <= MAX_LINE, len(line)
        assert number == 0 or line[:1] in (b" ", b"\t"), line
    text = field.decode("utf-8")  # raises on a lone surrogate that slipped through
    unsafe = {
        c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in "\t\r\n"
    }
    assert not unsafe, unsafe
    parsed = message_from_bytes(field + b"\r\n", policy=email_policy.SMTP)
    assert parsed.keys() == [name] and not parsed.defects
    return [line.decode("utf-8") for line in lines]
