"""Issue 8 items 1-3 over real SMTP sockets: control characters in EHLO/HELO, MAIL FROM, RCPT TO, From
and Subject never come back in a reply, reach a log line or a database column raw, or get queued; the
CLI escapes what it prints; a second From in obsolete syntax (`From : ...`) is not slipped past the
submission check. (The report side of item 1 is in test_hostile_reports.py.)
"""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner, Result

from app.accounts import set_password
from app.auth.message import author, header_fields
from app.cli import main
from app.config import load_config
from app.db import session_scope
from app.models import OutgoingMessage
from app.store.files import MailboxCopy, MessageStore
from tests.support.dnsserver import DNSTestServer
from tests.support.hostile import CLEAN_HEADER_LINE, COMMAND_CONTROLS, CONTROLS, UNSAFE
from tests.support.logcapture import CidLog, captured
from tests.support.smtpfixtures import (
    LineClient,
    ThreadedSMTP,
    client_tls_context,
    outgoing_rows,
    publish_sender_domain,
    stored_messages,
    write_smtp_config,
)

PASSWORD = "correct horse battery"
MESSAGE_COLUMNS = ("ehlo", "mail_from", "rcpt_to", "msg_from", "msg_from_domain", "message_id", "subject")


@pytest.fixture
def hostile(tmp_path: Path, dns: DNSTestServer, tls_files: tuple[Path, Path]) -> Iterator[ThreadedSMTP]:
    """Both listeners, an error budget the sweeps do not exhaust, bob's password, a sender domain."""
    path = write_smtp_config(tmp_path / "hostile", dns, tls_files, max_errors=500)
    server = ThreadedSMTP(load_config(path)).start()
    with session_scope(server.database_url) as session:
        set_password(session, "bob", PASSWORD)
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=none")
    yield server
    server.stop()


@pytest.fixture
def smtp_log() -> Iterator[CidLog]:
    with captured("app") as log:
        yield log


def assert_clean_log(log: CidLog) -> None:
    assert log.lines
    for _, _, line in log.lines:
        assert not UNSAFE.search(line), f"raw control character in a log line: {line!r}"


def greeted(port: int) -> LineClient:
    client = LineClient(port)
    assert client.command("EHLO client.sender.example").startswith("250")
    return client


def tls_client(server: ThreadedSMTP, ca: trustme.CA) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10)
    client.starttls(context=client_tls_context(ca))
    client.ehlo("laptop.example")
    client.login("bob", PASSWORD)
    return client


def raw_command(client: smtplib.SMTP, line: str) -> tuple[int, str]:
    """One command sent as UTF-8 octets, whatever they are (smtplib's own commands are ASCII only)."""
    client.send(line.encode() + b"\r\n")
    code, text = client.getreply()
    return code, text.decode("utf-8", "replace")


# Item 2: EHLO and HELO.


@pytest.mark.parametrize("listener", ["inbound", "submission"])
def test_ehlo_and_helo_with_control_characters_are_refused_and_never_echoed(
    hostile: ThreadedSMTP, smtp_log: CidLog, listener: str
) -> None:
    client = LineClient(hostile.ports[listener])
    # Submission takes no HELO before STARTTLS (530): EHLO is swept there.
    verbs = ("EHLO", "HELO") if listener == "inbound" else ("EHLO",)
    for c in COMMAND_CONTROLS.values():
        for verb in verbs:
            for argument in (f"evil{c}X-Injected: yes\x1b[31m", f"client{c}.example"):
                reply = client.command(f"{verb} {argument}")
                assert reply.startswith(f"501 Syntax: {verb} domain-name"), (argument, reply)
                assert "evil" not in reply and "client" not in reply and not UNSAFE.search(reply)
    if listener == "inbound":
        assert client.command("MAIL FROM:<a@sender.example>").startswith("503"), "no refused name was kept"
        for good in ("[127.0.0.1]", "[IPv6:::1]", "client_pc", "client.sender.example."):
            assert client.command(f"HELO {good}") == "250 mail.example.org"
    assert client.command("EHLO client.sender.example").startswith("250-mail.example.org Hello client.sender")
    refused = smtp_log.messages(f"{listener} EHLO refused ip=127.0.0.1 argument=")
    assert len(refused) == len(COMMAND_CONTROLS) * 2 and "\\x1b[31m" in refused[0]
    assert_clean_log(smtp_log)


