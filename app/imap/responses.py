"""Writing IMAP response data: strings (quoted, or a literal when quoting cannot carry them), flags,
dates, and the untagged FETCH line of one message."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

# A quoted string holds 7-bit text without CR, LF and NUL; " and \ are escaped.
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# The flags a message row carries, by column, in the order they are shown.
FLAG_COLUMNS = {
    "\\Seen": "seen",
    "\\Answered": "answered",
    "\\Flagged": "flagged",
    "\\Deleted": "deleted",
    "\\Draft": "draft",
    "$Junk": "junk",
    "$NotJunk": "notjunk",
}
# What a client names in STORE (upper case, as parsed) -> the set_flags keyword.
STORE_KEYWORDS = {flag.upper(): column for flag, column in FLAG_COLUMNS.items()}
ALL_FLAGS = "(" + " ".join(FLAG_COLUMNS) + ")"


def string(value: bytes | str) -> bytes:
    """A quoted string, or a literal for text a quoted string cannot hold (8-bit, CR, LF)."""
    # A str parsed from octets keeps the ones that are not UTF-8 as surrogates: they go out as they came.
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if _QUOTABLE.fullmatch(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(raw)


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def flags_of(row: dict[str, Any]) -> bytes:
    """The row's flags as a parenthesized list."""
    return flag_list(tuple(row[column] for column in FLAG_COLUMNS.values()))


def flag_list(values: tuple[bool, ...]) -> bytes:
    """The flags as a parenthesized list, from their columns' values in FLAG_COLUMNS order."""
    return ("(" + " ".join(flag for flag, on in zip(FLAG_COLUMNS, values, strict=True) if on) + ")").encode()


def internal_date(when: datetime) -> bytes:
    """RFC 9051 date-time: "02-Dec-2026 14:01:02 +0000" (month names fixed, not the locale's)."""
    when = when.astimezone(UTC)
    return f'"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year} {when:%H:%M:%S} +0000"'.encode()


def fetch_line(number: int, items: list[bytes]) -> bytes:
    return b"* %d FETCH (" % number + b" ".join(items) + b")\r\n"


def uid_set(numbers: list[int]) -> str:
    """A sequence set naming `numbers` in their order, consecutive runs as ranges ("4:6,9")."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in runs)
