"""IMAP command syntax (RFC 9051 section 9): a tokenizer over one whole command, literals included,
and the parsed forms of the commands the server knows.

The session (app/imap/reader.py) hands over the command as received: its lines joined by CRLF, each
literal's octets right after the CRLF that ends its `{n}` or `{n+}` announcement, without the final
CRLF. Everything here is attacker text: any deviation from the grammar raises ParseError, whose
text (ours, never the client's) the session sends in a tagged BAD. Nothing is unbounded: strings
are at most as long as the command, lists nest at most MAX_DEPTH deep, numbers fit in 32 bits.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

_T = TypeVar("_T")
MAX_DEPTH = 8
MAX_NUMBER = 2**32 - 1
# ATOM-CHAR: any 7-bit CHAR but atom-specials ( ) { SP CTL % * " \ and resp-specials ].
_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
# ASTRING-CHAR adds "]"; a LIST pattern adds the wildcards % and *.
_ASTRING = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")
_PATTERN = re.compile(rb"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c-\x7e]+")
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")  # ASTRING-CHAR but "+"
_NUMBER = re.compile(rb"[0-9]+")
_LITERAL = re.compile(rb"\{([0-9]{1,10})(\+?)\}\r\n")
_DATE_TIME = re.compile(
    rb'"[ 0-3][0-9]-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-[0-9]{4} '
    rb'[0-2][0-9]:[0-5][0-9]:[0-6][0-9] [+-][0-9]{4}"'
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_QUOTED_CHAR = re.compile(rb'[^"\\\r\n\x00]|\\["\\]')


class ParseError(Exception):
    """The command does not follow the grammar; the text says where, in our words."""


@dataclass(frozen=True)
class SequenceSet:
    """Ranges of message numbers or UIDs; None stands for `*`, the largest in use."""

    ranges: tuple[tuple[int | None, int | None], ...]
    saved: bool = False  # `$`: the result the last SEARCH RETURN (SAVE) kept (RFC 5182)

    def largest_named(self) -> int:
        """The largest number the set names explicitly (0 if only `*`): a message sequence number
        beyond the mailbox's count is an error, a UID beyond its UIDs is not."""
        return max((n for pair in self.ranges for n in pair if n is not None), default=0)

    def pick(self, available: Sequence[int]) -> list[int]:
        """The members of `available` (ascending, e.g. UIDs) inside the set, ascending: a UID range
        names the UIDs that exist in it, not every number (RFC 9051 6.4.9). The ranges are merged
        and looked up by bisection: a set of thousands of ranges costs little on a large mailbox."""
        largest = available[-1] if available else 0
        bounds = sorted(
            sorted((largest if first is None else first, largest if last is None else last))
            for first, last in self.ranges
        )
        picked: list[int] = []
        done = 0  # positions in `available` below this are taken or skipped already
        for low, high in bounds:
            start = max(bisect_left(available, low), done)
            end = bisect_right(available, high)
            picked += available[start:end]
            done = max(done, end)
        return picked


