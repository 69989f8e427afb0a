"""FETCH ENVELOPE (RFC 9051 7.5.2): date, subject, the address lists, In-Reply-To and Message-ID of
the message's header, as sent (encoded words stay encoded; octets beyond ASCII go out in a literal).
Addresses are parsed from the raw field (Latin-1 in, Latin-1 out, so no octet changes); a group
(`name: members;`) is shown with the RFC's markers: (NIL NIL "name" NIL) before its members and
(NIL NIL NIL NIL) after them."""

from __future__ import annotations

from email.utils import getaddresses

from app.imap.responses import string
from app.imap.sections import field_name, field_value, header_fields, split_header

NIL = b"NIL"
_ADDRESS_FIELDS = ("FROM", "SENDER", "REPLY-TO", "TO", "CC", "BCC")
# A hostile header with thousands of addresses is cut: a client shows a list, not all of it.
MAX_ADDRESSES = 1000


def envelope(message: bytes) -> bytes:
    header, _ = split_header(message)
    first: dict[str, bytes] = {}
    for field in header_fields(header):
        first.setdefault(field_name(field), field_value(field))
    lists = {name: _addresses(first.get(name)) for name in _ADDRESS_FIELDS}
    # Sender and Reply-To default to From (RFC 9051 7.5.2).
    lists["SENDER"] = lists["SENDER"] if lists["SENDER"] != NIL else lists["FROM"]
    lists["REPLY-TO"] = lists["REPLY-TO"] if lists["REPLY-TO"] != NIL else lists["FROM"]
    parts = [
        _nstring(first.get("DATE")),
        _nstring(first.get("SUBJECT")),
        *(lists[name] for name in _ADDRESS_FIELDS),
        _nstring(first.get("IN-REPLY-TO")),
        _nstring(first.get("MESSAGE-ID")),
    ]
    return b"(" + b" ".join(parts) + b")"


def _nstring(value: bytes | None) -> bytes:
    return NIL if value is None else string(value)


def _addresses(value: bytes | None) -> bytes:
    """The parenthesized address list of a field; NIL without the field or an address in it."""
    if value is None:
        return NIL
    found: list[bytes] = []
    for kind, text in _segments(value.decode("latin-1")):
        if kind == "group":
            found.append(b"(NIL NIL " + _text(text.strip().strip('"')) + b" NIL)")
        elif kind == "end":
            found.append(b"(NIL NIL NIL NIL)")
        else:
            found += [_address(name, address) for name, address in getaddresses([text]) if address]
        if len(found) >= MAX_ADDRESSES:
            break
    return b"(" + b"".join(found[:MAX_ADDRESSES]) + b")" if found else NIL


def _address(name: str, address: str) -> bytes:
    mailbox, at, host = address.rpartition("@")
    if not at:
        mailbox, host = address, ""
    return b"(" + b" ".join([_text(name), NIL, _text(mailbox), _text(host)]) + b")"


def _segments(value: str) -> list[tuple[str, str]]:
    """The field split at group syntax (RFC 5322 3.4): ("list", addresses), ("group", its name),
    ("end", ""); a ':' or ';' in a quoted string, a comment or <...> is not one. A group left open
    is closed at the end."""
    segments: list[tuple[str, str]] = []
    start, quoted, comments, angle, group = 0, False, 0, False, False
    escaped = False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == "\\" and (quoted or comments):
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif comments:
            comments += {"(": 1, ")": -1}.get(c, 0)
        elif c in '"(<>':
            quoted, comments, angle = c == '"', int(c == "("), (c == "<") or (angle and c != ">")
        elif c == ":" and not angle and not group:
            before, _, name = value[start:i].rpartition(",")
            segments += [("list", before), ("group", name)]
            start, group = i + 1, True
        elif c == ";" and not angle and group:
            segments += [("list", value[start:i]), ("end", "")]
            start, group = i + 1, False
    segments.append(("list", value[start:]))
    return [*segments, ("end", "")] if group else segments


def _text(value: str) -> bytes:
    return string(value.encode("latin-1")) if value else NIL
