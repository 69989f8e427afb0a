"""The store under database and process faults (issue 9): a read-only episode ends with it, a missing
database is never created, and recovery leaves alone what another live process is committing."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.config import load_config
from app.db import engine_for, session_scope
from app.migrate import upgrade_database
from app.models import Message, MessageContent
from app.store.files import TMP_DIR, MailboxCopy, MessageStore, StoreError
from tests.support.configs import write_config
from tests.support.dbfaults import pool_connection_opened_read_only, postgres_read_only, traversable_dir
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import (
    ThreadedSMTP,
    make_message,
    publish_sender_domain,
    smtp_config_toml,
    write_smtp_config,
)

COPY = [MailboxCopy("alice", "Inbox")]
SENDER = "alice@sender.example"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = traversable_dir()
    yield path
    shutil.rmtree(path)


def stored_paths(url: str) -> list[str]:
    with session_scope(url) as session:
        return list(session.scalars(select(Message.path).order_by(Message.id)))


async def test_sqlite_read_only_episode_ends_without_a_restart(shared_dir: Path) -> None:
    database = shared_dir / "postwarden.db"
    url = f"sqlite:///{database}"
    upgrade_database(url)
    store = MessageStore(shared_dir / "data", url)
    keep_wal = sqlite3.connect(database)  # another process's: keeps the -wal and -shm files
    keep_wal.execute("SELECT count(*) FROM messages").fetchall()
    try:
        database.chmod(0o444)
        pool_connection_opened_read_only(url)
        with pytest.raises(StoreError):
            await store.store_copies(b"Subject: while read-only\r\n\r\nx\r\n", COPY)
        database.chmod(0o644)
        (file_id,) = await store.store_copies(b"Subject: writable again\r\n\r\nx\r\n", COPY)
        assert [path.rpartition("/")[2] for path in stored_paths(url)] == [file_id]
    finally:
        keep_wal.close()
        await store.close()
        engine_for(url).dispose()


@pytest.mark.parametrize("in_database", [False, True], ids=["files", "database"])
async def test_postgres_read_only_episode_ends_without_a_restart(
    tmp_path: Path, postgres_url: str, in_database: bool
) -> None:
    """With content in the database too: the failed message leaves no content row behind."""
    upgrade_database(postgres_url)
    store = MessageStore(tmp_path / "data", postgres_url, in_database=in_database)
    try:
        await store.store_copies(b"Subject: before\r\n\r\nx\r\n", COPY)  # a pooled session exists
        postgres_read_only(postgres_url, True, end_sessions=True)
        with pytest.raises(StoreError):
            await store.store_copies(b"Subject: while read-only\r\n\r\nx\r\n", COPY)
        # Writable again; the session opened while read-only is still in the pool.
        postgres_read_only(postgres_url, False, end_sessions=False)
        (file_id,) = await store.store_copies(b"Subject: after\r\n\r\nx\r\n", COPY)
        assert stored_paths(postgres_url)[-1].endswith(file_id) and len(stored_paths(postgres_url)) == 2
        with session_scope(postgres_url) as session:
            contents = set(session.scalars(select(MessageContent.path)))
        assert contents == (set(stored_paths(postgres_url)) if in_database else set())
        assert tmp_files(tmp_path / "data") == []
    finally:
        await store.close()


async def test_a_missing_sqlite_database_is_not_created(tmp_path: Path) -> None:
    database = tmp_path / "postwarden.db"
    url = f"sqlite:///{database}"
    store = MessageStore(tmp_path / "data", url)
    try:
        with pytest.raises(StoreError) as raised:
            await store.store_copies(b"Subject: x\r\n\r\nx\r\n", COPY)
        assert f"database file {database} does not exist" in str(raised.value)
        assert "alembic upgrade head" in str(raised.value)
        assert not database.exists()
        assert tmp_files(tmp_path / "data") == [], "the message's file is removed"
    finally:
        await store.close()
    upgrade_database(url)  # the migrations do create it
    assert database.exists() and stored_paths(url) == []


# A second process storing a message (as a delivery worker stores a DSN) whose commit waits.
WRITER = """
import asyncio, sys
from pathlib import Path
from app.store.files import MailboxCopy, MessageStore

async def main():
    store = MessageStore(Path(sys.argv[1]), sys.argv[2])
    copy = MailboxCopy("alice", "Inbox")
    (file_id,) = await store.store_copies(b"Subject: DSN\\r\\n\\r\\nbody\\r\\n", [copy])
    await store.close()
    print(file_id)

