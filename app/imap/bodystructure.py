"""FETCH BODY and BODYSTRUCTURE (RFC 9051 7.5.2): the MIME structure of the stored message, found by
the same boundary scan as BODY[section] (app/imap/sections.py), so part numbers agree. BODY is the
basic form; BODYSTRUCTURE adds the extension data: a multipart's parameters, and each part's MD5
(NIL: not computed), disposition, language and location. Nesting is bounded: a part deeper than
MAX_NESTING is described as opaque data."""

from __future__ import annotations

from email.message import Message
from email.utils import collapse_rfc2231_value

from app.imap.envelope import envelope
from app.imap.responses import string
from app.imap.sections import MAX_NESTING, body_parts, parse_header, split_header

NIL = b"NIL"
# A hostile Content-Language with thousands of tags is cut.
MAX_LANGUAGES = 20


def body_structure(message: bytes, *, extended: bool = False) -> bytes:
    """BODY, or with `extended` BODYSTRUCTURE."""
    header, body = split_header(message)
    return _structure(header, body, 0, extended)


def _structure(header: bytes, body: bytes, depth: int, extended: bool) -> bytes:
    parsed = parse_header(header)
    main, sub = _type(parsed)
    extension = _extension(parsed) if extended else []
    if main == "multipart" and depth < MAX_NESTING:
        parts = body_parts(body, parsed.get_boundary() or "")
        if parts:
            inner = b"".join(_structure(*split_header(part), depth + 1, extended) for part in parts)
            ext = [_parameters(parsed, main), *extension] if extended else []
            return b"(" + inner + b" " + b" ".join([string(sub.upper()), *ext]) + b")"
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
        fields += [envelope(body), _structure(inner_header, inner_body, depth + 1, extended), _lines(body)]
    elif main == "text":
        fields.append(_lines(body))
    md5 = [NIL] if extended else []  # Content-MD5 is not computed (RFC 9051 allows NIL)
    return b"(" + b" ".join([*fields, *md5, *extension]) + b")"


def _extension(parsed: Message) -> list[bytes]:
    """Disposition, language and location of a part (RFC 9051 body-fld-dsp, -lang, -loc)."""
    disposition = NIL
    if parsed.get("content-disposition"):
        kind = parsed.get_content_disposition() or "attachment"
        params = _parameters(parsed, "", header="content-disposition")
        disposition = b"(" + string(kind.upper()) + b" " + params + b")"
    return [disposition, _language(parsed), _nstring(parsed.get("content-location"))]


def _language(parsed: Message) -> bytes:
    """Content-Language: NIL, one tag, or a list of them."""
    tags = [tag.strip() for tag in str(parsed.get("content-language") or "").split(",") if tag.strip()]
    if len(tags) <= 1:
        return string(tags[0]) if tags else NIL
    return b"(" + b" ".join(string(tag) for tag in tags[:MAX_LANGUAGES]) + b")"


def _type(parsed: Message) -> tuple[str, str]:
    if not parsed.get("content-type"):
        return "text", "plain"
    return parsed.get_content_maintype(), parsed.get_content_subtype()


def _parameters(parsed: Message, main: str, header: str = "content-type") -> bytes:
    """The parameters of the Content-Type (or `header`) as a list of name-value pairs; text
    defaults to US-ASCII."""
    params = parsed.get_params(failobj=[], header=header)[1:] if parsed.get(header) else []
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
