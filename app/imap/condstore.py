"""CONDSTORE (RFC 7162, without QRESYNC): modification sequences shown to clients. The store keeps
them (app/store/mailboxes.py: a mailbox's `highestmodseq`, a message's `modseq`); this module says
which commands turn CONDSTORE on for a session and how the values are written."""

from __future__ import annotations

from app.imap.parser import Command, SearchKey
from app.store.mailboxes import MessageRow


def enables_condstore(command: Command) -> bool:
    """Whether the command is a CONDSTORE enabling command (RFC 7162 3.1): SELECT/EXAMINE
    (CONDSTORE), FETCH MODSEQ or CHANGEDSINCE, STORE UNCHANGEDSINCE, SEARCH MODSEQ. (ENABLE
    CONDSTORE is the session's own.)"""
    args = command.args
    if args.get("condstore") or args.get("changedsince") is not None:
        return True
    if args.get("unchangedsince") is not None:
        return True
    if command.name.endswith("FETCH"):
        return any(item.name == "MODSEQ" for item in args["items"])  # type: ignore[attr-defined]
    if command.name.endswith("SEARCH"):
        return any(names_modseq(key) for key in args["keys"])  # type: ignore[attr-defined]
    return False


def names_modseq(key: SearchKey) -> bool:
    """Whether a search key is MODSEQ or holds one."""
    if key[0] == "MODSEQ":
        return True
    return key[0] in ("AND", "OR", "NOT") and any(names_modseq(k) for k in key[1:])  # type: ignore[arg-type]


def modseq_item(row: MessageRow) -> bytes:
    """The FETCH data item MODSEQ of a message."""
    return b"MODSEQ (%d)" % row["modseq"]


def search_modseq(hits: list[MessageRow]) -> bytes:
    """What a SEARCH with MODSEQ adds to its result: the highest modseq of the messages found (none
    when none is found, RFC 7162 3.1.5)."""
    return b" (MODSEQ %d)" % max(row["modseq"] for row in hits) if hits else b""