asyncio.run(main())
"""


def tmp_files(data: Path) -> list[Path]:
    return sorted(p for p in (data / TMP_DIR).rglob("*") if p.is_file())


def start_writer_held_mid_commit(
    data: Path, url: str, database: Path
) -> tuple[subprocess.Popen[str], sqlite3.Connection]:
    """The writer process with its file written and its commit waiting for our write lock."""
    lock = sqlite3.connect(database, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not tmp_files(data):
        assert writer.poll() is None, writer.communicate()
        assert time.monotonic() < deadline, "the writer wrote no file"
        time.sleep(0.01)
    return writer, lock


def test_recovery_leaves_a_file_another_process_is_committing(tmp_path: Path, sqlite_url: str) -> None:
    data = tmp_path / "data"
    database = tmp_path / "postwarden.db"
    MessageStore(data, sqlite_url)  # makes tmp/
    writer, lock = start_writer_held_mid_commit(data, sqlite_url, database)
    try:
        written = tmp_files(data)
        report = MessageStore(data, sqlite_url).recover()  # what `postwarden smtp` does as it starts
        assert (report.completed, report.removed) == (0, 0)
        assert tmp_files(data) == written
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    (path,) = stored_paths(sqlite_url)
    assert path.endswith(out.strip())
    assert (data / path).read_bytes() == b"Subject: DSN\r\n\r\nbody\r\n", "the row has its file"
    assert list((data / TMP_DIR).iterdir()) == [], "the writer removed its directory as it closed"


def test_recovery_settles_the_files_of_a_process_that_died(tmp_path: Path, sqlite_url: str) -> None:
    data = tmp_path / "data"
    database = tmp_path / "postwarden.db"
    MessageStore(data, sqlite_url)
    writer, lock = start_writer_held_mid_commit(data, sqlite_url, database)
    try:
        os.killpg(writer.pid, signal.SIGKILL)  # a crash before its commit: no row, no 250
        writer.wait(timeout=30)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    report = MessageStore(data, sqlite_url).recover()
    assert (report.completed, report.removed) == (0, 1)
    assert list((data / TMP_DIR).iterdir()) == [], "the dead process's directory is gone"
    assert stored_paths(sqlite_url) == []


@pytest.mark.parametrize("command", [["smtp"], ["mailbox", "list", "admin"]])
def test_processes_do_not_create_a_missing_database(tmp_path: Path, command: list[str]) -> None:
    """`postwarden smtp` and the CLI, as an operator runs them: a clear message, the file not made."""
    config_file = write_config(tmp_path / "cfg", smtp_config_toml(None), dns_port=53)
    database = tmp_path / "cfg" / "data" / "postwarden.db"
    postwarden = Path(sys.executable).parent / "postwarden"
    env = {**os.environ, "POSTWARDEN_CONFIG": str(config_file)}
    done = subprocess.run([postwarden, *command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"database file {database} does not exist" in done.stderr
    assert "alembic upgrade head" in done.stderr and "Traceback" not in done.stderr
    assert not database.exists()


def test_smtp_takes_mail_again_once_the_database_is_writable(shared_dir: Path, dns: DNSTestServer) -> None:
    """The reported episode end to end: 451 while the file is read-only, 250 once it is not."""
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=none")
    config = load_config(write_smtp_config(shared_dir / "cfg", dns, None))
    url = config.resolved_database_url
    database = config.data_dir / "postwarden.db"
    server = ThreadedSMTP(config).start()
    other_process = sqlite3.connect(database)
    other_process.execute("SELECT count(*) FROM messages").fetchall()
    try:
        database.chmod(0o444)
        pool_connection_opened_read_only(url)
        with smtplib.SMTP("127.0.0.1", server.inbound_port, timeout=30) as client:
            client.ehlo("client.sender.example")
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org"))
            assert refused.value.smtp_code == 451
            database.chmod(0o644)
            message = make_message(SENDER, "admin@example.org", message_id="<after@sender.example>")
            assert client.sendmail(SENDER, ["admin@example.org"], message) == {}
        with session_scope(url) as session:
            assert list(session.scalars(select(Message.message_id))) == ["<after@sender.example>"]
    finally:
        other_process.close()
        server.stop()
        engine_for(url).dispose()
