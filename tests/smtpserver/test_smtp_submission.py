"""The submission listener over real sockets: STARTTLS before AUTH, credentials, senders, queue rows."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from app.accounts import hash_password, password_matches, set_password, verify_password
from app.auth.dkim import verify_all
from app.auth.message import header_fields
from app.config import load_config
from app.db import session_scope
from app.dns import Resolver
from tests.support.configs import dkim_keys
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import (
    LineClient,
    ThreadedSMTP,
    client_tls_context,
    make_message,
    outgoing_rows,
    write_smtp_config,
)

PASSWORD = "correct horse battery"


@pytest.fixture
def submission(smtp: ThreadedSMTP) -> ThreadedSMTP:
    with session_scope(smtp.database_url) as session:
        set_password(session, "bob", PASSWORD)
    return smtp


def tls_client(server: ThreadedSMTP, ca: trustme.CA) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10)
    client.ehlo("laptop.example")
    client.starttls(context=client_tls_context(ca))
    client.ehlo("laptop.example")
    return client


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def test_nothing_but_starttls_before_tls(submission: ThreadedSMTP) -> None:
    client = LineClient(submission.submission_port)
    features = [line[4:] for line in client.command("EHLO laptop.example").splitlines()]
    assert "STARTTLS" in features
    assert not any("AUTH" in line for line in features), "AUTH must not be offered in clear text"
    assert client.command(f"AUTH PLAIN {plain('bob', PASSWORD)}").startswith("530 5.7.0")
    assert client.command("MAIL FROM:<bob@example.org>").startswith("530 5.7.0")
    assert client.command("NOOP").startswith("250")


def test_auth_required_before_mail_after_starttls(submission: ThreadedSMTP, tls_ca: trustme.CA) -> None:
    with tls_client(submission, tls_ca) as client:
        assert client.has_extn("auth") and set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        code, reply = client.mail("bob@example.org")
        assert (code, reply[:5]) == (530, b"5.7.0")


@pytest.mark.parametrize(
    ("login", "password"),
    [
        ("bob", "wrong password"),
        ("nobody", PASSWORD),
        ("admin", PASSWORD),
        ("dmarc-reports@example.org", PASSWORD),
    ],
    ids=["wrong-password", "unknown-user", "no-password-set", "special-address"],
)
def test_bad_credentials_get_535(
    submission: ThreadedSMTP, tls_ca: trustme.CA, login: str, password: str
) -> None:
    with tls_client(submission, tls_ca) as client:
        code, reply = client.docmd("AUTH", f"PLAIN {plain(login, password)}")
        assert (code, reply[:5]) == (535, b"5.7.8")
        assert client.mail("bob@example.org")[0] == 530


def test_malformed_auth_responses(submission: ThreadedSMTP, tls_ca: trustme.CA) -> None:
    with tls_client(submission, tls_ca) as client:
        assert client.docmd("AUTH", "PLAIN !!!notbase64")[:2] == (
            501,
            b"5.5.2 Cannot decode the base64 argument",
        )
        only_two = base64.b64encode(b"bob\0secret").decode()
        assert client.docmd("AUTH", f"PLAIN {only_two}")[0] == 501
        assert client.docmd("AUTH", "CRAM-MD5")[0] == 504
        assert client.docmd("AUTH", "LOGIN")[:2] == (334, base64.b64encode(b"Username:"))
        assert client.docmd("*")[0] == 501  # the client gives up


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("login", ["bob", "bob@example.org"])
def test_auth_then_submission_queues_one_row_per_recipient(
    submission: ThreadedSMTP, tls_ca: trustme.CA, mechanism: str, login: str
) -> None:
    message = make_message("bob@example.org", "friend@elsewhere.example")
    with tls_client(submission, tls_ca) as client:
        client.user, client.password = login, PASSWORD
        auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        assert client.auth(mechanism, auth)[0] == 235
        refused = client.sendmail(
            "bob@example.org",
            ["friend@elsewhere.example", "Other@Second.example", "admin@example.org"],
            message,
        )
        assert refused == {}
    rows = outgoing_rows(submission)
    assert [(r.recipient, r.recipient_domain) for r in rows] == [
        ("friend@elsewhere.example", "elsewhere.example"),
        ("Other@second.example", "second.example"),
        ("admin@example.org", "example.org"),
    ]
    assert {r.path for r in rows} == {rows[0].path} and rows[0].path.startswith("outgoing/")
    assert {(r.sender, r.attempts, r.size) for r in rows} == {("bob@example.org", 0, rows[0].size)}
    content = (submission.config.data_dir / rows[0].path).read_bytes()
    assert content.endswith(message) and len(content) == rows[0].size
    assert content.startswith(
        b"Received: from laptop.example ([127.0.0.1])\r\n\tby mail.example.org with ESMTPSA"
    )
    tmp = submission.config.data_dir / "tmp"
    assert [p for p in tmp.rglob("*") if p.is_file()] == [], "no file is left in tmp/"


def test_mail_from_must_be_an_address_of_the_account(submission: ThreadedSMTP, tls_ca: trustme.CA) -> None:
    with tls_client(submission, tls_ca) as client:
        client.login("bob", PASSWORD)
        for sender in ("admin@example.org", "bob@elsewhere.example", "postmaster@example.org", ""):
            code, reply = client.mail(sender)
            assert (code, reply[:5]) == (550, b"5.7.1"), sender
            client.rset()
        assert client.mail("bob@EXAMPLE.org")[0] == 250
        assert client.rcpt("anyone@anywhere.example")[0] == 250
    assert outgoing_rows(submission) == []


def test_password_hashes() -> None:
    stored = hash_password("sesame")
    assert stored.startswith("scrypt$") and "sesame" not in stored
    assert password_matches("sesame", stored)
    assert not password_matches("Sesame", stored)
    assert hash_password("sesame") != stored, "a fresh salt every time"
    for broken in ("", "scrypt$1$2", "bcrypt$x$y$z$a$b", "scrypt$16384$8$1$!!$!!"):
        assert not password_matches("sesame", broken)


def test_set_password_command(tmp_path: Path, dns: DNSTestServer) -> None:
    config = write_smtp_config(tmp_path / "cfg", dns, None)
    postwarden = [str(Path(sys.executable).with_name("postwarden")), "--config", str(config)]

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*postwarden, *args], input=stdin, capture_output=True, text=True, timeout=60)

    done = run("account", "set-password", "bob", "--password-stdin", stdin=f"{PASSWORD}\n")
    assert done.returncode == 0 and "password set for account bob" in done.stdout
    with session_scope(load_config(config).resolved_database_url) as session:
        assert verify_password(session, "bob", PASSWORD)
        assert not verify_password(session, "bob", PASSWORD + "x")
    missing = run("account", "set-password", "carol", "--password-stdin", stdin="whatever1\n")
    assert missing.returncode != 0 and "no account 'carol'" in missing.stderr
    short = run("account", "set-password", "bob", "--password-stdin", stdin="short\n")
    assert short.returncode != 0 and "at least 8 characters" in short.stderr


@pytest.fixture
def signing_submission(
    tmp_path: Path, dns: DNSTestServer, tls_files: tuple[Path, Path]
) -> Iterator[ThreadedSMTP]:
    """Submission with ed25519 and rsa DKIM selectors for example.org, their keys published in DNS."""
    path = write_smtp_config(tmp_path / "config", dns, tls_files)
    with path.open("a") as config:
        config.write(dkim_keys(path.parent, dns))
    server = ThreadedSMTP(load_config(path)).start()
    with session_scope(server.database_url) as session:
        set_password(session, "bob", PASSWORD)
    yield server
    server.stop()


def submit(server: ThreadedSMTP, ca: trustme.CA, message: bytes) -> None:
    with tls_client(server, ca) as client:
        client.login("bob", PASSWORD)
        assert client.sendmail("bob@example.org", ["friend@elsewhere.example"], message) == {}


async def test_submitted_mail_is_signed_with_every_selector_of_the_from_domain(
    signing_submission: ThreadedSMTP, tls_ca: trustme.CA, resolver: Resolver
) -> None:
    await asyncio.to_thread(
        submit, signing_submission, tls_ca, make_message("bob@example.org", "f@x.example")
    )
    (row,) = outgoing_rows(signing_submission)
    queued = (signing_submission.config.data_dir / row.path).read_bytes()
    results = await verify_all(resolver, queued)
    assert sorted((r.status, r.domain, r.selector) for r in results) == [
        ("pass", "example.org", "ed1"),
        ("pass", "example.org", "rsa1"),
    ]


def test_missing_date_and_message_id_are_added(signing_submission: ThreadedSMTP, tls_ca: trustme.CA) -> None:
    bare = b"From: <bob@example.org>\r\nTo: <f@x.example>\r\nSubject: bare\r\n\r\nHello.\r\n"
    submit(signing_submission, tls_ca, bare)
    (row,) = outgoing_rows(signing_submission)
    names = [
        name.lower()
        for name, _ in header_fields((signing_submission.config.data_dir / row.path).read_bytes())
    ]
    assert names.count("date") == 1 and names.count("message-id") == 1


@pytest.mark.parametrize(
    "from_header",
    ["From: <admin@example.org>\r\n", "From: <bob@example.org>, <info@example.org>\r\n", ""],
    ids=["someone-else", "two-authors", "missing"],
)
def test_from_header_must_be_one_of_the_accounts_addresses(
    signing_submission: ThreadedSMTP, tls_ca: trustme.CA, from_header: str
) -> None:
    message = f"{from_header}To: <f@x.example>\r\nSubject: spoof\r\n\r\nHello.\r\n".encode()
    with tls_client(signing_submission, tls_ca) as client:
        client.login("bob", PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("bob@example.org", ["friend@elsewhere.example"], message)
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (550, b"5.7.1")
    assert outgoing_rows(signing_submission) == []


MALFORMED_HEADERS = {
    "no-colon": (b"this line has no colon\r\n", 3),
    "non-ascii-name": (b"X-\xc3\xa9t\xc3\xa9: value\r\n", 3),
    "space-in-name": (b"X Mailer: value\r\n", 3),
    "control-in-name": (b"X-\x01: value\r\n", 3),
}


def refused_submission(server: ThreadedSMTP, ca: trustme.CA, message: bytes) -> smtplib.SMTPDataError:
    with tls_client(server, ca) as client:
        client.login("bob", PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("bob@example.org", ["friend@elsewhere.example"], message)
    return refused.value


@pytest.mark.parametrize("signing", [True, False], ids=["signing", "not-signing"])
@pytest.mark.parametrize(("line", "number"), MALFORMED_HEADERS.values(), ids=MALFORMED_HEADERS.keys())
def test_a_malformed_header_line_is_a_permanent_error_naming_it(
    request: pytest.FixtureRequest, tls_ca: trustme.CA, signing: bool, line: bytes, number: int
) -> None:
    """Issue 9: such a message got 451 and clients retried it for days; it can never be signed."""
    server = request.getfixturevalue("signing_submission" if signing else "submission")
    message = b"From: <bob@example.org>\r\nTo: <f@x.example>\r\n" + line + b"Subject: s\r\n\r\nHello.\r\n"
    refused = refused_submission(server, tls_ca, message)
    assert (refused.smtp_code, refused.smtp_error[:5]) == (554, b"5.6.0")
    reply = refused.smtp_error.decode("ascii")
    assert f"header line {number} is not a header field" in reply
    assert line.split(b":")[0].decode("latin-1") not in reply, "the message's own text is not echoed"
    assert outgoing_rows(server) == []


def test_a_first_header_line_that_continues_nothing_is_refused(
    signing_submission: ThreadedSMTP, tls_ca: trustme.CA
) -> None:
    message = b" folded\r\nFrom: <bob@example.org>\r\nTo: <f@x.example>\r\n\r\nHello.\r\n"
    refused = refused_submission(signing_submission, tls_ca, message)
    assert (refused.smtp_code, refused.smtp_error[:5]) == (554, b"5.6.0")
    assert b"starts with white space" in refused.smtp_error
    assert outgoing_rows(signing_submission) == []


def test_unusual_but_well_formed_headers_are_still_signed(
    signing_submission: ThreadedSMTP, tls_ca: trustme.CA
) -> None:
    """Folded fields and a long one are fine (the check refuses only what is not a field)."""
    message = (
        b"From: <bob@example.org>\r\nTo: <f@x.example>\r\nSubject: a\r\n\tfolded subject\r\n"
        b"X-Long: " + b"a" * 1900 + b"\r\n\r\nHello.\r\n"
    )
    submit(signing_submission, tls_ca, message)
    assert len(outgoing_rows(signing_submission)) == 1
