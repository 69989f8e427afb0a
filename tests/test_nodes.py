"""Several machines (SPEC R9.1): two nodes, each with its own data dir, `postwarden smtp` and Celery worker,
share one PostgreSQL database and one Redis (tests/support/nodes.py). Mail submitted on node A is
delivered by node B's worker while A has none; B's worker killed (SIGKILL) mid-batch and Redis
restarted lose nothing, and nothing reaches the remote MX twice. Mail node A stores is read over IMAP,
on the web and by the CLI of node B, which has none of A's disk, and expunged there.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from sqlalchemy import func, select

from app.accounts import set_password, sync_from_config
from app.config import load_config
from app.db import session_scope
from app.migrate import upgrade_database
from app.models import Mailbox, Message, MessageContent, OutgoingContent
from app.queue.outgoing import queue_size
from tests.support.celeryworker import client_for
from tests.support.chaos import POSTWARDEN, Process, Sweeper, free_port, redis_process, smtp_process
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.nodes import SUBMITTER, CountingSink, node
from tests.support.smtpfixtures import client_tls_context
from tests.support.smtppeers import smtp_peer
from tests.support.waiting import wait_until
from tests.support.webclient import log_in, web_process

FIRST = range(0, 3)  # submitted on A while only B has a worker
BATCH = range(100, 160)  # submitted on A and B; B's worker killed while delivering them
IMAP_PASSWORD = "correct horse battery staple"


def settled(url: str) -> bool:
    """The queue is empty and so is its content table: nothing left over on any node."""
    with session_scope(url) as session:
        return (
            queue_size(session) == 0
            and session.scalar(select(func.count()).select_from(OutgoingContent)) == 0
        )


@pytest.mark.slow
@pytest.mark.postgres
def test_any_node_delivers_what_another_queued_through_kills_and_a_broker_restart(
    tmp_path: Path, dns: DNSTestServer, postgres_url: str, tls_files: tuple[Path, Path], tls_ca: trustme.CA
) -> None:
    dns.add("example.net", "MX", "10 mx.example.net.")
    dns.add("mx.example.net", "A", "127.0.0.1")
    tls = client_tls_context(tls_ca)
    sink = CountingSink()
    redis_port = free_port()
    urls = {"database_url": postgres_url, "broker_url": f"redis://127.0.0.1:{redis_port}/0"}
    redis = redis_process(redis_port, tmp_path)
    with smtp_peer(None, handler=sink) as peer:
        nodes = [
            node(tmp_path, name, urls, tls_files, {"submission": free_port(), "sink": peer.port}, dns.port,
                 "lease_seconds = 2\nbatch_size = 10\n")
            for name in ("a", "b")
        ]  # fmt: skip
        a, b = nodes
        upgrade_database(postgres_url)
        with session_scope(postgres_url) as session:
            set_password(session, SUBMITTER[0], SUBMITTER[1])
        processes = [redis, a.smtp, b.smtp, b.worker]
        sweeper = None
        try:
            for process in processes:
                process.start()
            a.submit(FIRST, tls)
            wait_until(
                lambda: len(sink.taken) == len(FIRST), timeout=60, what="B's worker delivering A's mail"
            )
            assert not list((a.data_dir / "outgoing").glob("*")), "A's queue content is not in A's data dir"

            sink.hold_after = sink.taken.total() + 15  # mid-batch: B's worker has delivered some of them
            a.submit(BATCH[::2], tls)
            b.submit(BATCH[1::2], tls)
            # Both processes of B's worker waiting for a reply: neither is between a 250 and its
            # commit, so the kill leaves no message delivered but not marked so.
            wait_until(lambda: sink.held == 2, timeout=60, what="B's worker in the middle of the batch")
            b.worker.kill()
            wait_until(lambda: sink.abandoned == sink.held, what="the killed worker's connections lost")
            sink.hold_after = None
            redis.kill()
            redis.start()
            b.worker.start()
            a.worker.start()  # both nodes' workers take what is left
            # What beat does every minute: wake the workers; the rows the killed worker held come
            # free when their leases (2 s) expire.
            sweeper = Sweeper(client_for(a.config_file))
            wait_until(lambda: settled(postgres_url), timeout=120, what="every message delivered")
        finally:
            if sweeper is not None:
                sweeper.finish()
            for process in reversed([*processes, a.worker]):
                process.kill()

    submitted = [("a", n) for n in FIRST] + [("a", n) for n in BATCH[::2]] + [("b", n) for n in BATCH[1::2]]
    assert set(sink.taken) == {f"{name}-{n}@nodes.test" for name, n in submitted}, "all reached the MX"
    assert set(sink.taken.values()) == {1}, f"delivered twice: {[m for m, c in sink.taken.items() if c > 1]}"


STORED = (
    b"From: <alice@sender.example>\r\nTo: <admin@example.org>\r\nSubject: stored on node a\r\n"
    b"Message-ID: <stored-1@sender.example>\r\nDate: Thu, 03 Dec 2026 08:00:00 +0000\r\n\r\n"
    + b"Read on node b: periwinkle.\r\n"
    * 50
)


def stored_rows(url: str) -> list[dict[str, Any]]:
    """(row id, file id, UID, mailbox name) of every stored message."""
    with session_scope(url) as session:
        query = select(Message.id, Message.file_id, Message.uid, Mailbox.name).join(
            Mailbox, Mailbox.id == Message.mailbox_id
        )
        return [dict(row._mapping) for row in session.execute(query)]


def content_rows(url: str) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(func.count()).select_from(MessageContent)) or 0)


@pytest.mark.postgres
def test_mail_stored_on_one_node_is_read_and_expunged_on_another_without_its_disk(
    tmp_path: Path, dns: DNSTestServer, postgres_url: str, tls_files: tuple[Path, Path], tls_ca: trustme.CA
) -> None:
    """Node A runs `postwarden smtp` only, node B `postwarden imap`, `postwarden web` and the CLI;
    each has its own data dir and both share PostgreSQL, with `[storage] content = "database"`. Mail
    A accepts is read on B over IMAP (FETCH, partial FETCH, SEARCH BODY), in the web message view
    and by `message show`, and B's EXPUNGE removes its content: no node's disk holds it."""
    inbound_port, imaps_port = free_port(), free_port()
    storage = '\n[storage]\ncontent = "database"\n'
    a = write_config(tmp_path / "a", f'{storage}\n[[listeners]]\nkind = "inbound"\nport = {inbound_port}\n',
                     database_url=postgres_url, dns_port=dns.port)  # fmt: skip
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "web-secret.key").write_text("s3cret-" * 8)
    b = write_config(tmp_path / "b", f'{storage}\n[web]\nsecret_key_file = "web-secret.key"\n\n'
                     f'[[listeners]]\nkind = "imaps"\nport = {imaps_port}\n'
                     f'tls_cert = "{tls_files[0]}"\ntls_key = "{tls_files[1]}"\n',
                     database_url=postgres_url, dns_port=dns.port)  # fmt: skip
    upgrade_database(postgres_url)
    with session_scope(postgres_url) as session:
        sync_from_config(session, load_config(a))
        set_password(session, "admin", IMAP_PASSWORD)
    logs = tmp_path / "logs"
    logs.mkdir()
    smtp = smtp_process(a, logs)
    env = {**os.environ, "POSTWARDEN_CONFIG": str(b)}
    imap = Process("imap", [POSTWARDEN, "imap"], env, logs, "imap listening on")
    try:
        smtp.start()
        with smtplib.SMTP("127.0.0.1", inbound_port, timeout=30) as client:
            client.sendmail("alice@sender.example", ["admin@example.org"], STORED)
        smtp.kill()  # node A is gone: B must not need it (nor its data dir)
        assert not [p for p in (tmp_path / "a" / "data").rglob("*") if p.is_file() and "messages" in p.parts]
        (row,) = stored_rows(postgres_url)
        assert content_rows(postgres_url) == 1

        imap.start()
        with imaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=client_tls_context(tls_ca)) as reader:
            reader.login("admin", IMAP_PASSWORD)
            reader.select("INBOX" if row["name"] == "Inbox" else row["name"])
            _, fetched = reader.uid("FETCH", str(row["uid"]), "(BODY.PEEK[] BODY.PEEK[]<0.20>)")
            whole, partial = fetched[0][1], fetched[1][1]
            assert whole.endswith(STORED) and whole.startswith(b"Authentication-Results: mail.example.org")
            assert partial == whole[:20]
            uid = [str(row["uid"]).encode()]
            assert reader.uid("SEARCH", "BODY", "periwinkle")[1] == uid
            assert reader.uid("SEARCH", "HEADER", "Subject", '"stored on node a"')[1] == uid

            with web_process(b) as web, httpx.Client(base_url=web.url) as browser:
                log_in(browser, "admin", IMAP_PASSWORD)
                page = browser.get(f"/message/{row['id']}")
                assert page.status_code == 200 and "Read on node b: periwinkle." in page.text
            shown = subprocess.run([POSTWARDEN, "--config", str(b), "message", "show", row["file_id"]],
                                   capture_output=True, text=True, check=True)  # fmt: skip
            assert "Read on node b: periwinkle." in shown.stdout
            assert "database table message_content" in shown.stdout

            reader.uid("STORE", str(row["uid"]), "+FLAGS.SILENT", "(\\Deleted)")
            reader.expunge()
        assert stored_rows(postgres_url) == [] and content_rows(postgres_url) == 0
        assert not [p for p in tmp_path.rglob("*") if p.is_file() and "messages" in p.parts]
    finally:
        imap.kill()
        smtp.kill()