@dataclass(frozen=True)
class Section:
    """What a BODY[...] names: a part path (empty: the whole message) and a text kind: "" (all of
    it), HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME; `fields` for the two field lists."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        """The section as it is named in a response."""
        path = ".".join(map(str, self.part))
        text = self.text
        if self.fields:
            text += " (" + " ".join(self.fields) + ")"
        return ".".join(filter(None, (path, text)))


@dataclass(frozen=True)
class FetchItem:
    """One FETCH data item: FLAGS, UID, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODYSTRUCTURE, BODY
    (the structure without extensions), RFC822, RFC822.HEADER, RFC822.TEXT, or BODY[section]
    (`section` set; `peek` for BODY.PEEK) with `partial` (start, length)."""

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> str:
        """How the item is named in the FETCH response (BODY.PEEK answers as BODY; a partial by its
        start only, RFC 9051 7.5.2)."""
        if self.section is None:
            return self.name
        start = "" if self.partial is None else f"<{self.partial[0]}>"
        return f"{self.name}[{self.section.spec()}]{start}"


MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
SIMPLE_ITEMS = frozenset(
    {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822"}
    | {"RFC822.HEADER", "RFC822.TEXT", "MODSEQ"}
)


@dataclass(frozen=True)
class Command:
    """A parsed command: its tag, its name (upper case; "UID FETCH" for the UID forms) and its
    arguments, by name."""

    tag: str
    name: str
    args: dict[str, object] = field(default_factory=dict)


class Tokens:
    """A cursor over one command's octets."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> bytes:
        return self.data[self.pos : self.pos + 1]

    def expect(self, octets: bytes, what: str) -> None:
        if not self.data.startswith(octets, self.pos):
            raise ParseError(f"expected {what}{self._why()}")
        self.pos += len(octets)

    def space(self) -> None:
        self.expect(b" ", "a space")

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("unexpected text after the command's arguments")

    def match(self, pattern: re.Pattern[bytes], what: str) -> str:
        found = pattern.match(self.data, self.pos)
        if found is None:
            raise ParseError(f"expected {what}{self._why()}")
        self.pos = found.end()
        return found.group().decode("ascii")

    def _why(self) -> str:
        """What is wrong with the octet at the cursor, when it is one no token may hold."""
        octet = self.peek()
        if octet == b"\x00":
            return " (NUL is not allowed)"
        if octet and octet[0] >= 0x80:
            return " (8-bit octets are allowed only in quoted strings and literals)"
        return ""

    def atom(self, what: str = "an atom") -> str:
        return self.match(_ATOM, what)

    def number(self, what: str = "a number") -> int:
        value = int(self.match(_NUMBER, what))
        if value > MAX_NUMBER:
            raise ParseError(f"{what} is larger than {MAX_NUMBER}")
        return value

    def modseq(self, what: str = "a modification sequence") -> int:
        """A mod-sequence-value of RFC 7162 (0 up to 2**63 - 1)."""
        value = int(self.match(_NUMBER, what))
        if value >= 2**63:
            raise ParseError(f"{what} is larger than {2**63 - 1}")
        return value

    def modifier(self, name: str) -> int | None:
        """An optional ` (NAME n)` of RFC 7162 (SELECT's CONDSTORE has none: its n is 0)."""
        if not self.data.startswith(b" (", self.pos):
            return None
        self.pos += 2
        self.expect(name.encode(), name)
        value = 0
        if name != "CONDSTORE":
            self.space()
            value = self.modseq()
        self.expect(b")", f"')' after {name}")
        return value

    def nz_number(self, what: str = "a number") -> int:
        value = self.number(what)
        if value == 0:
            raise ParseError(f"{what} must not be 0")
        return value

    def astring(self, what: str = "a string") -> bytes:
        """An atom-like string, a quoted string or a literal, as octets."""
        octet = self.peek()
        if octet in (b'"', b"{"):
            return self.string(what)
        return self.match(_ASTRING, what).encode("ascii")

    def string(self, what: str = "a string") -> bytes:
        octet = self.peek()
        if octet == b'"':
            return self.quoted(what)
        if octet == b"{":
            return self.literal(what)
        raise ParseError(f"expected {what} (quoted or literal){self._why()}")

    def quoted(self, what: str) -> bytes:
        self.pos += 1
        out = bytearray()
        while True:
            found = _QUOTED_CHAR.match(self.data, self.pos)
            if found is None:
                break
            out += found.group()[-1:]
            self.pos = found.end()
        if self.peek() != b'"':
            raise ParseError(f"unterminated quoted string in {what}" + self._quoted_why())
        self.pos += 1
        return bytes(out)

    def _quoted_why(self) -> str:
        octet = self.peek()
        if octet == b"\\":
            return r" (only \" and \\ may be escaped)"
        if octet == b"\x00":
            return " (NUL is not allowed)"
        if octet in (b"\r", b"\n"):
            return " (a line break cannot be quoted; send a literal)"
        return ""

    def literal(self, what: str) -> bytes:
        content = self._literal_octets(what)
        if b"\x00" in content:
            raise ParseError(f"NUL is not allowed in {what}")
        return content

    def literal8(self, what: str) -> bytes:
        """A literal8 `~{n}` (RFC 3516): any octet, NUL too."""
        self.expect(b"~", "a literal8 (~{n})")
        return self._literal_octets(what)

    def _literal_octets(self, what: str) -> bytes:
        found = _LITERAL.match(self.data, self.pos)
        if found is None:
            raise ParseError(f"malformed literal in {what}")
        start = found.end()
        end = start + int(found.group(1))
        if end > len(self.data):
            raise ParseError(f"literal in {what} is shorter than announced")
        self.pos = end
        return self.data[start:end]

    def mailbox(self) -> str:
        """A mailbox name: INBOX in any case is INBOX; others are UTF-8 (RFC 9051 5.1)."""
        return _mailbox_name(self.astring("a mailbox name"))

    def pattern(self) -> str:
        """A LIST pattern: a string, or atom characters with the wildcards % and *."""
        if self.peek() in (b'"', b"{"):
            raw = self.string("a mailbox pattern")
        else:
            raw = self.match(_PATTERN, "a mailbox pattern").encode("ascii")
        return _utf8(raw, "a mailbox pattern")

    def value(self, depth: int = 0) -> object:
        """Any argument value: NIL (None), a number, an atom, a string or a parenthesized list of
        values nested at most MAX_DEPTH deep."""
        if self.peek() == b"(":
            return self.parenthesized(lambda: self.value(depth + 1), depth)
        if self.peek() in (b'"', b"{"):
            return self.string("a value")
        atom = self.atom("a value")
        return None if atom.upper() == "NIL" else atom

    def parenthesized(self, item: Callable[[], _T], depth: int = 0) -> list[_T]:
        """A list `( item *(SP item) )`, possibly empty; `item` reads one element."""
        if depth >= MAX_DEPTH:
            raise ParseError(f"lists nest more than {MAX_DEPTH} deep")
        self.expect(b"(", "a list")
        values: list[_T] = []
        while self.peek() != b")":
            if self.at_end():
                raise ParseError("unterminated list")
            if values:
                self.space()
            values.append(item())
        self.pos += 1
        return values

    def sequence_set(self) -> SequenceSet:
        if self.peek() == b"$":
            self.pos += 1
            return SequenceSet((), saved=True)
        ranges = [self._sequence_range()]
        while self.peek() == b",":
            self.pos += 1
            ranges.append(self._sequence_range())
        return SequenceSet(tuple(ranges))

    def _sequence_range(self) -> tuple[int | None, int | None]:
        first = self._sequence_number()
        if self.peek() != b":":
            return first, first
        self.pos += 1
        return first, self._sequence_number()

    def _sequence_number(self) -> int | None:
        if self.peek() == b"*":
            self.pos += 1
            return None
        return self.nz_number("a sequence set (numbers, ranges a:b, * and commas)")


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{what} is not UTF-8") from None


