"""SEARCH keys that read the message (RFC 9051 6.4.4): HEADER, SUBJECT, FROM, TO, CC, BCC, BODY and
TEXT, a case-insensitive substring test. Header fields are unfolded and their encoded words
(RFC 2047) decoded; BODY looks in the text parts, their transfer encoding and charset decoded.

Files are read lazily (only for a message a text key is tested on), at most `cap` octets (the
message size limit: no stored message is larger), by the caller's worker thread, never on the event
loop. A message that cannot be parsed is searched as raw text.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.header import decode_header, make_header
from email.message import Message
from functools import cached_property
from pathlib import Path

TEXT_KEYS = frozenset({"HEADER", "SUBJECT", "FROM", "TO", "CC", "BCC", "BODY", "TEXT"})
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+):[ \t]*(.*?)\r?$", re.MULTILINE | re.DOTALL)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


class MessageText:
    """One message's searchable text, read on first use."""

    def __init__(self, data_dir: Path, path: str, cap: int) -> None:
        self.data_dir, self.path, self.cap = data_dir, path, cap

    @cached_property
    def raw(self) -> bytes:
        with (self.data_dir / self.path).open("rb") as file:
            return file.read(self.cap)

    @cached_property
    def _split(self) -> tuple[bytes, bytes]:
        found = _END_OF_HEADER.search(self.raw)
        return (self.raw, b"") if found is None else (self.raw[: found.start()], self.raw[found.end() :])

    @cached_property
    def fields(self) -> list[tuple[str, str]]:
        """(NAME in upper case, decoded value case-folded) of each header field, in order."""
        unfolded = _FOLD.sub(b"", self._split[0])
        return [
            (name.decode("ascii").upper(), _decoded(value).casefold())
            for name, value in (line.groups() for line in _FIELD.finditer(unfolded))
        ]

    @cached_property
    def body(self) -> str:
        """The text parts, decoded and case-folded; the raw body if the message cannot be parsed."""
        try:
            parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
            texts = [_part_text(part) for part in parsed.walk() if part.get_content_maintype() == "text"]
        except Exception:  # a hostile message breaks the parser in many ways: search it raw
            texts = [self._split[1].decode("utf-8", "replace")]
        return "\n".join(texts).casefold()

    def header_has(self, name: str, value: str) -> bool:
        """Whether a field `name` contains `value` (an empty value: whether the field is there)."""
        return any(field == name and value in text for field, text in self.fields)

    def header_text(self) -> str:
        return "\n".join(f"{name.casefold()}: {text}" for name, text in self.fields)


def _decoded(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):  # a malformed or unknown encoded word: as sent
        return text


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def text_matches(text: MessageText, name: str, value: object) -> bool:
    """Whether the message matches a text key; `value` is the case-folded string, or (field name,
    string) for HEADER."""
    if name == "HEADER":
        field, wanted = value if isinstance(value, tuple) else ("", "")
        return text.header_has(str(field), str(wanted))
    if name in ("SUBJECT", "FROM", "TO", "CC", "BCC"):
        return text.header_has(name, str(value))
    if name == "BODY":
        return str(value) in text.body
    return str(value) in text.header_text() or str(value) in text.body  # TEXT
