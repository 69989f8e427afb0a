"""Fixtures and helpers for SMTP tests: test-CA certificates, a config with listeners, the SMTP service
running in a background thread (real sockets on 127.0.0.1, ephemeral ports), a raw line client, and
readers for what the store holds. Loaded by tests/conftest.py as a plugin."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import select

from app.config import Config, load_config
from app.db import session_scope
from app.dmarcreports.evaluation import Evaluation
from app.inreports.intake import ReportMessage
from app.migrate import upgrade_database
from app.models import Account, Mailbox, Message, OutgoingMessage
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer

HOSTNAME = "mail.example.org"
# Small limits, so limit tests send little; errors budget above the number of errors a normal test makes.
LIMITS = {
    "max_message_size": 200_000,
    "max_recipients": 5,
    "max_line_length": 2000,
    "idle_timeout": 30.0,
    "max_errors": 6,
}
EXTRA_ACCOUNTS = """
[domains."example.org".dmarc_reports]
account = "admin"
localpart = "dmarc-reports"
mailbox = "DMARC"

[accounts.bob]
addresses = ["bob@example.org", "jöran@example.org"]
"""


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(tmp_path: Path, tls_ca: trustme.CA) -> tuple[Path, Path]:
    """Certificate chain and key for the mail host name, issued by the test CA."""
    cert = tls_ca.issue_cert(HOSTNAME, "localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def client_tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def smtp_config_toml(tls: tuple[Path, Path] | None, **limits: Any) -> str:
    """Listeners (inbound and submission on port 0), limits, and the extra accounts/addresses."""
    tls_lines = f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n' if tls else ""
    listeners = "".join(
        f'[[listeners]]\nkind = "{kind}"\nport = 0\n{tls_lines}\n' for kind in ("inbound", "submission")
    )
    limit_lines = "".join(f"{key} = {value!r}\n" for key, value in {**LIMITS, **limits}.items())
    return f"{listeners}[limits]\n{limit_lines}\n{EXTRA_ACCOUNTS}"


def write_smtp_config(
    directory: Path, dns: DNSTestServer, tls: tuple[Path, Path] | None, **limits: Any
) -> Path:
    path = write_config(directory, smtp_config_toml(tls, **limits), dns_port=dns.port)
    upgrade_database(load_config(path).resolved_database_url)
    return path


class RecordedHandoff:
    """The SMTP service's hand-off to Celery, kept: evaluations in the form the broker carries
    (Evaluation.to_json()), report messages to parse; queue wake-ups are not needed by any test."""

    def __init__(self) -> None:
        self.evaluations: list[dict[str, Any]] = []
        self.reports: list[ReportMessage] = []

    def record_evaluation(self, evaluation: Evaluation) -> None:
        self.evaluations.append(evaluation.to_json())

    def parse_report(self, message: ReportMessage) -> None:
        self.reports.append(message)

    def wake_queue(self) -> None:
        pass


class ThreadedSMTP:
    """The SMTP service on its own event loop in a background thread, as `postwarden smtp` runs it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.handoff = RecordedHandoff()
        self.evaluations = self.handoff.evaluations
        # Imported here, not at the top: this plugin loads for every test module, and a broken SMTP
        # import should fail the SMTP tests only.
        from app.smtpserver.server import SMTPService, quiet_aiosmtpd_logging

        quiet_aiosmtpd_logging()  # as every worker does: aiosmtpd logs each command line at INFO

        self.loop = asyncio.new_event_loop()
        self.service = SMTPService(config, handoff=self.handoff)
        self.ports: dict[str, int] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="smtp-test-server", daemon=True)

    def start(self) -> ThreadedSMTP:
        self.service.prepare()
        self._thread.start()
        bound = asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(timeout=10)
        self.ports = {b.listener.kind: b.port for b in bound}
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _shutdown(self) -> None:
        await self.service.stop()
        # Sessions the test left open are ended here, before their loop closes.
        sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)

    @property
    def inbound_port(self) -> int:
        return self.ports["inbound"]

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    @property
    def database_url(self) -> str:
        return self.config.resolved_database_url


@pytest.fixture
def smtp_factory(
    tmp_path: Path, dns: DNSTestServer, tls_files: tuple[Path, Path]
) -> Iterator[Callable[..., ThreadedSMTP]]:
    """Start a service with the test config; keyword arguments override limits. Stopped after the test."""
    started: list[ThreadedSMTP] = []

    def start(**limits: Any) -> ThreadedSMTP:
        path = write_smtp_config(tmp_path / f"config{len(started)}", dns, tls_files, **limits)
        server = ThreadedSMTP(load_config(path)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def smtp(smtp_factory: Callable[..., ThreadedSMTP]) -> ThreadedSMTP:
    return smtp_factory()


# Building messages and reading back what was stored.


def make_message(
    from_address: str,
    to: str,
    *,
    subject: str = "test",
    body: str = "Hello.\r\n",
    message_id: str | None = None,
    extra_headers: str = "",
) -> bytes:
    """A CRLF message with From, To, Subject, Message-ID and Date."""
    headers = (
        f"From: <{from_address}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id or make_msgid(domain='test.example')}\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n{extra_headers}"
    )
    return (headers + "\r\n" + body).encode("utf-8")


def publish_sender_domain(
    dns: DNSTestServer, domain: str, dmarc: str, spf: str = "v=spf1 ip4:127.0.0.1 -all"
) -> None:
    """SPF and DMARC records for a sending domain (the SMTP client is 127.0.0.1)."""
    dns.txt(domain, spf)
    dns.txt(f"_dmarc.{domain}", dmarc)


@dataclass(frozen=True)
class Stored:
    row: Message
    mailbox: str
    content: bytes


def stored_messages(server: ThreadedSMTP) -> list[Stored]:
    """Every stored message with its mailbox name and file content, oldest first."""
    with session_scope(server.database_url) as session:
        rows = session.execute(
            select(Message, Mailbox.name).join(Mailbox, Message.mailbox_id == Mailbox.id).order_by(Message.id)
        ).all()
        return [Stored(row, name, (server.config.data_dir / row.path).read_bytes()) for row, name in rows]


def outgoing_rows(server: ThreadedSMTP) -> list[OutgoingMessage]:
    with session_scope(server.database_url) as session:
        return list(session.scalars(select(OutgoingMessage).order_by(OutgoingMessage.id)))


def mailbox_id(server: ThreadedSMTP, account: str, name: str) -> int:
    with session_scope(server.database_url) as session:
        query = select(Mailbox.id).join(Account).where(Account.name == account, Mailbox.name == name)
        return session.scalars(query).one()


class LineClient:
    """A raw SMTP client over a socket: send exact bytes, read whole (multi-line) replies. Every read has
    a timeout, so a server that does not answer fails the test instead of hanging it."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode("utf-8") if isinstance(data, str) else data)

    def reply(self) -> str:
        """One reply; multi-line replies joined with newlines. "" if the server closed the connection."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return "\n".join(lines)
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    def command(self, line: str | bytes) -> str:
        self.send(line + ("\r\n" if isinstance(line, str) else b"\r\n"))
        return self.reply()

    def closed_by_server(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()
