"""Mailbox names on the wire: modified UTF-7 for IMAP4rev1 clients (RFC 3501 5.1.3), UTF-8 once a
client enabled UTF8=ACCEPT or IMAP4rev2 (RFC 6855, RFC 9051 5.1), and the rules a new name follows.

A name read in modified UTF-7 must be in its one canonical form (printable ASCII as itself, "&" as
"&-", everything else base64 of UTF-16 between "&" and "-"): anything else is malformed, so two
spellings never name one mailbox.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode, b64encode

DELIMITER = "/"
MAX_NAME = 255  # characters: the store column holds 512
MAX_LEVELS = 16
_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")


class BadName(Exception):
    """A name that is malformed (BAD) or that the server does not make (NO); our words."""

    def __init__(self, text: str, *, malformed: bool = False) -> None:
        super().__init__(text)
        self.malformed = malformed


def encode_mutf7(name: str) -> str:
    """The name in modified UTF-7."""
    out, pending = [], ""
    for char in name + "\0":  # the sentinel flushes the last run of non-ASCII characters
        if char != "\0" and not 0x20 <= ord(char) <= 0x7E:
            pending += char
            continue
        if pending:
            encoded = b64encode(pending.encode("utf-16-be")).rstrip(b"=").replace(b"/", b",")
            out.append("&" + encoded.decode("ascii") + "-")
            pending = ""
        if char != "\0":
            out.append("&-" if char == "&" else char)
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """The name a modified UTF-7 name stands for; BadName (malformed) if it is not the canonical
    modified UTF-7 of some name. A name with octets beyond ASCII is taken as UTF-8, as sent."""
    if not name.isascii() or "&" not in name:
        return name
    try:
        decoded = _SHIFTED.sub(_decoded_run, name)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadName("the mailbox name is not valid modified UTF-7", malformed=True) from None
    if "&" in _SHIFTED.sub("", name) or encode_mutf7(decoded) != name:
        raise BadName("the mailbox name is not valid modified UTF-7", malformed=True)
    return decoded


def _decoded_run(found: re.Match[str]) -> str:
    run = found.group(1)
    if not run:
        return "&"
    raw = run.replace(",", "/")
    return b64decode(raw + "=" * (-len(raw) % 4), validate=True).decode("utf-16-be")


def new_name(name: str) -> str:
    """A name CREATE or RENAME may make, with a trailing delimiter dropped (RFC 9051 6.3.4);
    BadName if it is not one."""
    if name.endswith(DELIMITER):
        name = name[:-1]
    parts = name.split(DELIMITER)
    if len(name) > MAX_NAME or len(parts) > MAX_LEVELS:
        raise BadName(f"[LIMIT] Mailbox names are at most {MAX_NAME} characters and {MAX_LEVELS} levels")
    if not all(parts):
        raise BadName("[CANNOT] A mailbox name has no empty levels (// or a leading /)")
    if any(c in name for c in "*%") or any(0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 for c in name):
        raise BadName("[CANNOT] A mailbox name holds no wildcards (* %) or control characters")
    if len(parts) > 1 and parts[0].upper() == "INBOX":
        raise BadName("[CANNOT] INBOX has no inferior mailboxes here")
    return name


def parents(name: str) -> list[str]:
    """The names above this one, outermost first: a/b/c -> a, a/b."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:n]) for n in range(1, len(parts))]
