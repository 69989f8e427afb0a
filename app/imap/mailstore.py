"""What an IMAP session asks of the store, for one logged-in account, off the event loop.

Rows are read and changed only through app/store/mailboxes.py (flags through set_flags, the function
the web UI and the CLI call: SPEC R3.3), message content through app/store/content.py (files in the
data dir, or the database: `[storage] content`). IMAP names the
account's inbox INBOX; every other mailbox keeps its store name, with "/" as the hierarchy delimiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.accounts import account_id, configured_mailboxes
from app.config import Config
from app.db import session_scope
from app.store import mailboxes
from app.store.content import stored_content
from app.store.mailboxes import MailboxChanges, MessageRow, MoveRules, UidState

_T = TypeVar("_T")
INBOX = "INBOX"
# Special-use attributes (RFC 6154) by mailbox name; the configured Junk mailbox is \Junk whatever
# its name. Rejects is an ordinary mailbox: what is in it was refused, not filed.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Archive": "\\Archive"}


@dataclass(frozen=True)
class Listed:
    name: str  # as IMAP shows it
    attributes: tuple[str, ...]


class AccountStore:
    """The store as one account sees it."""

    def __init__(self, config: Config, account: str, row_id: int) -> None:
        self.config = config
        self.account = account
        self.account_id = row_id
        self.stored = stored_content(config)
        settings = config.accounts[account]
        self.inbox, self.junk = settings.inbox, settings.junk_mailbox
        # Mailboxes the config names (delivery targets, Junk, Rejects): the config sync makes them
        # again when missing, so IMAP neither deletes nor renames them.
        self.configured = frozenset(configured_mailboxes(config).get(account, set()))

    @classmethod
    async def open(cls, config: Config, account: str) -> AccountStore:
        found = await _in_thread(config, lambda session: account_id(session, account))
        return cls(config, account, found)

    async def _run(self, work: Callable[[Session], _T]) -> _T:
        return await _in_thread(self.config, work)

    def store_name(self, imap_name: str) -> str:
        return self.inbox if imap_name == INBOX else imap_name

    def imap_name(self, store_name: str) -> str:
        return INBOX if store_name == self.inbox else store_name

    async def mailboxes(self) -> list[Listed]:
        names = await self._run(lambda session: mailboxes.mailbox_names(session, self.account_id))
        return [Listed(self.imap_name(name), self._attributes(name)) for name in names]

    def _attributes(self, name: str) -> tuple[str, ...]:
        if name == self.junk:
            return ("\\Junk",)
        return (SPECIAL_USE[name],) if name in SPECIAL_USE else ()

    async def names(self) -> list[str]:
        """The IMAP names of the account's mailboxes, sorted by store name."""
        names = await self._run(lambda session: mailboxes.mailbox_names(session, self.account_id))
        return [self.imap_name(name) for name in names]

    async def subscriptions(self) -> list[str]:
        names = await self._run(lambda session: mailboxes.subscriptions(session, self.account_id))
        return [self.imap_name(name) for name in names]

    async def subscribe(self, imap_name: str) -> None:
        name = self.store_name(imap_name)
        await self._run(lambda session: mailboxes.subscribe(session, self.account_id, name))

    async def unsubscribe(self, imap_name: str) -> bool:
        """Whether the name was subscribed."""
        name = self.store_name(imap_name)
        return await self._run(lambda session: mailboxes.unsubscribe(session, self.account_id, name))

    async def create(self, imap_names: list[str]) -> bool:
        """Make the mailboxes that are missing, in order (parents first), in one transaction;
        whether the last one was made (False: it existed)."""
        names = [self.store_name(n) for n in imap_names]

        def create(session: Session) -> bool:
            made = [
                mailboxes.mailbox_id(session, self.account_id, name) is None
                and mailboxes.create_mailbox(session, self.account_id, name) is not None
                for name in names
            ]
            return made[-1]

        return await self._run(create)

    async def delete(self, mailbox_id: int) -> None:
        """Delete the mailbox and its messages, with the content no row names any more."""

        def delete(session: Session) -> Callable[[], None]:
            paths = mailboxes.delete_mailbox(session, self.account_id, mailbox_id)
            return mailboxes.discard_unnamed(session, self.stored, paths)

        after_commit = await self._run(delete)
        await asyncio.to_thread(after_commit)

    async def rename(self, names: dict[str, str], parents: list[str]) -> None:
        """Rename mailboxes (IMAP old -> new names) after making the new names' missing parents."""
        store_names = {self.store_name(old): self.store_name(new) for old, new in names.items()}

        def rename(session: Session) -> None:
            for parent in parents:
                mailboxes.ensure_mailbox(session, self.account_id, self.store_name(parent))
            mailboxes.rename_mailboxes(session, self.account_id, store_names)

        await self._run(rename)

    async def uid_state(self, imap_name: str) -> UidState | None:
        name = self.store_name(imap_name)
        return await self._run(lambda session: mailboxes.uid_state(session, self.account_id, name))

    async def deleted_count(self, mailbox_id: int) -> int:
        return await self._run(lambda session: mailboxes.count_deleted(session, mailbox_id))

    async def files(self, mailbox_id: int) -> list[tuple[int, str, int]]:
        """(UID, path, size) of the mailbox's messages, by UID."""
        return await self._run(lambda session: mailboxes.mailbox_files(session, mailbox_id))

    async def changes(self, mailbox_id: int, modseq: int) -> MailboxChanges | None:
        """What changed in the mailbox after `modseq` (None: nothing); SPEC R8.3."""
        return await self._run(
            lambda session: mailboxes.changes_since(session, self.account_id, mailbox_id, modseq)
        )

    async def summary(self, imap_name: str) -> dict[str, Any] | None:
        """The mailbox's message count, unseen count and size (mailbox_summaries); None if missing."""
        name = self.store_name(imap_name)
        found = await self._run(lambda session: mailboxes.mailbox_summaries(session, self.account_id))
        return next((s for s in found if s["name"] == name), None)

    async def rows(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageRow]:
        return await self._run(
            lambda session: mailboxes.messages_by_uid(session, self.account_id, mailbox_id, uids)
        )

    async def flag_tuples(
        self, mailbox_id: int, uids: tuple[int, int], flags: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """(uid, modseq, *flags) of the messages with UIDs in the inclusive range, by UID."""
        return await self._run(
            lambda session: mailboxes.flag_tuples(session, self.account_id, mailbox_id, uids, flags)
        )

    async def rows_with_content(
        self, mailbox_id: int, uids: Sequence[int], budget: int
    ) -> tuple[list[MessageRow], dict[int, bytes]]:
        """The rows (as rows()) and, in the same worker-thread call, the content of the first of them
        while their sizes add up to at most `budget` octets, by UID: a FETCH of one small message
        crosses to a thread once, not twice (and, in the database, its content is one query). The
        others are left to content()."""

        def read(session: Session) -> tuple[list[MessageRow], dict[int, bytes]]:
            rows = mailboxes.messages_by_uid(session, self.account_id, mailbox_id, uids)
            within: list[MessageRow] = []
            used = 0
            for row in rows:
                used += row["size"]
                if used > budget:
                    break
                within.append(row)
            contents = self.stored.read_all([row["path"] for row in within]) if within else []
            return rows, {row["uid"]: content for row, content in zip(within, contents, strict=True)}

        return await self._run(read)

    async def all_rows(self, mailbox_id: int, columns: Sequence[str] | None = None) -> list[MessageRow]:
        """Every message's row (only `columns` when given), by UID."""
        return await self._run(
            lambda session: mailboxes.mailbox_messages(session, self.account_id, mailbox_id, columns)
        )

    async def set_flags(self, row_ids: Sequence[int], changes: dict[str, bool]) -> dict[int, int]:
        """Through the store's set_flags (MailboxError for a change it refuses); each message's
        modseq after it, by row id."""

        def store(session: Session) -> dict[int, int]:
            mailboxes.set_flags(session, self.account_id, row_ids, **changes)
            session.flush()  # the new modseqs are read back below
            return mailboxes.modseqs_of(session, row_ids)

        return await self._run(store)

    async def set_flags_unchanged_since(
        self, mailbox_id: int, row_ids: Sequence[int], changes: dict[str, bool], modseq: int
    ) -> list[int]:
        """Set flags on those of the messages not changed after `modseq`, in one transaction (RFC
        7162 UNCHANGEDSINCE); their row ids."""

        def store(session: Session) -> list[int]:
            unchanged = mailboxes.unchanged_since(session, self.account_id, mailbox_id, row_ids, modseq)
            if unchanged:
                mailboxes.set_flags(session, self.account_id, unchanged, **changes)
            return unchanged

        return await self._run(store)

    async def move(self, row_ids: Sequence[int], imap_name: str, *, copy: bool) -> list[int]:
        """Move (or copy) the messages into the mailbox through the store's move_messages, as the web
        UI does: out of Rejects a message becomes the delivery it would have been, into Junk it is
        junk (SPEC R3.3); their UIDs in the target, in the order given. MailboxError for a move the
        store refuses."""
        target, rules = self.store_name(imap_name), MoveRules.of(self.config, self.account)

        def move(session: Session) -> list[int]:
            moved = mailboxes.move_messages(session, self.account_id, row_ids, target, rules=rules, copy=copy)
            session.flush()  # the moved rows' new UIDs are read back below
            uids = mailboxes.uids_of(session, moved)
            return [uids[row_id] for row_id in moved]

        return await self._run(move)

    async def uid_of_file(self, file_id: str) -> int | None:
        """The UID of the stored message with this file id (None if there is none)."""
        found = await self._run(lambda session: mailboxes.find_message(session, file_id))
        return None if found is None else int(found["uid"])

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove the mailbox's messages flagged \\Deleted (only those with `uids` when given), with
        the content no row names any more; the UIDs removed."""

        def expunge(session: Session) -> tuple[list[tuple[int, str]], Callable[[], None]]:
            removed = mailboxes.expunge_deleted(session, self.account_id, mailbox_id, uids)
            return removed, mailboxes.discard_unnamed(session, self.stored, [path for _, path in removed])

        removed, after_commit = await self._run(expunge)
        await asyncio.to_thread(after_commit)
        return [uid for uid, _ in removed]

    async def read_files(self, paths: Sequence[str]) -> list[bytes] | None:
        """The messages' octets, in one worker-thread call (files: without a query); None if one is
        gone (its message was expunged: the caller reads the rows, which leave it out)."""

        def read() -> list[bytes] | None:
            try:
                return self.stored.read_all(paths)
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(read)

    async def content(self, row: MessageRow) -> bytes:
        """The message's octets (content is written once and never changes)."""
        return await asyncio.to_thread(self.stored.read, row["path"])


async def _in_thread(config: Config, work: Callable[[Session], _T]) -> _T:
    def run() -> _T:
        with session_scope(config.resolved_database_url) as session:
            return work(session)

    return await asyncio.to_thread(run)

