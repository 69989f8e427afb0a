"""The octets a FETCH BODY[section] names (RFC 9051 6.4.5), cut from the message as stored.

Parts are found by their MIME boundaries in the raw octets, so what a client gets is byte for byte
what was received: part N of a multipart is its Nth body part; part 1 of a message that is not
multipart is its body; a part that is a message/rfc822 is entered by the next number. Every scan is
linear in the message size, and nesting is bounded (MAX_NESTING), so a hostile message costs no
more than its size.
"""

from __future__ import annotations

import re
from email.message import Message
from email.policy import compat32
from typing import Any

from app.imap.parser import Section

MAX_NESTING = 20
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"^(?=[^ \t\r\n])", re.MULTILINE)
# What email.feedparser takes for a line (with its end) and for a header line (headerRE).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")
_END_OF_LINE = re.compile(r"(\r\n|\r|\n)\Z")


class NoSuchPart(Exception):
    """The section names a part the message does not have: the data is empty (RFC 9051 6.4.5)."""


def section_octets(message: bytes, section: Section) -> bytes:
    """What `section` names in `message`; empty for a part the message does not have."""
    try:
        header, body = _locate(message, section.part)
        if section.part and section.text in ("HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            # These name the message inside a message/rfc822 part, not the part's MIME header.
            if content_type(header)[0] != "message":
                return b""
            header, body = split_header(body)
    except NoSuchPart:
        return b""
    if section.text == "":
        return body if section.part else message
    if section.text in ("HEADER", "MIME"):
        return header
    if section.text == "TEXT":
        return body
    return _fields(header, set(section.fields), keep=section.text == "HEADER.FIELDS")


def partial(data: bytes, window: tuple[int, int] | None) -> bytes:
    if window is None:
        return data
    start, length = window
    return data[start : start + length]


def split_header(entity: bytes) -> tuple[bytes, bytes]:
    """(header with its blank line, body); a header without a blank line is all header."""
    if entity.startswith((b"\r\n", b"\n")):
        end = 2 if entity.startswith(b"\r\n") else 1
        return entity[:end], entity[end:]
    found = _HEADER_END.search(entity)
    if found is None:
        return entity, b""
    return entity[: found.end()], entity[found.end() :]


def _locate(message: bytes, path: tuple[int, ...]) -> tuple[bytes, bytes]:
    """(header, body) of the part `path` names: the message's own for an empty path, else the
    part's MIME header and its body."""
    if len(path) > MAX_NESTING:
        raise NoSuchPart()
    header, body = split_header(message)
    is_message = True
    for number in path:
        header, body = _child(header, body, number, is_message=is_message)
        is_message = False
    return header, body


def _child(header: bytes, body: bytes, number: int, *, is_message: bool) -> tuple[bytes, bytes]:
    """Part `number` of an entity: of a multipart its body part; of a message that is not multipart,
    part 1 is its body; a message/rfc822 part is entered first (its parts are the message's)."""
    main, boundary = content_type(header)
    if main == "message" and not is_message:
        header, body = split_header(body)
        (main, boundary), is_message = content_type(header), True
    if main == "multipart":
        parts = body_parts(body, boundary)
        if not 0 < number <= len(parts):
            raise NoSuchPart()
        return split_header(parts[number - 1])
    if is_message and number == 1:
        return header, body
    raise NoSuchPart()


def content_type(header: bytes) -> tuple[str, str]:
    """(main type, boundary) of a header; text/plain's main type without a Content-Type."""
    parsed = parse_header(header)
    main = parsed.get_content_maintype() if parsed.get("content-type") else "text"
    if main == "message" and parsed.get_content_subtype() not in ("rfc822", "global"):
        main = "application"  # only an encapsulated message has parts of its own
    return main, parsed.get_boundary() or ""


class ParsedHeader(Message):
    """A parsed header, read only: get() looks the first field of a name up in a dict, where
    Message's walks every field (a BODYSTRUCTURE asks for ten fields of each part)."""

    def __init__(self) -> None:
        super().__init__(policy=compat32)
        self._first: dict[str, tuple[str, str]] = {}

    def set_raw(self, name: str, value: str) -> None:
        super().set_raw(name, value)
        self._first.setdefault(name.lower(), (name, value))

    def get(self, name: str, failobj: Any = None) -> Any:
        found = self._first.get(name.lower())
        return failobj if found is None else self.policy.header_fetch_parse(*found)


def parse_header(header: bytes) -> ParsedHeader:
    """The header as email's BytesHeaderParser (compat32) parses it, field for field, without its
    feed machinery (which costs several times as much): the lines up to the first that is not a
    header line, a leading "From " line as the envelope sender, each field with its continuation
    lines; the parser's defects are not recorded."""
    parsed = ParsedHeader()
    lines = []
    for line in _LINE.findall(header.decode("ascii", "surrogateescape")):
        if not _HEADER_LINE.match(line):
            break
        lines.append(line)
    field: list[str] = []
    for number, line in enumerate(lines):
        if line[0] in " \t":  # a continuation (of nothing, on the first line: dropped)
            if field:
                field.append(line)
            continue
        if field:
            parsed.set_raw(*compat32.header_source_parse(field))
            field = []
        if line.startswith("From "):
            if number == 0:
                parsed.set_unixfrom(_END_OF_LINE.sub("", line))
                continue
            if number == len(lines) - 1:  # the first line of the body, as the parser sees it
                break
            continue
        if not line.startswith(":"):  # a field without a name is dropped
            field = [line]
    if field:
        parsed.set_raw(*compat32.header_source_parse(field))
    return parsed


def body_parts(body: bytes, boundary: str) -> list[bytes]:
    """The body parts between the delimiter lines of `boundary` (RFC 2046 5.1.1)."""
    if not boundary:
        return []
    delimiter = re.compile(
        rb"(?:^|\r?\n)--" + re.escape(boundary.encode("ascii", "replace")) + rb"(--)?[ \t]*(?:\r?\n|\Z)"
    )
    parts: list[bytes] = []
    start = None
    for found in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : found.start()])
        if found.group(1):
            break
        start = found.end()
    return parts


def _fields(header: bytes, names: set[str], *, keep: bool) -> bytes:
    """The header fields named (keep) or all but them, each with its continuation lines, and a
    blank line after them (RFC 9051 6.4.5: HEADER.FIELDS includes the delimiting blank line)."""
    chosen = [f for f in header_fields(header) if (field_name(f) in names) == keep]
    return b"".join(f if f.endswith(b"\n") else f + b"\r\n" for f in chosen) + b"\r\n"


def header_fields(header: bytes) -> list[bytes]:
    """The header's fields as they are, each with its continuation lines."""
    text = header.rstrip(b"\r\n")
    starts = [m.start() for m in _FIELD_START.finditer(text)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def field_name(field: bytes) -> str:
    """A field's name, upper case (octets beyond ASCII kept as Latin-1 characters: they match nothing)."""
    return field.partition(b":")[0].strip().decode("latin-1").upper()


def field_value(field: bytes) -> bytes:
    """A field's value, unfolded (RFC 5322 2.2.3) and without surrounding white space."""
    return re.sub(rb"\r?\n(?=[ \t])", b"", field.partition(b":")[2]).strip()