def test_client_text_echoed_by_aiosmtpd_comes_back_escaped(hostile: ThreadedSMTP) -> None:
    """aiosmtpd names an unknown command and VRFY's argument in its reply: escaped on the way out."""
    client = greeted(hostile.inbound_port)
    for c in COMMAND_CONTROLS.values():
        reply = client.command(f"VRFY a{c}[31m")
        assert reply.startswith("502") and not UNSAFE.search(reply), reply
    # aiosmtpd closes after five unknown commands: three are enough to show it.
    for c in ("\x1b", "\x7f", "\x85"):
        reply = client.command(f"X{c}[31mEVIL")
        assert reply.startswith("500") and not UNSAFE.search(reply), reply
    assert "\\x1b[31M" in client.command("Y\x1b[31mEVIL"), "the escape is shown, not sent"


def test_a_refused_ehlo_keeps_the_transaction_in_progress(hostile: ThreadedSMTP) -> None:
    """RFC 5321 4.1.4: after a refused EHLO or HELO the session is as it was (aiosmtpd resets it first)."""
    client = greeted(hostile.inbound_port)
    assert client.command("MAIL FROM:<eve@sender.example>").startswith("250")
    assert client.command("EHLO bad\x1bname").startswith("501")
    assert client.command("RCPT TO:<admin@example.org>").startswith("250"), "MAIL FROM was kept"
    assert client.command("HELO bad\x1bname").startswith("501")
    assert client.command("RCPT TO:<admin@example.org>").startswith("250"), "and after a refused HELO"
    assert client.command("EHLO client.sender.example").startswith("250")
    assert client.command("RCPT TO:<admin@example.org>").startswith("503"), "a good EHLO resets it"


# Item 1: MAIL FROM and RCPT TO, and what is stored and logged for a transaction.


def refused(reply: str, code: str, c: str) -> bool:
    """553 from our address check, or from the path reader, which refuses a path with a character that
    is not printable before the email package's parser could read TAB, CR, NEL or U+2028 inside the
    brackets as folding white space (`<eve\tx@...>` would become `"eve x"@...`)."""
    return reply.startswith((f"553 {code}", "553 5.1.3", "501 5.5.4")) and not UNSAFE.search(reply)


def test_inbound_mail_from_and_rcpt_to_with_control_characters_are_refused(
    hostile: ThreadedSMTP, smtp_log: CidLog
) -> None:
    client = greeted(hostile.inbound_port)
    for c in COMMAND_CONTROLS.values():
        smtputf8 = "" if c.isascii() else " SMTPUTF8"  # so that a non-ASCII one gets as far as the check
        reply = client.command(f"MAIL FROM:<eve{c}x@sender.example>{smtputf8}")
        assert refused(reply, "5.1.7", c), reply
        assert client.command("RSET").startswith("250")
        assert client.command("MAIL FROM:<eve@sender.example> SMTPUTF8").startswith("250")
        assert refused(client.command(f"RCPT TO:<admin{c}x@example.org>"), "5.1.3", c)
        assert refused(client.command(f"RCPT TO:<admin@exam{c}ple.org>"), "5.1.3", c)
        assert client.command("RSET").startswith("250")
    assert send(client, message()).startswith("250")
    (stored,) = stored_messages(hostile)
    assert (stored.row.ehlo, stored.row.mail_from, stored.row.rcpt_to) == (
        "client.sender.example",
        "eve@sender.example",
        "admin@example.org",
    )
    assert_clean_log(smtp_log)


