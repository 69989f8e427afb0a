"""FETCH ENVELOPE (RFC 9051 7.5.2): date, subject, the address lists, In-Reply-To and Message-ID of
the message's header, as sent (encoded words stay encoded; octets beyond ASCII go out in a literal).
Addresses are parsed from the raw field (Latin-1 in, Latin-1 out, so no octet changes); a group's
name and end are not shown as the RFC's group markers yet (its members are listed)."""

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
    found = []
    for name, address in getaddresses([value.decode("latin-1")])[:MAX_ADDRESSES]:
        if not address:
            continue
        mailbox, at, host = address.rpartition("@")
        if not at:
            mailbox, host = address, ""
        shown = [_text(name), NIL, _text(mailbox), _text(host)]
        found.append(b"(" + b" ".join(shown) + b")")
    return b"(" + b"".join(found) + b")" if found else NIL


def _text(value: str) -> bytes:
    return string(value.encode("latin-1")) if value else NIL
