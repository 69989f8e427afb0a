"""Find the report in a message or a file and decompress it, within fixed bounds.

A report comes as an attachment (or the whole body) of a message: DMARC aggregate reports as XML, gzip or
zip (RFC 9990 2.6.2, RFC 7489 7.2.1.1), TLS reports as `application/tlsrpt+json` or `+gzip` (RFC 8460
5.3); a file an operator imports is the bare report, in any of these encodings, or a whole message.

Every size is bounded before the work it would cost is done: the message and the compressed payload by
their length, the output of gzip and zip by decompressing in chunks that stop at the cap (a bomb is
refused after at most the cap is allocated, never the whole output). The cap is the smaller of
MAX_DECOMPRESSED and MAX_RATIO times the compressed size, with RATIO_FLOOR as its lowest value, so a
small, very repetitive report still passes.
"""

from __future__ import annotations

import email
import email.policy
import io
import zipfile
import zlib
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import Literal

from app.inreports.errors import DMARC_UNPARSABLE, Kind, ReportError, reason_for

MAX_MESSAGE = 16 * 1024 * 1024  # a whole message: room for MAX_COMPRESSED in base64, and headers
MAX_COMPRESSED = 10 * 1024 * 1024  # the payload as attached (after the transfer encoding)
MAX_DECOMPRESSED = 50 * 1024 * 1024  # the report document itself
MAX_RATIO = 100  # decompressed : compressed, beyond RATIO_FLOOR
RATIO_FLOOR = 1024 * 1024
MAX_PARTS = 100  # MIME parts looked at in one message; also the most multiparts (boundaries) it may have
CHUNK = 64 * 1024  # input fed to zlib at a time, and the most output asked for per step

Encoding = Literal["gzip", "zip", "plain"]

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a member's header; the end record of an empty archive
# Media types by what they say of the content: compression, and for TLSRPT the kind too.
MEDIA_TYPES: dict[str, tuple[Encoding, Kind | None]] = {
    "application/gzip": ("gzip", None),
    "application/x-gzip": ("gzip", None),
    "application/zip": ("zip", None),
    "application/x-zip-compressed": ("zip", None),
    "text/xml": ("plain", "dmarc"),
    "application/xml": ("plain", "dmarc"),
    "application/tlsrpt+gzip": ("gzip", "tls"),
    "application/tlsrpt+json": ("plain", "tls"),
}
# File name endings, longest first, for attachments sent as application/octet-stream or the like.
EXTENSIONS: tuple[tuple[str, tuple[Encoding, Kind | None]], ...] = (
    (".xml.gz", ("gzip", "dmarc")),
    (".json.gz", ("gzip", "tls")),
    (".gz", ("gzip", None)),
    (".zip", ("zip", None)),
    (".xml", ("plain", "dmarc")),
    (".json", ("plain", "tls")),
)


@dataclass(frozen=True)
class Payload:
    """A report document, decompressed, and what it is."""

    kind: Kind
    data: bytes
    encoding: Encoding


def from_file(data: bytes) -> Payload:
    """A file's bytes: gzip, zip, XML or JSON by their first bytes; anything else is read as a message."""
    encoding = _sniff_encoding(data)
    kind = _sniff_kind(data) if encoding == "plain" else None
    if encoding == "plain" and kind is None:
        return from_message(data)
    reason = reason_for(kind or "dmarc")
    if len(data) > MAX_COMPRESSED:
        raise ReportError(reason, "report too large")
    return _payload(data, encoding, kind, reason)


def from_message(raw: bytes, expect: Kind | None = None) -> Payload:
    """The one report attached to (or forming the body of) a message.

    `expect` is what the address it was sent to receives, and decides the reason when no report is found.
    """
    reason = reason_for(expect) if expect else DMARC_UNPARSABLE
    if len(raw) > MAX_MESSAGE:
        raise ReportError(reason, "message too large")
    # Each multipart needs a boundary parameter: counting the word bounds how many there are, and so how
    # deep the parser, which recurses into nested multiparts, can go (far below the recursion limit).
    if raw.lower().count(b"boundary") > MAX_PARTS:
        raise ReportError(reason, "too many MIME parts")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    found = _report_parts(message, reason)
    if len(found) != 1:
        raise ReportError(reason, "no report attached" if not found else "several reports attached")
    part, (encoding, kind) = found[0]
    reason = reason_for(kind or expect or "dmarc")
    body = part.get_payload(decode=True)
    if not isinstance(body, bytes) or not body:
        raise ReportError(reason, "empty report")
    if len(body) > MAX_COMPRESSED:
        raise ReportError(reason, "report too large")
    return _payload(body, encoding, kind, reason)


