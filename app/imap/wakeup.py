"""Waking idling IMAP sessions when their mailbox changes (SPEC R8.3). On PostgreSQL the store
notifies channel CHANNEL with the mailbox id in every transaction that changes a mailbox
(app/store/mailboxes.claim; delivered at commit), and one LISTEN connection per server sets the
events of the sessions idling on it. Without PostgreSQL, or when the connection fails or is lost,
sessions keep polling every `idle_poll` seconds: the poll is the fallback, the wake-up a shortcut."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg
from sqlalchemy.engine import make_url

from app.store.mailboxes import CHANGE_CHANNEL

log = logging.getLogger("app.imap")


class Wakeups:
    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.conninfo = (
            url.set(drivername="postgresql").render_as_string(hide_password=False)
            if url.get_backend_name() == "postgresql"
            else None
        )
        self.waiting: dict[int, set[asyncio.Event]] = {}
        self.connection: psycopg.AsyncConnection[object] | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.conninfo is None:
            return
        try:
            self.connection = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            await self.connection.execute(f"LISTEN {CHANGE_CHANNEL}")
        except psycopg.Error as e:
            log.warning("imap: no change notifications (%s); polling only", str(e).partition("\n")[0])
            return
        self.task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        assert self.connection is not None
        try:
            async for note in self.connection.notifies():
                if note.payload.isdigit():  # only the store notifies; anything else is ignored
                    for event in self.waiting.get(int(note.payload), ()):
                        event.set()
        except psycopg.Error as e:
            log.warning("imap: change notifications lost (%s); polling only", str(e).partition("\n")[0])

    @contextmanager
    def watching(self, mailbox_id: int | None) -> Iterator[asyncio.Event]:
        """An event set when the mailbox changes (never for None: nothing selected)."""
        event = asyncio.Event()
        if mailbox_id is None:
            yield event
            return
        self.waiting.setdefault(mailbox_id, set()).add(event)
        try:
            yield event
        finally:
            self.waiting[mailbox_id].discard(event)
            if not self.waiting[mailbox_id]:
                del self.waiting[mailbox_id]

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        if self.connection is not None:
            await self.connection.close()
