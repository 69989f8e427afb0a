"""SPEC R1.6 against a real crash: `postwarden smtp` is killed with SIGKILL while sessions stream mail.

Every message that got a 250 must be stored complete (row and byte-identical file); nothing may be
half-stored (a row without its file, or a file without its row) once the restarted server has
recovered; and the restarted server must accept mail again.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
from sqlalchemy import select

from app.accounts import set_password
from app.config import Config, load_config
from app.db import engine_for, session_scope
from app.models import Message
from tests.support.celeryworker import wait_for_text
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import (
    client_tls_context,
    make_message,
    publish_sender_domain,
    write_smtp_config,
)

POSTWARDEN = str(Path(sys.executable).with_name("postwarden"))
SENDER = "alice@sender.example"
MESSAGES = 1000
SESSIONS = 8
KILL_AFTER_ACCEPTED = 400
LISTENING = re.compile(r"smtp inbound listening on 127\.0\.0\.1:(\d+)")


@contextmanager
def smtp_process(
    config_file: Path, log: Path, workers: int = 2
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`postwarden smtp` (two worker processes, whatever the CPU count) as a subprocess; yields it and
    its inbound port once it is ready."""
    env = {**os.environ, "POSTWARDEN_CONFIG": str(config_file)}
    command = [POSTWARDEN, "smtp", "--workers", str(workers)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        text = wait_for_text(log, "smtp ready", process=process)
        port = int(LISTENING.findall(text)[0])
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)


def message_for(number: int) -> bytes:
    body = "".join(f"message {number} line {line} " + "x" * 60 + "\r\n" for line in range(12))
    return make_message(
        SENDER, "admin@example.org", message_id=f"<durability-{number}@sender.example>", body=body
    )


def stream(port: int, numbers: list[int], accepted: list[int], enough: threading.Event) -> None:
    """Send the messages over one session, recording each that got a 250; stop when the server dies."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.sender.example")
            for number in numbers:
                client.sendmail(SENDER, ["admin@example.org"], message_for(number))
                accepted.append(number)  # sendmail returned: the server said 250 to DATA
                if len(accepted) >= KILL_AFTER_ACCEPTED:
                    enough.set()
    except (OSError, smtplib.SMTPException):
        pass  # killed mid-transaction: that message got no 250


def stored_rows(config: Config) -> dict[str, Message]:
    with session_scope(config.resolved_database_url) as session:
        return {row.message_id or "": row for row in session.scalars(select(Message))}


def test_messages_acknowledged_before_a_crash_are_stored_and_nothing_is_half_stored(
    tmp_path: Path, dns: DNSTestServer
) -> None:
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=reject; rua=mailto:dmarc@sender.example")
    config_file = write_smtp_config(tmp_path / "cfg", dns, None, idle_timeout=60.0)
    config = load_config(config_file)
    accepted: list[int] = []
    enough = threading.Event()

    with smtp_process(config_file, tmp_path / "smtp-1.log") as (process, port):
        workers = [
            threading.Thread(target=stream, args=(port, list(range(i, MESSAGES, SESSIONS)), accepted, enough))
            for i in range(SESSIONS)
        ]
        for worker in workers:
            worker.start()
        assert enough.wait(timeout=120), f"only {len(accepted)} messages accepted; see {tmp_path}/smtp-1.log"
        os.killpg(process.pid, signal.SIGKILL)  # the supervisor and its workers, as in a crash
        process.wait(timeout=20)
        for worker in workers:
            worker.join(timeout=60)
    acknowledged = set(accepted)
    assert KILL_AFTER_ACCEPTED <= len(acknowledged) < MESSAGES, "the kill must land mid-stream"

    engine_for(config.resolved_database_url).dispose()
    with smtp_process(config_file, tmp_path / "smtp-2.log") as (_process, port):
        tmp_files = list((config.data_dir / "tmp").iterdir())
        assert tmp_files == [], f"recovery left {tmp_files}"
        rows = stored_rows(config)
        # Every acknowledged message is stored, complete and byte for byte.
        for number in acknowledged:
            row = rows.get(f"<durability-{number}@sender.example>")
            assert row is not None, f"message {number} got 250 but has no row"
        for message_id, row in rows.items():
            number = int(message_id.split("-")[1].split("@")[0])
            content = (config.data_dir / row.path).read_bytes()
            assert content.endswith(message_for(number)) and len(content) == row.size, (
                f"{row.path} incomplete"
            )
        # No file without its row.
        files = {
            p.relative_to(config.data_dir).as_posix()
            for p in (config.data_dir / "messages").rglob("*")
            if p.is_file()
        }
        assert files == {row.path for row in rows.values()}
        # And the restarted server takes mail.
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.sender.example")
            assert client.sendmail(SENDER, ["admin@example.org"], message_for(MESSAGES)) == {}
    assert f"<durability-{MESSAGES}@sender.example>" in stored_rows(config)
    unacknowledged_but_stored = len(rows) - len(acknowledged)
    assert 0 <= unacknowledged_but_stored <= SESSIONS, "only in-flight messages may be stored without a 250"


def test_smtp_exits_with_a_clear_message_when_a_port_cannot_be_bound(
    tmp_path: Path, dns: DNSTestServer
) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        config_file = write_smtp_config(tmp_path / "cfg", dns, None)
        text = config_file.read_text().replace("port = 0", f"port = {port}", 1)
        config_file.write_text(text)
        env = {**os.environ, "POSTWARDEN_CONFIG": str(config_file)}
        done = subprocess.run([POSTWARDEN, "smtp"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        blocker.close()
    assert done.returncode == 1
    assert f"listeners[0] (inbound): cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_and_publisher_die_with_a_killed_supervisor(tmp_path: Path, dns: DNSTestServer) -> None:
    config_file = write_smtp_config(tmp_path / "cfg", dns, None)
    with smtp_process(config_file, tmp_path / "smtp.log") as (process, port):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        children = children_of(process.pid)
        assert len(children) >= 2, "expected smtp worker(s) and the evaluation publisher"
        process.send_signal(signal.SIGKILL)  # the supervisor alone
        process.wait(timeout=20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(pid) for pid in children):
            time.sleep(0.05)
        assert [pid for pid in children if alive(pid)] == [], "children outlived their supervisor"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_dead_worker_is_replaced(tmp_path: Path, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=none")
    config_file = write_smtp_config(tmp_path / "cfg", dns, None)
    log = tmp_path / "smtp.log"
    with smtp_process(config_file, log) as (_process, port):
        victim = int(re.findall(r"smtp worker (\d+) started", log.read_text())[0])
        os.kill(victim, signal.SIGKILL)
        wait_for_text(log, f"smtp worker {victim} exited unexpectedly; starting a new one")
        for number in range(4):  # whichever worker takes the connection, mail is accepted
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                assert client.sendmail(SENDER, ["admin@example.org"], message_for(number)) == {}


def published_evaluations(queue_dir: Path) -> list[dict[str, object]]:
    """The evaluations in the filesystem broker's folder (kombu: JSON envelope, base64 JSON body)."""
    found = []
    for path in queue_dir.glob("*.msg"):
        envelope = json.loads(path.read_text())
        if envelope["headers"]["task"] == "tasks.mail.record_dmarc_evaluation":
            args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            found.extend(args)  # one task carries every evaluation gathered at the time
    return found