def _mailbox_name(raw: bytes) -> str:
    name = _utf8(raw, "the mailbox name")
    if not name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ParseError("a mailbox name must not be empty or hold control characters")
    return "INBOX" if name.upper() == "INBOX" else name


# Commands and their arguments.


def parse_command(data: bytes) -> Command:
    """The command in `data` (see the module doc); ParseError if it is malformed or unknown. The
    tag is parsed first, so that the session can name it in the BAD (tag_of)."""
    tokens = Tokens(data)
    tag = tokens.match(_TAG, "a tag")
    tokens.space()
    name = tokens.atom("a command name").upper()
    if name == "UID":
        tokens.space()
        name = "UID " + tokens.atom("the command after UID").upper()
    parse = _PARSERS.get(name)
    if parse is None:
        raise ParseError(f"unknown command {name[:20]!r}" if name.isascii() else "unknown command")
    args = parse(tokens)
    tokens.end()
    return Command(tag, name, args)


def tag_of(data: bytes) -> str | None:
    """The command's tag, if it starts with a valid one: a BAD names it; without one it is untagged."""
    found = _TAG.match(data)
    return None if found is None or data[found.end() : found.end() + 1] != b" " else found.group().decode()


def _no_args(tokens: Tokens) -> dict[str, object]:
    return {}


