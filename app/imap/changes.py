"""Live updates (SPEC R8.3): what a session tells its client about changes made by others (another
IMAP session, the web UI, the CLI, SMTP) to the selected mailbox since its view was taken.

The store raises a mailbox's modification sequence in every transaction that changes its messages
(app/store/mailboxes.py); a session keeps the value it has seen, and one read of the mailbox row
tells whether anything changed since. When something did: messages gone (EXPUNGE), messages whose
flags changed (FETCH FLAGS) and new ones (EXISTS).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.imap import responses
from app.imap.condstore import modseq_item
from app.store.mailboxes import MailboxChanges, MessageRow


@dataclass(frozen=True)
class Update:
    expunged: set[int]  # UIDs that left the mailbox
    flagged: list[MessageRow]  # messages of the view whose flags changed, by UID
    added: list[int]  # UIDs new to the view, ascending


def update_of(view: list[int], shown: dict[int, int], found: MailboxChanges) -> Update:
    """What to tell a client whose view holds the UIDs `view`, of the changes `found`. `shown` maps
    UIDs to the modification sequence of flags the session has already sent (its own STORE): those
    are not sent again."""
    known, now = set(view), set(found.uids)
    flagged = [
        row
        for row in found.changed
        if row["uid"] in known and row["uid"] in now and shown.get(row["uid"]) != row["modseq"]
    ]
    return Update(known - now, flagged, [uid for uid in found.uids if uid not in known])


def flags_line(number: int, row: MessageRow, condstore: bool) -> bytes:
    """The unsolicited FETCH of a message's new flags, with its UID (clients match on it) and, once
    the session enabled CONDSTORE, its MODSEQ (RFC 7162 3.1.4)."""
    items = [b"FLAGS " + responses.flags_of(row), b"UID %d" % row["uid"]]
    if condstore:
        items.append(modseq_item(row))
    return responses.fetch_line(number, items)
