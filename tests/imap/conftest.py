"""Fixtures of the IMAP tests: a configured account with a password and messages in the real store,
and the IMAP server on its own event loop in a background thread, listening on loopback (a plain
port with STARTTLS and an implicit TLS port, certificates from the test CA).

A test that takes `content_backend` (parametrised with BACKENDS) runs with message content in files
and again in the database (`[storage] content`, app/store/content.py)."""

from __future__ import annotations

import asyncio
import imaplib
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import imapclient
import pytest
import trustme
from sqlalchemy import select

from app.accounts import set_password, sync_from_config
from app.config import Config, load_config
from app.db import session_scope
from app.imap.server import IMAPLimits, IMAPListener, IMAPServer
from app.migrate import upgrade_database
from app.models import MessageContent
from app.store.content import stored_content
from app.store.files import MESSAGES_DIR, MailboxCopy, MessageStore
from tests.support.configs import write_config
from tests.support.smtpfixtures import client_tls_context, make_message

PASSWORD = "correct horse battery staple"
EXTRA = '\n[accounts.bob]\naddresses = ["bob@example.org"]\n'
BACKENDS = pytest.mark.parametrize("content_backend", ["files", "database"])


class ThreadedIMAP:
    """The IMAP server and a message store on one event loop in a background thread."""

    def __init__(self, config: Config, tls: ssl.SSLContext, limits: IMAPLimits) -> None:
        self.config, self.tls = config, tls
        self.loop = asyncio.new_event_loop()
        self.server = IMAPServer(config, limits)
        self.store = MessageStore.of(config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="imap-test-server", daemon=True)
        self.port = self.tls_port = 0

    def start(self) -> ThreadedIMAP:
        self._thread.start()
        listeners = [
            IMAPListener("127.0.0.1", 0, False, self.tls),
            IMAPListener("127.0.0.1", 0, True, self.tls),
        ]
        self.port, self.tls_port = self.run(self.server.start(listeners))
        return self

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def deliver(
        self, content: bytes, mailbox: str = "Inbox", account: str = "admin", **columns: object
    ) -> str:
        """Store a message as SMTP does (with the row `columns` its analysis would find); its file id."""
        return self._store(MailboxCopy(account, mailbox, dict(columns)), content)

    def reject(self, content: bytes, destined: str = "Inbox", account: str = "admin") -> str:
        """Store a message refused with a 451 as SMTP does: in Rejects, seen, destined for `destined`."""
        columns = {"seen": True, "is_reject": True}
        return self._store(MailboxCopy(account, "Rejects", columns, destined_mailbox=destined), content)

    def content(self, path: str) -> bytes:
        """The stored content at `path`, wherever `[storage] content` keeps it."""
        return stored_content(self.config).read(path)

    def content_paths(self) -> set[str]:
        """The paths that have content: files under messages/, or rows of message_content."""
        if self.config.storage.content == "database":
            with session_scope(self.config.resolved_database_url) as session:
                return set(session.scalars(select(MessageContent.path)))
        files = self.config.data_dir.glob(f"{MESSAGES_DIR}/*/*")
        return {str(path.relative_to(self.config.data_dir)) for path in files}

    def _store(self, copy: MailboxCopy, content: bytes) -> str:
        (file_id,) = self.run(self.store.store_copies(content, [copy]))
        return str(file_id)

    def stop(self) -> None:
        self.run(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _shutdown(self) -> None:
        await self.server.stop()
        await self.store.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


@dataclass(frozen=True)
class IMAPClients:
    """How a test reaches the server: its ports and a TLS context trusting the test CA."""

    server: ThreadedIMAP
    tls: ssl.SSLContext

    def plain(self) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.server.port, timeout=10)

    def starttls(self) -> imaplib.IMAP4:
        client = self.plain()
        client.starttls(self.tls)
        return client

    def imapclient(self, *, log_in: bool = True) -> imapclient.IMAPClient:
        """An imapclient client over implicit TLS, logged in as admin unless `log_in` is False."""
        client = imapclient.IMAPClient("127.0.0.1", port=self.server.tls_port, ssl=True, ssl_context=self.tls)
        if log_in:
            client.login("admin", PASSWORD)
        return client

    def logged_in(self, user: str = "admin", password: str = PASSWORD) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL("127.0.0.1", self.server.tls_port, ssl_context=self.tls, timeout=10)
        client.login(user, password)
        return client


def imap_config(directory: Path, database_url: str | None = None, content: str = "files") -> Config:
    path = write_config(directory, f'{EXTRA}\n[storage]\ncontent = "{content}"\n', database_url=database_url)
    config = load_config(path)
    upgrade_database(config.resolved_database_url)
    with session_scope(config.resolved_database_url) as session:
        sync_from_config(session, config)
        set_password(session, "admin", PASSWORD)
        set_password(session, "bob", PASSWORD)
    return config


@pytest.fixture
def imap_factory(
    request: pytest.FixtureRequest, tmp_path: Path, tls_files: tuple[Path, Path], tls_ca: trustme.CA
) -> Iterator[Callable[..., IMAPClients]]:
    """Start a server (keyword arguments override IMAPLimits); stopped after the test."""
    started: list[ThreadedIMAP] = []
    # A test that asks for `database_url` (e.g. a PostgreSQL one) gets the server on that database.
    url = request.getfixturevalue("database_url") if "database_url" in request.fixturenames else None
    asked = request.fixturenames
    backend = request.getfixturevalue("content_backend") if "content_backend" in asked else "files"
    config = imap_config(tmp_path / "config", url, backend)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(*tls_files)

    def start(**limits: Any) -> IMAPClients:
        server = ThreadedIMAP(config, server_tls, replace(IMAPLimits(), **limits)).start()
        started.append(server)
        return IMAPClients(server, client_tls_context(tls_ca))

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def imap(imap_factory: Callable[..., IMAPClients]) -> IMAPClients:
    return imap_factory()


def message(n: int, body: str = "Hello.\r\n") -> bytes:
    return make_message("carol@example.net", "admin@example.org", subject=f"message {n}", body=body)
