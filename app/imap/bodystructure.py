"""FETCH BODY and BODYSTRUCTURE (RFC 9051 7.5.2): the MIME structure of the stored message, found by
the same boundary scan as BODY[section] (app/imap/sections.py), so part numbers agree. Both are sent
in the basic form, without extension data (the grammar makes it optional; clients do without).
Nesting is bounded: a part deeper than MAX_NESTING is described as opaque data."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value

from app.imap.envelope import envelope
from app.imap.responses import string
from app.imap.sections import MAX_NESTING, body_parts, split_header

NIL = b"NIL"


def body_structure(message: bytes) -> bytes:
    header, body = split_header(message)
    return _structure(header, body, depth=0)


def _structure(header: bytes, body: bytes, depth: int) -> bytes:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(header)
    main, sub = _type(parsed)
    if main == "multipart" and depth < MAX_NESTING:
        parts = body_parts(body, parsed.get_boundary() or "")
        if parts:
            inner = b"".join(_structure(*split_header(part), depth=depth + 1) for part in parts)
            return b"(" + inner + b" " + string(sub.upper()) + b")"
        main, sub = "text", "plain"  # a multipart without parts: shown as the text it is
    if depth >= MAX_NESTING:
        main, sub = "application", "octet-stream"
    fields = [
        string(main.upper()),
        string(sub.upper()),
        _parameters(parsed, main),
        _nstring(parsed.get("content-id")),
        _nstring(parsed.get("content-description")),
        string((parsed.get("content-transfer-encoding") or "7BIT").strip().upper()),
        b"%d" % len(body),
    ]
    if main == "message" and sub in ("rfc822", "global") and depth < MAX_NESTING:
        inner_header, inner_body = split_header(body)
        fields += [envelope(body), _structure(inner_header, inner_body, depth + 1), _lines(body)]
    elif main == "text":
        fields.append(_lines(body))
    return b"(" + b" ".join(fields) + b")"


def _type(parsed: Message) -> tuple[str, str]:
    if not parsed.get("content-type"):
        return "text", "plain"
    return parsed.get_content_maintype(), parsed.get_content_subtype()


def _parameters(parsed: Message, main: str) -> bytes:
    """The Content-Type parameters as a list of name-value pairs; text defaults to US-ASCII."""
    params = parsed.get_params(failobj=[])[1:] if parsed.get("content-type") else []
    pairs = [
        string(name.upper()) + b" " + string(str(collapse_rfc2231_value(value)))
        for name, value in params
        if name
    ]
    if not pairs and main == "text":
        pairs = [b'"CHARSET" "US-ASCII"']
    return b"(" + b" ".join(pairs) + b")" if pairs else NIL


def _nstring(value: str | None) -> bytes:
    return NIL if value is None else string(str(value).strip())


def _lines(body: bytes) -> bytes:
    return b"%d" % (body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0))
