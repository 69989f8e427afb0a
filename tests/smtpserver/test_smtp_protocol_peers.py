"""SMTP clients that no one here wrote against our listeners: swaks and Postfix's smtp-source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trustme

from app.accounts import set_password
from app.db import session_scope
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import ThreadedSMTP, outgoing_rows, publish_sender_domain, stored_messages

pytestmark = pytest.mark.peer

SWAKS = shutil.which("swaks")
SMTP_SOURCE = shutil.which("smtp-source") or (
    "/usr/sbin/smtp-source" if Path("/usr/sbin/smtp-source").exists() else None
)
needs_swaks = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed (Debian package swaks)")
needs_smtp_source = pytest.mark.skipif(
    SMTP_SOURCE is None, reason="smtp-source is not installed (Debian package postfix)"
)
SENDER = "alice@sender.example"


@pytest.fixture
def ca_file(tmp_path: Path, tls_ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def sender_domain(dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=reject; rua=mailto:dmarc@sender.example")


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    command = [
        SWAKS,
        "--server",
        f"127.0.0.1:{port}",
        "--ehlo",
        "client.sender.example",
        "--timeout",
        "20",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@needs_swaks
@pytest.mark.usefixtures("sender_domain")
def test_swaks_delivers_over_verified_starttls_with_pipelining(smtp: ThreadedSMTP, ca_file: Path) -> None:
    done = swaks(
        smtp.inbound_port,
        "--from", SENDER,
        "--to", "admin@example.org",
        "--header", "Subject: from swaks",
        "--tls", "--tls-verify", "--tls-ca-path", str(ca_file), "--tls-sni", "mail.example.org",
        "--pipeline",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  250 2.0.0 Message accepted" in done.stdout or "250 2.0.0 Message accepted" in done.stdout
    (stored,) = stored_messages(smtp)
    assert (stored.mailbox, stored.row.subject, stored.row.dmarc_result) == ("Inbox", "from swaks", "pass")
    assert b"with ESMTPS id" in stored.content


@needs_swaks
def test_swaks_relay_attempt_is_refused(smtp: ThreadedSMTP) -> None:
    done = swaks(smtp.inbound_port, "--from", SENDER, "--to", "someone@gmail.example")
    assert done.returncode != 0
    assert "550 5.7.1 <someone@gmail.example>: relaying denied" in done.stdout
    assert stored_messages(smtp) == []


@needs_swaks
def test_swaks_submits_with_auth_after_starttls(smtp: ThreadedSMTP, ca_file: Path) -> None:
    with session_scope(smtp.database_url) as session:
        set_password(session, "bob", "swaks password")
    common = [
        "--from",
        "bob@example.org",
        "--to",
        "friend@far.example",
        "--auth",
        "PLAIN",
        "--auth-user",
        "bob",
    ]
    no_tls = swaks(smtp.submission_port, *common, "--auth-password", "swaks password")
    assert no_tls.returncode != 0, "AUTH must not be possible without TLS"
    assert "did not advertise authentication" in no_tls.stderr
    done = swaks(
        smtp.submission_port, *common, "--auth-password", "swaks password",
        "--tls", "--tls-verify", "--tls-ca-path", str(ca_file), "--tls-sni", "mail.example.org",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0" in done.stdout and "250 2.0.0 Message queued" in done.stdout
    assert [row.recipient for row in outgoing_rows(smtp)] == ["friend@far.example"]


@needs_smtp_source
@pytest.mark.usefixtures("sender_domain")
def test_smtp_source_sessions_are_all_stored(smtp: ThreadedSMTP) -> None:
    assert SMTP_SOURCE is not None
    command = [SMTP_SOURCE, "-s", "5", "-m", "60", "-l", "2048", "-f", SENDER, "-t", "admin@example.org"]
    done = subprocess.run(
        [*command, f"127.0.0.1:{smtp.inbound_port}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    stored = stored_messages(smtp)
    assert len(stored) == 60
    assert {(s.mailbox, s.row.dmarc_result, s.row.spf_result) for s in stored} == {("Inbox", "pass", "pass")}
    assert all(s.content.endswith(b"X" * 10 + b"\r\n") for s in stored)


@needs_smtp_source
@pytest.mark.usefixtures("sender_domain")
def test_smtp_source_message_over_the_size_limit_is_refused(smtp: ThreadedSMTP) -> None:
    assert SMTP_SOURCE is not None
    size = smtp.config.limits.max_message_size + 10_000
    command = [SMTP_SOURCE, "-m", "1", "-l", str(size), "-f", SENDER, "-t", "admin@example.org"]
    done = subprocess.run(
        [*command, f"127.0.0.1:{smtp.inbound_port}"], capture_output=True, text=True, timeout=60
    )
    assert "552 5.3.4" in done.stderr, done.stderr
    assert stored_messages(smtp) == []