def test_evaluations_are_published_to_the_broker(tmp_path: Path, dns: DNSTestServer) -> None:
    """The whole hand-off: SMTP worker → publisher process → Celery message on the configured broker."""
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=reject; rua=mailto:dmarc@sender.example")
    config_file = write_smtp_config(tmp_path / "cfg", dns, None)
    queue_dir = load_config(config_file).data_dir / "queue"
    with smtp_process(config_file, tmp_path / "smtp.log") as (_process, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for number in range(3):
                client.sendmail(SENDER, ["admin@example.org"], message_for(number))
        deadline = time.monotonic() + 20
        while len(published_evaluations(queue_dir)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    evaluations = published_evaluations(queue_dir)
    assert len(evaluations) == 3
    assert {(e["policy_domain"], e["disposition"], e["optional"]) for e in evaluations} == {
        ("sender.example", "none", False)
    }


def published_tasks(queue_dir: Path, name: str) -> int:
    return sum(json.loads(path.read_text())["headers"]["task"] == name for path in queue_dir.glob("*.msg"))


def test_submission_wakes_the_delivery_queue(
    tmp_path: Path, dns: DNSTestServer, tls_files: tuple[Path, Path], tls_ca: trustme.CA
) -> None:
    """Submitted mail goes out now, not at the next beat sweep: the publisher sends a sweep_queue."""
    config_file = write_smtp_config(tmp_path / "cfg", dns, tls_files)
    config = load_config(config_file)
    with session_scope(config.resolved_database_url) as session:
        set_password(session, "bob", "secret password")
    queue_dir = config.data_dir / "queue"
    log = tmp_path / "smtp.log"
    with smtp_process(config_file, log) as (_process, _port):
        submission_port = int(
            re.findall(r"smtp submission listening on 127\.0\.0\.1:(\d+)", log.read_text())[0]
        )
        assert published_tasks(queue_dir, "tasks.mail.sweep_queue") == 0
        with smtplib.SMTP("127.0.0.1", submission_port, timeout=30) as client:
            client.starttls(context=client_tls_context(tls_ca))
            client.login("bob", "secret password")
            client.sendmail(
                "bob@example.org", ["friend@elsewhere.example"], make_message("bob@example.org", "f@x")
            )
        deadline = time.monotonic() + 20
        while published_tasks(queue_dir, "tasks.mail.sweep_queue") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert published_tasks(queue_dir, "tasks.mail.sweep_queue") == 1