def test_submission_addresses_with_control_characters_are_refused_and_never_queued(
    hostile: ThreadedSMTP, tls_ca: trustme.CA, smtp_log: CidLog
) -> None:
    with tls_client(hostile, tls_ca) as client:
        for c in COMMAND_CONTROLS.values():
            code, reply = raw_command(client, f"MAIL FROM:<bob{c}@example.org> SMTPUTF8")
            assert refused(f"{code} {reply}", "5.1.7", c), reply
            assert raw_command(client, "RSET")[0] == 250
            assert raw_command(client, "MAIL FROM:<bob@example.org> SMTPUTF8")[0] == 250
            # Any recipient is accepted on submission; these go into RCPT TO of our client.
            code, reply = raw_command(client, f"RCPT TO:<friend{c}x@elsewhere.example>")
            assert refused(f"{code} {reply}", "5.1.3", c), reply
            assert raw_command(client, "RSET")[0] == 250
        data = message("From: <bob@example.org>")
        assert client.sendmail("bob@example.org", ["friend@elsewhere.example"], data) == {}
    assert [row.recipient for row in outgoing_rows(hostile)] == ["friend@elsewhere.example"]
    assert_clean_log(smtp_log)


# Items 1 and 2: From, Subject and Message-ID with control characters in inbound mail.


def message(author_field: str = "From: <eve@sender.example>", **fields: str) -> bytes:
    headers = {
        "From": author_field,
        "To": "To: <admin@example.org>",
        "Subject": "Subject: clean",
        "Message-ID": "Message-ID: <clean@sender.example>",
        "Date": "Date: Tue, 24 Nov 2026 10:00:00 +0000",
        **fields,
    }
    return ("\r\n".join(headers.values()) + "\r\n\r\nHello.\r\n").encode()


def hostile_messages(c: str) -> dict[str, bytes]:
    encoded = base64.b64encode(f"hi{c}[31m red".encode()).decode()
    return {
        "subject": message(Subject=f"Subject: hi{c}[31m red"),
        "encoded-subject": message(Subject=f"Subject: =?utf-8?b?{encoded}?="),
        "from-name": message(f'From: "Eve{c}[31m" <eve@sender.example>'),
        "from-address": message(f"From: <eve{c}x@sender.example>"),
        "message-id": message(**{"Message-ID": f"Message-ID: <id{c}x@sender.example>"}),
    }


