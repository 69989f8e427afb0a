"""SEARCH (RFC 9051 6.4.4) over the rows of a mailbox: the keys app/imap/parser.py reads, tested
against each message's stored columns (flags, arrival, size), the file only for the keys that read
the message (app/imap/textsearch.py); and the ESEARCH answer (RFC 4731)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.imap import responses
from app.imap.parser import SearchKey
from app.imap.textsearch import TEXT_KEYS, MessageText, text_matches
from app.store.mailboxes import MessageRow


def prepared(key: SearchKey, uids: list[int], saved: list[int]) -> SearchKey:
    """The key with its sequence and UID sets turned into the sets of numbers they name (picked
    once, however many messages are tested); `$` names the `saved` UIDs (RFC 5182)."""
    name = key[0]
    if name in ("SEQUENCE", "UID") and key[1].saved:  # type: ignore[attr-defined]
        return ("UIDS", frozenset(saved))
    if name == "SEQUENCE":
        return ("NUMBERS", frozenset(key[1].pick(list(range(1, len(uids) + 1)))))  # type: ignore[attr-defined]
    if name == "UID":
        return ("UIDS", frozenset(key[1].pick(uids)))  # type: ignore[attr-defined]
    if name in ("AND", "OR", "NOT"):
        return (name, *(prepared(k, uids, saved) for k in key[1:]))  # type: ignore[arg-type]
    return key


_FLAG_TESTS: dict[str, Callable[[MessageRow], bool]] = {
    "ALL": lambda row: True,
    "OLD": lambda row: True,
    "NEW": lambda row: False,  # NEW is RECENT and UNSEEN: no message is recent here
    "RECENT": lambda row: False,
    "SEEN": lambda row: bool(row["seen"]),
    "UNSEEN": lambda row: not row["seen"],
    "FLAGGED": lambda row: bool(row["flagged"]),
    "UNFLAGGED": lambda row: not row["flagged"],
    "DELETED": lambda row: bool(row["deleted"]),
    "UNDELETED": lambda row: not row["deleted"],
    "ANSWERED": lambda row: bool(row["answered"]),
    "UNANSWERED": lambda row: not row["answered"],
    "DRAFT": lambda row: bool(row["draft"]),
    "UNDRAFT": lambda row: not row["draft"],
}


# The row columns each key tests (others test none): a SEARCH reads only those its keys name, as a
# whole row of each of 50,000 messages costs more than the test.
_KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    **{
        f"{un}{flag}": (flag.lower(),)
        for flag in ("SEEN", "FLAGGED", "DELETED", "ANSWERED", "DRAFT")
        for un in ("", "UN")
    },
    "KEYWORD": tuple(responses.STORE_KEYWORDS.values()),
    "UNKEYWORD": tuple(responses.STORE_KEYWORDS.values()),
    "MODSEQ": ("modseq",),
    "LARGER": ("size",),
    "SMALLER": ("size",),
    "BEFORE": ("received",),
    "ON": ("received",),
    "SINCE": ("received",),
}


def columns_of(key: SearchKey) -> set[str]:
    """The row columns `matches` reads for the key, but for the UID and the path (always read)."""
    name = str(key[0])
    if name in ("AND", "OR", "NOT"):
        return set().union(*(columns_of(k) for k in key[1:]))  # type: ignore[arg-type]
    return set(_KEY_COLUMNS.get(name, ()))


def matches(row: MessageRow, key: SearchKey, number: int, text: MessageText) -> bool:
    """Whether the message matches the key; `text` reads its file, if a key needs it."""
    name, args = str(key[0]), key[1:]
    if name in _FLAG_TESTS:
        return _FLAG_TESTS[name](row)
    if name == "AND":
        return all(matches(row, k, number, text) for k in args)  # type: ignore[arg-type]
    if name == "OR":
        return any(matches(row, k, number, text) for k in args)  # type: ignore[arg-type]
    if name == "NOT":
        return not matches(row, args[0], number, text)  # type: ignore[arg-type]
    if name in TEXT_KEYS:
        return text_matches(text, name, args[0])
    return _value_matches(row, name, args[0], number)


def _value_matches(row: MessageRow, name: str, value: Any, number: int) -> bool:
    if name == "NUMBERS":
        return number in value
    if name == "UIDS":
        return row["uid"] in value
    if name in ("KEYWORD", "UNKEYWORD"):
        column = responses.STORE_KEYWORDS.get(value)
        return bool(column and row[column]) == (name == "KEYWORD")
    if name == "MODSEQ":  # RFC 7162 3.1.5
        return bool(row["modseq"] >= value)
    if name in ("LARGER", "SMALLER"):
        return row["size"] > value if name == "LARGER" else row["size"] < value
    day = row["received"].date()  # BEFORE, ON, SINCE: the day it arrived (UTC)
    return day < value if name == "BEFORE" else day == value if name == "ON" else day >= value


def saved_result(options: list[str], found: list[int]) -> list[int]:
    """What SEARCH RETURN (SAVE ...) keeps of the UIDs found (RFC 5182 2.1): all of them, but only
    the least and/or greatest when MIN and/or MAX come without ALL or COUNT."""
    if not found or {"ALL", "COUNT"} & set(options) or not {"MIN", "MAX"} & set(options):
        return found
    return sorted({found[0] if "MIN" in options else found[-1], found[-1] if "MAX" in options else found[0]})


def esearch(tag: str, uid: bool, options: list[str], found: list[int]) -> bytes:
    """The untagged ESEARCH response (RFC 4731) for the numbers found, ascending."""
    parts = [f'* ESEARCH (TAG "{tag}")'] + (["UID"] if uid else [])
    if found and "MIN" in options:
        parts.append(f"MIN {found[0]}")
    if found and "MAX" in options:
        parts.append(f"MAX {found[-1]}")
    if "COUNT" in options:
        parts.append(f"COUNT {len(found)}")
    if found and "ALL" in options:
        parts.append("ALL " + responses.uid_set(found))
    return " ".join(parts).encode() + b"\r\n"
