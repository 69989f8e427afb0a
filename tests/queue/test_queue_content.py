"""The queue's content in the database (`[storage] content = "database"`, SPEC R9.1,
app/queue/content.py): queued by a job or by the submission store without a file, read and removed by
delivery, removed by a drop and by the orphan sweep; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select, update

from app.cli import main
from app.config import Config, load_config
from app.db import session_scope
from app.dns import Resolver
from app.models import OutgoingContent, OutgoingMessage
from app.models.base import utcnow
from app.queue.content import DatabaseContent
from app.queue.deliver import deliver
from app.queue.enqueue import Queued, enqueue
from app.queue.outgoing import drop_messages, remove_orphans
from app.store.files import MessageStore
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.smtppeers import PeerHandler, smtp_peer

SENDER = "admin@example.org"
CONTENT = (
    b"From: <admin@example.org>\r\nSubject: kept in the database\r\n"
    b"Message-ID: <c1@example.org>\r\n\r\nHi.\r\n"
)


def database_config(tmp_path: Path, url: str, dns: DNSTestServer, smtp_port: int = 25) -> Config:
    dns.add("example.net", "MX", "10 mx.example.net.")
    dns.add("mx.example.net", "A", "127.0.0.1")
    extra = f'\n[storage]\ncontent = "database"\n\n[delivery]\nsmtp_port = {smtp_port}\n'
    return load_config(write_config(tmp_path / "config", extra, database_url=url, dns_port=dns.port))


def stored(config: Config) -> dict[str, bytes]:
    with session_scope(config.resolved_database_url) as session:
        return {row.path: row.content for row in session.scalars(select(OutgoingContent))}


def queued_paths(config: Config) -> set[str]:
    with session_scope(config.resolved_database_url) as session:
        return set(session.scalars(select(OutgoingMessage.path)))


def test_a_job_queues_content_into_the_database_and_delivery_removes_it(
    tmp_path: Path, url: str, dns: DNSTestServer, resolver: Resolver
) -> None:
    handler = PeerHandler(rcpt_replies={"later@example.net": "451 4.3.0 try again later"})
    with smtp_peer(None, handler=handler) as peer:
        config = database_config(tmp_path, url, dns, peer.port)
        with session_scope(url) as session:
            done, _ = enqueue(
                session, config, Queued(CONTENT, SENDER, ["bob@example.net", "carol@example.net"])
            )
            (deferred,) = enqueue(session, config, Queued(CONTENT, SENDER, ["later@example.net"]))
        assert not (config.data_dir / "outgoing").exists(), "no file under the data dir"
        assert set(stored(config).values()) == {CONTENT} and set(stored(config)) == queued_paths(config)

        asyncio.run(deliver(config, done, resolver))

    assert [(r.rcpt_tos, r.content) for r in peer.received] == [
        (["bob@example.net", "carol@example.net"], CONTENT)
    ]
    assert set(stored(config)) == queued_paths(config), "the delivered message's content went with its rows"
    assert len(stored(config)) == 1, "the deferred message keeps its content"
    assert drop_messages(config, [deferred]) == [deferred]
    assert stored(config) == {}, "dropped: its content too"


def test_queue_show_reads_the_headers_from_the_database(tmp_path: Path, url: str, dns: DNSTestServer) -> None:
    config = database_config(tmp_path, url, dns)
    with session_scope(url) as session:
        (queue_id,) = enqueue(session, config, Queued(CONTENT, SENDER, ["bob@example.net"]))
    config_file = tmp_path / "config" / "postwarden.toml"

    shown = CliRunner().invoke(main, ["--config", str(config_file), "queue", "show", str(queue_id)])

    assert shown.exit_code == 0, shown.output
    assert "header Subject: kept in the database" in shown.output
    assert "file: database table outgoing_content" in shown.output


def test_the_orphan_sweep_removes_old_content_no_row_names(
    tmp_path: Path, url: str, dns: DNSTestServer
) -> None:
    config = database_config(tmp_path, url, dns)
    with session_scope(url) as session:
        enqueue(session, config, Queued(CONTENT, SENDER, ["bob@example.net"]))
        DatabaseContent().add(
            session, [("outgoing/orphan", (b"left over",)), ("outgoing/young", (b"young",))]
        )
    with session_scope(url) as session:
        old = OutgoingContent.path != "outgoing/young"
        session.execute(update(OutgoingContent).where(old).values(created=utcnow() - timedelta(hours=1)))

    assert remove_orphans(config, timedelta(minutes=30)) == 1
    assert set(stored(config)) == queued_paths(config) | {"outgoing/young"}


def test_a_submission_is_committed_with_its_content_and_no_file(
    tmp_path: Path, url: str, dns: DNSTestServer, resolver: Resolver
) -> None:
    config = database_config(tmp_path, url, dns)

    async def submit() -> str:
        store = MessageStore.of(config)
        try:
            message = Queued(CONTENT, SENDER, ["bob@example.net"])
            return await store.enqueue_outgoing(
                message,
                account="admin",
                default_max_attempts=8,
                prefix=b"Received: by us\r\n",
            )
        finally:
            await store.close()

    file_id = asyncio.run(submit())

    assert stored(config) == {f"outgoing/{file_id}": b"Received: by us\r\n" + CONTENT}
    assert queued_paths(config) == {f"outgoing/{file_id}"}
    assert not list(config.data_dir.glob("**/*" + file_id + "*")), "no file, not even in tmp/"