def _login(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    user = tokens.astring("the user name")
    tokens.space()
    return {"user": user, "password": tokens.astring("the password")}


def _authenticate(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    mechanism = tokens.atom("a SASL mechanism").upper()
    initial = None
    if not tokens.at_end():
        tokens.space()
        initial = tokens.match(re.compile(rb"[A-Za-z0-9+/]*={0,2}"), "a base64 initial response")
    return {"mechanism": mechanism, "initial": initial}


def _mailbox_arg(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    return {"mailbox": tokens.mailbox()}


def _select(tokens: Tokens) -> dict[str, object]:
    """SELECT or EXAMINE: the mailbox, and the CONDSTORE parameter (RFC 7162 3.1.8)."""
    args = _mailbox_arg(tokens)
    return {**args, "condstore": tokens.modifier("CONDSTORE") is not None}


LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT", "HIGHESTMODSEQ")


def _list(tokens: Tokens) -> dict[str, object]:
    """LIST [(select options)] reference (pattern | (patterns)) [RETURN (options)] (RFC 9051 6.3.9,
    RFC 5258, RFC 5819's STATUS return option); LSUB takes the plain form only."""
    tokens.space()
    select: list[str] = []
    if tokens.peek() == b"(":
        select = tokens.parenthesized(lambda: tokens.atom("a LIST selection option").upper())
        if not set(select) <= LIST_SELECT:
            raise ParseError("LIST selection options are SUBSCRIBED, REMOTE, RECURSIVEMATCH and SPECIAL-USE")
        if "RECURSIVEMATCH" in select and set(select) <= {"RECURSIVEMATCH", "REMOTE"}:
            raise ParseError("RECURSIVEMATCH needs another selection option")
        tokens.space()
    reference = _utf8(tokens.astring("a reference name"), "the reference name")
    tokens.space()
    if tokens.peek() == b"(":
        patterns = tokens.parenthesized(tokens.pattern)
        if not patterns:
            raise ParseError("a pattern list names at least one pattern")
    else:
        patterns = [tokens.pattern()]
    returned: dict[str, list[str]] = {}
    if not tokens.at_end():
        tokens.space()
        if tokens.data[tokens.pos : tokens.pos + 7].upper() != b"RETURN ":
            raise ParseError("expected RETURN (options) after the pattern")
        tokens.pos += 7
        for option in tokens.parenthesized(lambda: _list_return(tokens)):
            returned.update(option)
    return {"select": select, "reference": reference, "patterns": patterns, "return": returned}


def _list_return(tokens: Tokens) -> dict[str, list[str]]:
    option = tokens.atom("a LIST return option").upper()
    if option not in LIST_RETURN:
        raise ParseError("LIST return options are SUBSCRIBED, CHILDREN, SPECIAL-USE and STATUS")
    if option != "STATUS":
        return {option: []}
    tokens.space()
    return {option: _status_items(tokens)}


def _lsub(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    reference = _utf8(tokens.astring("a reference name"), "the reference name")
    tokens.space()
    return {"select": ["SUBSCRIBED"], "reference": reference, "patterns": [tokens.pattern()], "return": {}}


def _rename(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    mailbox = tokens.mailbox()
    tokens.space()
    return {"mailbox": mailbox, "new": tokens.mailbox()}


def _enable(tokens: Tokens) -> dict[str, object]:
    capabilities = []
    while not tokens.at_end():
        tokens.space()
        capabilities.append(tokens.atom("a capability").upper())
    if not capabilities:
        raise ParseError("ENABLE names at least one capability")
    return {"capabilities": capabilities}


def _status(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    mailbox = tokens.mailbox()
    tokens.space()
    return {"mailbox": mailbox, "items": _status_items(tokens)}


def _status_items(tokens: Tokens) -> list[str]:
    items = tokens.parenthesized(lambda: tokens.atom("a status item").upper())
    if not items or not set(items) <= set(STATUS_ITEMS):
        raise ParseError("STATUS items are " + ", ".join(STATUS_ITEMS))
    return items


def _id(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    return {"parameters": tokens.value()}


def _fetch(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    sequence = tokens.sequence_set()
    tokens.space()
    if tokens.peek() == b"(":
        items = [i for group in tokens.parenthesized(lambda: _fetch_item(tokens)) for i in group]
        if not items:
            raise ParseError("FETCH needs at least one data item")
    else:
        items = _fetch_item(tokens, macros=True)
    return {"sequence": sequence, "items": items, "changedsince": tokens.modifier("CHANGEDSINCE")}


def _fetch_item(tokens: Tokens, *, macros: bool = False) -> list[FetchItem]:
    """One fetch attribute (a macro only outside a list), as the items it stands for."""
    start = tokens.pos
    word = tokens.match(re.compile(rb"[A-Za-z0-9.]+"), "a FETCH data item").upper()
    if word in MACROS:
        if not macros:
            raise ParseError(f"{word} cannot be used inside a list")
        return [FetchItem(name) for name in MACROS[word]]
    if word in ("BODY", "BODY.PEEK") and tokens.peek() == b"[":
        section = _section(tokens)
        return [FetchItem("BODY", section, word == "BODY.PEEK", _partial(tokens))]
    if word in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        return [_binary_item(tokens, word)]
    if word not in SIMPLE_ITEMS:
        tokens.pos = start
        raise ParseError(f"unknown FETCH data item {word[:30]!r}")
    return [FetchItem(word)]


def _binary_item(tokens: Tokens, word: str) -> FetchItem:
    """BINARY[part]<partial>, BINARY.PEEK[part]<partial> or BINARY.SIZE[part] (RFC 3516): a part
    number only; BINARY.SIZE sets no flag, like a peek."""
    tokens.expect(b"[", "[ after " + word)
    part: list[int] = []
    while tokens.peek() != b"]":
        if part:
            tokens.expect(b".", ". between part numbers")
        part.append(tokens.nz_number("a part number"))
    tokens.pos += 1
    name = "BINARY.SIZE" if word == "BINARY.SIZE" else "BINARY"
    window = None if word == "BINARY.SIZE" else _partial(tokens)
    return FetchItem(name, Section(tuple(part)), word != "BINARY", window)


def _section(tokens: Tokens) -> Section:
    tokens.expect(b"[", "[")
    part: list[int] = []
    while tokens.peek().isdigit():
        part.append(tokens.nz_number("a part number"))
        if tokens.peek() != b".":
            break
        tokens.pos += 1
        if not tokens.peek().isalnum():
            raise ParseError("a part number's dot must be followed by a part or a section text")
    text = "" if tokens.peek() == b"]" else tokens.match(re.compile(rb"[A-Za-z.]+"), "a section").upper()
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        tokens.space()
        fields = tuple(f.upper() for f in tokens.parenthesized(lambda: _field_name(tokens)))
        if not fields:
            raise ParseError("a header field list must name a field")
    elif text not in ("", "HEADER", "TEXT", "MIME"):
        raise ParseError(f"unknown section {text[:30]!r}")
    if text == "MIME" and not part:
        raise ParseError("MIME names the header of a part: give a part number")
    tokens.expect(b"]", "] to end the section")
    return Section(tuple(part), text, fields)


def _field_name(tokens: Tokens) -> str:
    name = tokens.astring("a header field name")
    if not re.fullmatch(rb"[\x21-\x39\x3b-\x7e]+", name):
        raise ParseError("a header field name is printable ASCII without a colon")
    return name.decode("ascii")


def _partial(tokens: Tokens) -> tuple[int, int] | None:
    if tokens.peek() != b"<":
        return None
    tokens.pos += 1
    start = tokens.number("the start of a partial")
    tokens.expect(b".", ". in a partial <start.length>")
    length = tokens.nz_number("the length of a partial")
    tokens.expect(b">", "> to end a partial")
    return start, length


def _append(tokens: Tokens) -> dict[str, object]:
    """APPEND mailbox [(flags)] ["date-time"] literal. The date is checked but not kept: a message
    is stored with the time it came in."""
    tokens.space()
    mailbox = tokens.mailbox()
    tokens.space()
    flags: list[str] = []
    if tokens.peek() == b"(":
        flags = tokens.parenthesized(lambda: _flag(tokens))
        tokens.space()
    if tokens.peek() == b'"':
        tokens.match(_DATE_TIME, 'a date-time "dd-Mon-yyyy hh:mm:ss +zzzz"')
        tokens.space()
    if tokens.data[tokens.pos : tokens.pos + 6].upper() == b"UTF8 (":  # RFC 6855
        tokens.pos += 6
        message = tokens.literal8("the message")
        tokens.expect(b")", ") after the UTF8 message")
    elif tokens.peek() == b"~":
        message = tokens.literal8("the message")
    elif tokens.peek() == b"{":
        message = tokens.literal("the message")
    else:
        raise ParseError("APPEND needs the message as a literal")
    return {"mailbox": mailbox, "flags": flags, "message": message}


# SEARCH keys (RFC 9051 6.4.4) served so far: flag keys, dates of arrival, sizes, the keys that read
# the message (app/imap/textsearch.py), sequence and UID sets, NOT, OR and parenthesized groups. A key
# is a tuple: (name, argument...).
SearchKey = tuple[object, ...]
_FLAG_KEYS = frozenset(
    {"ALL", "SEEN", "UNSEEN", "FLAGGED", "UNFLAGGED", "DELETED", "UNDELETED", "ANSWERED"}
    | {"UNANSWERED", "DRAFT", "UNDRAFT", "NEW", "OLD", "RECENT"}
)
_MONTH_NUMBERS = {m: n for n, m in enumerate(_MONTHS, 1)}


ESEARCH_RETURN = frozenset({"MIN", "MAX", "COUNT", "ALL", "SAVE"})


def _search(tokens: Tokens) -> dict[str, object]:
    """SEARCH [RETURN (options)] [CHARSET name] keys; RETURN asks for an ESEARCH answer (RFC 4731):
    its options MIN, MAX, COUNT, ALL (none: ALL) and SAVE (RFC 5182). `return` is None without
    RETURN."""
    tokens.space()
    returned = None
    if tokens.data[tokens.pos : tokens.pos + 7].upper() == b"RETURN ":
        tokens.pos += 7
        returned = tokens.parenthesized(lambda: tokens.atom("a SEARCH return option").upper()) or ["ALL"]
        if not set(returned) <= ESEARCH_RETURN:
            raise ParseError("SEARCH return options are MIN, MAX, COUNT, ALL and SAVE")
        tokens.space()
    if tokens.data[tokens.pos : tokens.pos + 8].upper() == b"CHARSET ":
        tokens.pos += 8
        charset = tokens.astring("a charset").upper()
        if charset not in (b"UTF-8", b"US-ASCII"):
            raise ParseError("[BADCHARSET (UTF-8 US-ASCII)] charset not supported")
        tokens.space()
    keys = [_search_key(tokens, 0)]
    while not tokens.at_end():
        tokens.space()
        keys.append(_search_key(tokens, 0))
    return {"keys": keys, "return": returned}


def _search_key(tokens: Tokens, depth: int) -> SearchKey:
    if depth >= MAX_DEPTH:
        raise ParseError(f"search keys nest more than {MAX_DEPTH} deep")
    if tokens.peek() == b"(":
        return ("AND", *tokens.parenthesized(lambda: _search_key(tokens, depth + 1)))
    if tokens.peek().isdigit() or tokens.peek() in (b"*", b"$"):
        return ("SEQUENCE", tokens.sequence_set())
    name = tokens.atom("a search key").upper()
    if name in _FLAG_KEYS:
        return (name,)
    tokens.space()
    if name in ("NOT",):
        return (name, _search_key(tokens, depth + 1))
    if name == "OR":
        first = _search_key(tokens, depth + 1)
        tokens.space()
        return (name, first, _search_key(tokens, depth + 1))
    if name == "UID":
        return (name, tokens.sequence_set())
    if name in ("KEYWORD", "UNKEYWORD"):
        return (name, _flag(tokens))
    if name in ("LARGER", "SMALLER"):
        return (name, tokens.number("a size"))
    if name in ("BEFORE", "ON", "SINCE"):
        return (name, _date(tokens))
    if name in ("SUBJECT", "FROM", "TO", "CC", "BCC", "BODY", "TEXT"):
        return (name, _search_string(tokens))
    if name == "HEADER":
        field = _field_name(tokens).upper()
        tokens.space()
        return (name, (field, _search_string(tokens)))
    if name == "MODSEQ":  # RFC 7162 3.1.5: an entry name and type may come first (one value is kept)
        if tokens.peek() == b'"':
            tokens.quoted("a metadata entry name")
            tokens.space()
            tokens.match(re.compile(rb"(?i)(priv|shared|all) "), "priv, shared or all")
        return (name, tokens.modseq())
    raise ParseError(f"search key {name[:20]!r} is not supported")


def _search_string(tokens: Tokens) -> str:
    return _utf8(tokens.astring("a search string"), "the search string").casefold()


def _date(tokens: Tokens) -> date:
    quoted = tokens.peek() == b'"'
    tokens.pos += quoted
    day = tokens.number("a date (d-Mon-yyyy)")
    tokens.expect(b"-", "a date (d-Mon-yyyy)")
    month = _MONTH_NUMBERS.get(tokens.match(re.compile(rb"[A-Za-z]{3}"), "a month").title())
    tokens.expect(b"-", "a date (d-Mon-yyyy)")
    year = tokens.number("a year")
    if quoted:
        tokens.expect(b'"', '" to end the date')
    try:
        return date(year, month or 0, day)
    except ValueError:
        raise ParseError("no such date") from None


def _sequence_arg(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    return {"sequence": tokens.sequence_set()}


def _copy(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    sequence = tokens.sequence_set()
    tokens.space()
    return {"sequence": sequence, "mailbox": tokens.mailbox()}


STORE_FLAGS = {"\\SEEN", "\\FLAGGED", "\\DELETED", "\\ANSWERED", "\\DRAFT", "$JUNK", "$NOTJUNK"}


def _store(tokens: Tokens) -> dict[str, object]:
    tokens.space()
    sequence = tokens.sequence_set()
    unchanged = tokens.modifier("UNCHANGEDSINCE")
    tokens.space()
    item = tokens.match(
        re.compile(rb"[+-]?FLAGS(\.SILENT)?", re.IGNORECASE), "+FLAGS, -FLAGS or FLAGS"
    ).upper()
    tokens.space()
    if tokens.peek() == b"(":
        flags = tokens.parenthesized(lambda: _flag(tokens))
    else:
        flags = [_flag(tokens)]
        while tokens.peek() == b" ":
            tokens.pos += 1
            flags.append(_flag(tokens))
    mode = {"+": "add", "-": "remove"}.get(item[0], "replace")
    silent = item.endswith(".SILENT")
    return {"sequence": sequence, "mode": mode, "silent": silent, "flags": flags, "unchangedsince": unchanged}


def _flag(tokens: Tokens) -> str:
    """A flag: \\Name for system flags, else a keyword atom; upper-cased for comparison."""
    prefix = "\\" if tokens.peek() == b"\\" else ""
    tokens.pos += len(prefix)
    return prefix + tokens.atom("a flag").upper()


_PARSERS = {
    "CAPABILITY": _no_args,
    "NOOP": _no_args,
    "CHECK": _no_args,
    "LOGOUT": _no_args,
    "STARTTLS": _no_args,
    "UNSELECT": _no_args,
    "CLOSE": _no_args,
    "EXPUNGE": _no_args,
    "UID EXPUNGE": _sequence_arg,
    "IDLE": _no_args,
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "SELECT": _select,
    "EXAMINE": _select,
    "LIST": _list,
    "LSUB": _lsub,
    "CREATE": _mailbox_arg,
    "DELETE": _mailbox_arg,
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox_arg,
    "UNSUBSCRIBE": _mailbox_arg,
    "NAMESPACE": _no_args,
    "ENABLE": _enable,
    "STATUS": _status,
    "ID": _id,
    "FETCH": _fetch,
    "UID FETCH": _fetch,
    "STORE": _store,
    "UID STORE": _store,
    "APPEND": _append,
    "SEARCH": _search,
    "UID SEARCH": _search,
    "COPY": _copy,
    "UID COPY": _copy,
    "MOVE": _copy,
    "UID MOVE": _copy,
}
