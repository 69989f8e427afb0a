"""Several nodes on one machine (SPEC R9.1): each a config with its own data dir and its own `postwarden
smtp` and Celery worker, all sharing one PostgreSQL database and one Redis broker, with message
content in the database. tests/test_nodes.py and tests/bench/scale.py run them; the remote MX is a
`CountingSink` in the calling process, which counts each message it accepted by Message-ID.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.chaos import Process, celery_process, smtp_process
from tests.support.configs import write_config
from tests.support.smtpfixtures import EXTRA_ACCOUNTS
from tests.support.smtppeers import PeerHandler

SUBMITTER = ("bob", "secret password", "bob@example.org")
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>\r\n]{1,200})>\r?$", re.MULTILINE | re.IGNORECASE)


@dataclass
class CountingSink(PeerHandler):
    """The remote MX. `taken` counts the messages it accepted (replied 250 to) by Message-ID.

    `hold_after`: once that many are taken, each further message waits for its reply until the
    connection is lost (its sender killed): a message is then never half delivered, taken by the MX
    while its sender may not know it, and "exactly once" is a fair demand on the queue.
    """

    taken: Counter[str] = field(default_factory=Counter)
    hold_after: int | None = None
    held: int = 0  # messages waiting for their reply
    abandoned: int = 0  # held messages whose sender went away

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.hold_after is not None and self.taken.total() >= self.hold_after:
            self.held += 1
            try:
                await asyncio.Event().wait()  # never set: only the lost connection ends it
            except asyncio.CancelledError:
                self.abandoned += 1
                raise
        found = _MESSAGE_ID.search(envelope.original_content or envelope.content)
        self.taken[found.group(1).decode() if found else ""] += 1
        return "250 2.0.0 OK"


def message(node: str, number: int) -> bytes:
    return (
        f"From: <{SUBMITTER[2]}>\r\nTo: <r{number}@example.net>\r\nSubject: node {node} message {number}\r\n"
        f"Message-ID: <{node}-{number}@nodes.test>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n\r\n"
        + "A line of text for the remote MX.\r\n"
        * 100
    ).encode()


@dataclass
class Node:
    """One machine's processes: its SMTP listeners and its delivery worker, each started on demand."""

    name: str
    config_file: Path
    submission_port: int
    smtp: Process
    worker: Process

    @property
    def data_dir(self) -> Path:
        return self.config_file.parent / "data"

    def submit(self, numbers: range, tls: ssl.SSLContext) -> None:
        """Submit one message per number over one session (STARTTLS, AUTH), each to its own recipient."""
        with smtplib.SMTP("127.0.0.1", self.submission_port, timeout=30) as client:
            client.starttls(context=tls)
            client.login(SUBMITTER[0], SUBMITTER[1])
            for number in numbers:
                client.sendmail(SUBMITTER[2], [f"r{number}@example.net"], message(self.name, number))


def node(
    directory: Path,
    name: str,
    urls: dict[str, str],
    tls: tuple[Path, Path],
    ports: dict[str, int],
    dns_port: int,
    delivery: str = "",
) -> Node:
    """A node's config (its own data dir; the shared database and broker in `urls`; message content
    in the database) and its processes, not started. `ports`: its submission listener and the sink's.
    `delivery`: more `[delivery]` settings."""
    extra = (
        f'[[listeners]]\nkind = "submission"\nport = {ports["submission"]}\n'
        f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n\n'
        '[storage]\ncontent = "database"\n\n'
        f"[delivery]\nsmtp_port = {ports['sink']}\nconnect_timeout = 2\ncommand_timeout = 5\n"
        f"transaction_timeout = 5\n{delivery}\n{EXTRA_ACCOUNTS}"
    )
    home = directory / name
    config_file = write_config(home, extra, dns_port=dns_port, **urls)
    logs = home / "logs"
    logs.mkdir()
    worker = celery_process(config_file, logs, name=f"node-{name}")
    return Node(name, config_file, ports["submission"], smtp_process(config_file, logs), worker)
