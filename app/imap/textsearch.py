"""SEARCH keys that read the message (RFC 9051 6.4.4): HEADER, SUBJECT, FROM, TO, CC, BCC, BODY and
TEXT, a case-insensitive substring test. Header fields are unfolded and their encoded words
(RFC 2047) decoded; BODY looks in the text parts, their transfer encoding and charset decoded.

Messages are read lazily through app/store/content.py (only for a message a text key is tested on;
only its header for the header keys), at most `cap` octets (the message size limit: no stored
message is larger), by the caller's worker thread, never on the event loop; encoded words are
decoded only in the fields a key names. A message that cannot be parsed is searched as raw text.

The decoded values of the fields a key named are kept (HeaderValues, one for the server process, by
message path: a message file never changes), so a header SEARCH reads each file once while its
entries stay, as Dovecot's cache keeps the header fields clients ask for.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
from email.header import decode_header, make_header
from email.message import Message
from functools import cached_property, lru_cache

from app.store.content import StoredContent

TEXT_KEYS = frozenset({"HEADER", "SUBJECT", "FROM", "TO", "CC", "BCC", "BODY", "TEXT"})
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+):[ \t]*(.*?)\r?$", re.MULTILINE | re.DOTALL)
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
HEADER_STEP = 16 * 1024
# Header values kept (HeaderValues): at most this many, and at most this many characters in all (a
# message's sender chooses how long its fields are); an entry longer than LARGEST_KEPT is not kept.
HEADER_VALUES_KEPT = 100_000
HEADER_CHARACTERS_KEPT = 32 * 1024 * 1024
LARGEST_KEPT = 64 * 1024


class HeaderValues:
    """Decoded, case-folded header field values by (message file, field name), at most `capacity`
    of them and `characters` characters in all, the oldest dropped first. Shared by the sessions'
    worker threads: changed under a lock."""

    def __init__(self, capacity: int, characters: int = HEADER_CHARACTERS_KEPT) -> None:
        self.capacity, self.characters = capacity, characters
        self._values: dict[tuple[str, str], tuple[str, ...]] = {}
        self._kept = 0  # characters of the entries in _values
        self._lock = threading.Lock()

    def get(self, file: str, name: str) -> tuple[str, ...] | None:
        return self._values.get((file, name))

    def put(self, file: str, name: str, values: tuple[str, ...]) -> None:
        size = _entry_size((file, name), values)
        if size > LARGEST_KEPT:
            return  # read from its file at each search instead
        with self._lock:
            self._drop((file, name))
            while self._values and (
                len(self._values) >= self.capacity or self._kept + size > self.characters
            ):
                self._drop(next(iter(self._values)))
            self._values[(file, name)] = values
            self._kept += size

    def _drop(self, key: tuple[str, str]) -> None:
        values = self._values.pop(key, None)
        if values is not None:
            self._kept -= _entry_size(key, values)

    def __len__(self) -> int:
        return len(self._values)


def _entry_size(key: tuple[str, str], values: tuple[str, ...]) -> int:
    return len(key[0]) + len(key[1]) + sum(len(value) for value in values)


HEADER_VALUES = HeaderValues(HEADER_VALUES_KEPT)


class MessageText:
    """One message's searchable text, read on first use: the header alone for the header keys, the
    whole message for BODY and TEXT."""

    def __init__(
        self, content: StoredContent, path: str, cap: int, kept: HeaderValues = HEADER_VALUES
    ) -> None:
        self.content, self.path, self.cap, self.kept = content, path, cap, kept
        # The key in `kept`: a process may serve several data dirs (or databases).
        self.file = f"{content.name}/{path}"

    @cached_property
    def raw(self) -> bytes:
        return self.content.read(self.path, self.cap)

    @cached_property
    def header(self) -> bytes:
        """The header block, read in steps until its end (most messages: one read of HEADER_STEP)."""
        if "raw" in self.__dict__:
            return _split(self.raw)[0]
        data = b""
        while len(data) < self.cap:
            step = self.content.read(self.path, min(HEADER_STEP, self.cap - len(data)), start=len(data))
            data += step
            found = _END_OF_HEADER.search(data)
            if found is not None:
                return data[: found.start()]
            if not step:
                break
        return data

    @cached_property
    def fields(self) -> list[tuple[str, bytes]]:
        """(NAME in upper case, raw value) of each header field, unfolded, in order."""
        unfolded = _FOLD.sub(b"", self.header)
        return [(name.decode("ascii").upper(), value) for name, value in _FIELD.findall(unfolded)]

    def values(self, name: str) -> tuple[str, ...]:
        """The decoded, case-folded values of the fields called `name`, kept in `kept` (a key names
        few fields, the same in every message)."""
        found = self.kept.get(self.file, name)
        if found is None:
            found = self._values(name)
            self.kept.put(self.file, name, found)
        return found

    def _values(self, name: str) -> tuple[str, ...]:
        """The values of the fields called `name`, found by a pattern for that name alone: splitting
        every field out costs more than the search."""
        # A name no field can have (as _FIELD reads them, upper-cased) names none.
        named = _FIELD_NAME.fullmatch(name) is not None and name == name.upper()
        raw = _field_pattern(name).findall(_FOLD.sub(b"", self.header)) if named else []
        return tuple(_decoded(value).casefold() for value in raw)

    @cached_property
    def body(self) -> str:
        """The text parts, decoded and case-folded; the raw body if the message cannot be parsed."""
        try:
            parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
            texts = [_part_text(part) for part in parsed.walk() if part.get_content_maintype() == "text"]
        except Exception:  # a hostile message breaks the parser in many ways: search it raw
            texts = [_split(self.raw)[1].decode("utf-8", "replace")]
        return "\n".join(texts).casefold()

    def header_has(self, name: str, value: str) -> bool:
        """Whether a field `name` contains `value` (an empty value: whether the field is there)."""
        return any(value in text for text in self.values(name))

    def header_text(self) -> str:
        """Every field, decoded (not kept: TEXT names every field of every message)."""
        names = dict.fromkeys(field for field, _ in self.fields)
        return "\n".join(f"{name.casefold()}: {text}" for name in names for text in self._values(name))


@lru_cache(maxsize=64)
def _field_pattern(name: str) -> re.Pattern[bytes]:
    """The values of the fields called `name` (any case), as _FIELD finds them."""
    return re.compile(
        rb"^(?i:" + re.escape(name.encode("ascii")) + rb"):[ \t]*(.*?)\r?$", re.MULTILINE | re.DOTALL
    )


def _split(raw: bytes) -> tuple[bytes, bytes]:
    found = _END_OF_HEADER.search(raw)
    return (raw, b"") if found is None else (raw[: found.start()], raw[found.end() :])


def _decoded(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    if "=?" not in text:  # no encoded word: most fields, and the decoder is slow
        return text
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