def _report_parts(message: Message, reason: str) -> list[tuple[Message, tuple[Encoding, Kind | None]]]:
    found = []
    for count, part in enumerate(message.walk()):
        if count >= MAX_PARTS:
            raise ReportError(reason, "too many MIME parts")
        described = _described(part)
        if described is not None and not part.is_multipart():
            found.append((part, described))
    return found


def _described(part: Message) -> tuple[Encoding, Kind | None] | None:
    """What a part's media type, or else its file name, says it holds; None for other parts."""
    media = MEDIA_TYPES.get(part.get_content_type())
    if media is not None:
        return media
    name = part.get_filename() if isinstance(part, EmailMessage) else None
    name = (name or "").lower()
    return next((described for ending, described in EXTENSIONS if name.endswith(ending)), None)


def _payload(data: bytes, encoding: Encoding, declared: Kind | None, reason: str) -> Payload:
    """Decompress as the media type said, after checking the bytes say the same.

    `declared`: the kind the media type or file name gave, which the document must be; `reason`: the
    R6.3 reason for a refusal (the kind declared, else the one the recipient address expects).
    """
    if _sniff_encoding(data) != encoding:
        raise ReportError(reason, "content does not match its media type")
    document = _decompress(data, encoding, reason)
    kind = _sniff_kind(document)
    if kind is None or (declared is not None and kind != declared):
        raise ReportError(reason, "not a report document")
    return Payload(kind, document, encoding)


def _sniff_encoding(data: bytes) -> Encoding:
    if data.startswith(GZIP_MAGIC):
        return "gzip"
    if data.startswith(ZIP_MAGICS):
        return "zip"
    return "plain"


def _sniff_kind(document: bytes) -> Kind | None:
    """XML is a DMARC report, a JSON object a TLS report; leading whitespace and a BOM are allowed."""
    start = document[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"<"):
        return "dmarc"
    if start.startswith(b"{"):
        return "tls"
    return None


def decompressed_cap(compressed_size: int) -> int:
    return min(MAX_DECOMPRESSED, max(RATIO_FLOOR, MAX_RATIO * compressed_size))


def _decompress(data: bytes, encoding: Encoding, reason: str) -> bytes:
    if encoding == "gzip":
        return gunzip(data, reason)
    if encoding == "zip":
        return unzip(data, reason)
    return data


def gunzip(data: bytes, reason: str) -> bytes:
    """One gzip member, streamed through zlib and stopped as soon as the output passes the cap."""
    cap = decompressed_cap(len(data))
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    output = _Output(cap, reason)
    try:
        for offset in range(0, len(data), CHUNK):
            pending = data[offset : offset + CHUNK]
            while pending and not inflater.eof:
                output.add(inflater.decompress(pending, CHUNK))
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error as error:
        raise ReportError(reason, "corrupt gzip data") from error
    if not inflater.eof:
        raise ReportError(reason, "truncated gzip data")
    if inflater.unused_data.strip(b"\0"):
        raise ReportError(reason, "data after the gzip stream")
    return output.value()


def unzip(data: bytes, reason: str) -> bytes:
    """The one file of a zip archive: not encrypted, stored or deflated, read in chunks up to the cap."""
    cap = decompressed_cap(len(data))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = _only_member(archive, reason)
            if member.file_size > cap:
                raise ReportError(reason, "report too large when decompressed")
            output = _Output(cap, reason)
            with archive.open(member) as stream:
                while chunk := stream.read(CHUNK):
                    output.add(chunk)
            return output.value()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as error:
        raise ReportError(reason, "corrupt zip archive") from error


def _only_member(archive: zipfile.ZipFile, reason: str) -> zipfile.ZipInfo:
    members = archive.infolist()
    if len(members) != 1:
        raise ReportError(reason, "zip archive must hold exactly one file")
    member = members[0]
    name = member.filename.replace("\\", "/")
    if member.is_dir() or name.startswith("/") or ".." in name.split("/") or ":" in name:
        raise ReportError(reason, "zip member name not allowed")
    if member.flag_bits & 0x1:
        raise ReportError(reason, "encrypted zip member")
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ReportError(reason, "zip compression method not allowed")
    return member


class _Output:
    """Decompressed chunks, refused as soon as their total passes the cap."""

    def __init__(self, cap: int, reason: str) -> None:
        self._buffer = io.BytesIO()  # getvalue() hands over its buffer: the output is not held twice
        self._size = 0
        self._cap = cap
        self._reason = reason

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._cap:
            raise ReportError(self._reason, "report too large when decompressed")
        self._buffer.write(chunk)

    def value(self) -> bytes:
        return self._buffer.getvalue()