def send(client: LineClient, data: bytes) -> str:
    assert client.command("MAIL FROM:<eve@sender.example> SMTPUTF8").startswith("250")
    assert client.command("RCPT TO:<admin@example.org>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send(data + b".\r\n")
    return client.reply()


@pytest.mark.parametrize("name", CONTROLS)
def test_inbound_headers_with_control_characters_are_stored_and_logged_escaped(
    hostile: ThreadedSMTP, smtp_log: CidLog, name: str
) -> None:
    c = CONTROLS[name]
    client = greeted(hostile.inbound_port)
    sent = hostile_messages(c)
    for case, data in sent.items():
        reply = send(client, data)
        if c in "\r\n\0" and case != "encoded-subject":  # bare CR/LF and NUL: the data is refused
            assert reply.startswith(("500 5.5.2", "554 5.6.0")), (case, reply)
        else:
            assert reply.startswith("250 2.0.0"), (case, reply)
    stored = stored_messages(hostile)
    assert stored
    for one in stored:
        for column in MESSAGE_COLUMNS:
            value = getattr(one.row, column)
            assert value is None or not UNSAFE.search(value), (column, value)
        added = one.content[: one.content.index(b"From: ")]  # Authentication-Results and Received
        assert all(CLEAN_HEADER_LINE.fullmatch(line) for line in added.split(b"\r\n")), added
    subjects = {one.row.subject for one in stored}
    assert any(s and "[31m red" in s and s.startswith("hi\\") for s in subjects), "kept, escaped"
    assert all(one.row.msg_from in (None, "eve@sender.example") for one in stored)
    assert_clean_log(smtp_log)


# Item 2: the CLI escapes what it prints, whatever the database and the files hold.


def cli(config_file: Path, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--config", str(config_file), *args])
    assert result.exit_code == 0, result.output
    return result


async def test_cli_prints_control_characters_escaped(config_file: Path) -> None:
    """Rows stored before this check (or by any other way) still hold raw text: the CLI escapes it."""
    config = load_config(config_file)
    content = b"From: <eve@sender.example>\r\nSubject: \x1b[31mred\r\n\r\nline\x1b]0;title\x07\tcell\rX\r\n"
    store = MessageStore(config.data_dir, config.resolved_database_url)
    try:
        columns = {"subject": "\x1b[2J\x1b[31mred\u2028fake line", "msg_from": "eve\x1b[0m@sender.example"}
        (file_id,) = await store.store_copies(content, [MailboxCopy("admin", "Inbox", columns)])
    finally:
        await store.close()
    (config.data_dir / "outgoing").mkdir(exist_ok=True)
    (config.data_dir / "outgoing" / "q1").write_bytes(content)
    with session_scope(config.resolved_database_url) as session:
        row = OutgoingMessage(
            sender="bob\x1b[31m@example.org",
            recipient="friend\r\nRSET@elsewhere.example",
            recipient_domain="elsewhere.example",
            path="outgoing/q1",
            size=len(content),
            last_error="550 \x1b[5mno\x85",
        )
        session.add(row)
        session.flush()
        queue_id = str(row.id)

    outputs = [
        cli(config_file, "message", "list", "admin", "Inbox").output,
        cli(config_file, "queue", "list").output,
        cli(config_file, "queue", "show", queue_id).output,
    ]
    shown = cli(config_file, "message", "show", file_id).output
    for output in [*outputs, shown]:
        assert "\x1b" not in output and "\x85" not in output and "\u2028" not in output, output
        assert "\\x1b[31m" in output
    assert "\\x1b[2J\\x1b[31mred\\u2028fake line" in outputs[0]
    assert "\\r\\nRSET" in outputs[2] and "\\x85" in outputs[2]
    # Message content: line ends and tabs are the layout and stay; a lone CR and BEL are escaped.
    assert "line\\x1b]0;title\\x07\tcell\\rX\n" in shown
    for json_output in (
        cli(config_file, "message", "list", "admin", "Inbox", "--json").output,
        cli(config_file, "queue", "show", queue_id, "--json").output,
    ):
        assert "\x1b" not in json_output and "\\u001b" in json_output


# Item 3: a second From in obsolete syntax on submission.


def test_header_field_names_are_read_with_obsolete_white_space_before_the_colon() -> None:
    two = b"From : Bob <bob@bank.example>\r\nFrom: <bob@example.org>\r\nSubject\t: hi\r\n\r\nFrom: body\r\n"
    assert header_fields(two) == [
        ("From", "Bob <bob@bank.example>"),
        ("From", "<bob@example.org>"),
        ("Subject", "hi"),
    ]
    # RFC 9989: several From fields, so no author domain (DMARC permerror for inbound mail).
    assert (author(two).domain, author(two).problem) == ("", "2 From header fields")


@pytest.mark.parametrize(
    ("head", "reply"),
    [
        ("From : Bob <bob@bank.example>\r\nFrom: <bob@example.org>", "550 5.7.1"),
        ("From: <bob@example.org>\r\nFrom\t: Admin <admin@example.org>", "550 5.7.1"),
        ("From: <bob@example.org>\r\nFROM  : <bob@example.org>", "550 5.7.1"),
        ("From : <bob@example.org>", "554 5.6.0"),
        ("From: <bob@example.org>\r\nSubject : hello", "554 5.6.0"),
    ],
    ids=["obsolete-first", "obsolete-second", "same-address-twice", "obsolete-only", "obsolete-subject"],
)
def test_submission_refuses_a_from_in_obsolete_syntax(
    hostile: ThreadedSMTP, tls_ca: trustme.CA, head: str, reply: str
) -> None:
    data = f"{head}\r\nTo: <f@x.example>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nHi.\r\n".encode()
    with tls_client(hostile, tls_ca) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("bob@example.org", ["f@x.example"], data)
    text = refused.value.smtp_error.decode()
    assert f"{refused.value.smtp_code} {text}".startswith(reply), text
    assert ("2 From header fields" in text) == reply.startswith("550")
    assert outgoing_rows(hostile) == []


def test_submission_still_takes_a_plain_from(hostile: ThreadedSMTP, tls_ca: trustme.CA) -> None:
    with tls_client(hostile, tls_ca) as client:
        assert (
            client.sendmail("bob@example.org", ["f@x.example"], message("From: Bob <bob@example.org>")) == {}
        )
    assert len(outgoing_rows(hostile)) == 1
