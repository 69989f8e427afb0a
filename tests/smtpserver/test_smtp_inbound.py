"""The inbound listener over real sockets: protocol, limits, recipients, DMARC verdicts and storage."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import SMTP

from app.auth.dkim import sign
from app.auth.dkimkeys import dns_txt_value, generate_private_key_pem
from app.config import DKIMSelector, Limits
from app.smtpserver.data import MessageData, read_message_data
from app.smtpserver.handler import BaseHandler
from app.smtpserver.protocol import PostwardenSMTP
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import (
    LIMITS,
    LineClient,
    ThreadedSMTP,
    client_tls_context,
    mailbox_id,
    make_message,
    publish_sender_domain,
    stored_messages,
)

SENDER = "alice@sender.example"
RUA_POLICY = "v=DMARC1; p=reject; rua=mailto:dmarc@sender.example"


def open_session(server: ThreadedSMTP) -> LineClient:
    client = LineClient(server.inbound_port)
    assert client.command("EHLO client.sender.example").startswith("250")
    return client


def send_raw(client: LineClient, mail_from: str, rcpts: list[str], data: bytes) -> str:
    """A whole transaction; `data` is sent as given (dot-stuffed by the caller), then the end marker."""
    assert client.command(f"MAIL FROM:<{mail_from}>").startswith("250")
    for rcpt in rcpts:
        assert client.command(f"RCPT TO:<{rcpt}>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
    return client.reply()


# Session, extensions and TLS.


def test_greeting_and_ehlo_extensions(smtp: ThreadedSMTP) -> None:
    client = LineClient(smtp.inbound_port)
    assert client.greeting.startswith("220 mail.example.org ESMTP")
    reply = client.command("EHLO client.example")
    lines = [line[4:] for line in reply.splitlines()]
    assert lines[0].startswith("mail.example.org")
    assert f"SIZE {LIMITS['max_message_size']}" in lines
    for extension in ("8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"):
        assert extension in lines
    assert not any(line.startswith("AUTH") for line in lines), "inbound must not offer AUTH"
    assert client.command("AUTH PLAIN AGFkbWluAHNlY3JldA==").startswith("502 5.5.1")
    assert client.command("NOOP") == "250 2.0.0 OK"
    assert client.command("QUIT").startswith("221 2.0.0")


def test_starttls_with_the_configured_certificate_then_mail(
    smtp: ThreadedSMTP, dns: DNSTestServer, tls_ca: trustme.CA
) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("client.sender.example")
        client.starttls(context=client_tls_context(tls_ca))  # verified against the test CA
        code, features = client.ehlo("client.sender.example")
        assert code == 250 and b"STARTTLS" not in features
        client.sendmail(SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org"))
    (stored,) = stored_messages(smtp)
    received = stored.content.split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPS id" in received
    assert b"using TLSv1.3" in received or b"using TLSv1.2" in received


# Recipients.


def test_recipients_only_for_configured_addresses(smtp: ThreadedSMTP) -> None:
    client = open_session(smtp)
    assert client.command("MAIL FROM:<someone@elsewhere.example>") == "250 2.1.0 Sender OK"
    assert client.command("RCPT TO:<admin@example.org>") == "250 2.1.5 Recipient OK"
    assert client.command("RCPT TO:<ADMIN@Example.ORG>") == "250 2.1.5 Recipient OK"
    assert client.command("RCPT TO:<postmaster@example.org>") == "250 2.1.5 Recipient OK"
    assert client.command("RCPT TO:<Postmaster>") == "250 2.1.5 Recipient OK"
    assert client.command("RCPT TO:<nobody@example.org>").startswith("550 5.1.1 <nobody@example.org>")
    reply = client.command("RCPT TO:<victim@gmail.example>")
    assert reply.startswith("550 5.7.1") and "relaying denied" in reply


def test_too_many_recipients_gets_452_and_the_accepted_ones_get_the_message(
    smtp: ThreadedSMTP, dns: DNSTestServer
) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    client = open_session(smtp)
    assert client.command(f"MAIL FROM:<{SENDER}>").startswith("250")
    addresses = ["admin@example.org", "info@example.org", "bob@example.org", "postmaster@example.org"]
    addresses += ["dmarc-reports@example.org", "tlsrpt@mail.example.org"]
    replies = [client.command(f"RCPT TO:<{a}>") for a in addresses]
    assert replies[: LIMITS["max_recipients"]] == ["250 2.1.5 Recipient OK"] * LIMITS["max_recipients"]
    assert replies[LIMITS["max_recipients"] :] == ["452 4.5.3 Too many recipients"]
    assert client.command("DATA").startswith("354")
    client.send(make_message(SENDER, "admin@example.org") + b"\r\n.\r\n")
    assert client.reply().startswith("250 2.0.0")
    # admin and info are one account's Inbox: one copy; postmaster and DMARC reports are other mailboxes.
    placed = sorted((s.row.rcpt_to, s.mailbox) for s in stored_messages(smtp))
    assert placed == [
        ("admin@example.org", "Inbox"),
        ("bob@example.org", "Inbox"),
        ("dmarc-reports@example.org", "DMARC"),
        ("postmaster@example.org", "Postmaster"),
    ]


# DMARC verdicts, storage and evaluations.


def test_dmarc_pass_goes_to_inbox_with_trace_and_results_headers(
    smtp: ThreadedSMTP, dns: DNSTestServer
) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    message = make_message(SENDER, "admin@example.org", subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
    with smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client:
        client.ehlo("client.sender.example")
        assert client.sendmail(SENDER, ["admin@example.org"], message) == {}
    (stored,) = stored_messages(smtp)
    assert stored.mailbox == "Inbox"
    assert stored.content.endswith(message), "the message must be stored byte for byte after our headers"
    added = stored.content[: -len(message)].decode()
    assert added.startswith("Authentication-Results: mail.example.org;")
    assert "dmarc=pass" in added
    assert (
        "\r\nReceived: from client.sender.example ([127.0.0.1])\r\n\tby mail.example.org with ESMTP id"
        in added
    )
    assert "for <admin@example.org>;" in added
    row = stored.row
    assert (row.msg_from, row.msg_from_domain, row.mail_from) == (SENDER, "sender.example", SENDER)
    assert (row.spf_result, row.dmarc_result, row.subject) == ("pass", "pass", "Grüße")
    assert row.spf_mailfrom_validated and row.msg_from_validated and not row.seen and not row.is_reject
    assert row.mailbox_orig_id == row.mailbox_id and row.mailbox_destined_id is None
    (evaluation,) = smtp.evaluations
    assert evaluation["policy_domain"] == "sender.example"
    assert evaluation["rua"] == ["mailto:dmarc@sender.example"]
    assert (evaluation["disposition"], evaluation["optional"]) == ("none", False)
    assert (evaluation["envelope_to"], evaluation["header_from"]) == ("example.org", "sender.example")


def test_dmarc_reject_is_550_and_kept_once_in_rejects(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    # SPF of the MAIL FROM domain does not cover us, and nothing aligns with the From domain.
    publish_sender_domain(dns, "sender.example", RUA_POLICY, spf="v=spf1 -all")
    message = make_message(SENDER, "bob@example.org", message_id="<forged-1@sender.example>")
    for _attempt in range(2):  # a retry of the same message is not stored twice (SPEC R3.1)
        client = open_session(smtp)
        reply = send_raw(client, SENDER, ["bob@example.org"], message)
        assert reply.startswith("550 5.7.1"), reply
        assert "DMARC" in reply
        client.close()
    (stored,) = stored_messages(smtp)
    assert stored.mailbox == "Rejects"
    row = stored.row
    assert row.seen and row.is_reject and row.reason == "dmarc-policy" and row.dmarc_disposition == "reject"
    assert row.mailbox_orig_id == mailbox_id(smtp, "bob", "Rejects")
    assert row.mailbox_destined_id == mailbox_id(smtp, "bob", "Inbox")
    # We never accepted mail from sender.example, so its rejects are only optional report material.
    assert [(e["disposition"], e["optional"]) for e in smtp.evaluations] == [("reject", True)] * 2


def test_dmarc_reject_from_a_domain_we_accepted_mail_from_is_reported(
    smtp: ThreadedSMTP, dns: DNSTestServer
) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    client = open_session(smtp)
    assert send_raw(
        client, SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org")
    ).startswith("250")
    dns.clear()
    publish_sender_domain(dns, "sender.example", RUA_POLICY, spf="v=spf1 -all")
    smtp.service.resolver._resolver.cache.flush()  # type: ignore[union-attr]  # the SPF record changed
    assert send_raw(
        client, SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org")
    ).startswith("550")
    assert [(e["disposition"], e["optional"]) for e in smtp.evaluations] == [
        ("none", False),
        ("reject", False),
    ]


def test_dmarc_quarantine_goes_to_junk(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=quarantine", spf="v=spf1 -all")
    client = open_session(smtp)
    reply = send_raw(client, SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org"))
    assert reply.startswith("250 2.0.0")
    (stored,) = stored_messages(smtp)
    assert (stored.mailbox, stored.row.dmarc_result, stored.row.is_reject) == ("Junk", "fail", False)
    assert smtp.evaluations == [], "no rua: no evaluation is stored (SPEC R2.1)"


def test_dmarc_reject_in_testing_mode_goes_to_junk(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    """t=y asks receivers to apply one level less than published (RFC 9989): reject becomes quarantine."""
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=reject; t=y", spf="v=spf1 -all")
    client = open_session(smtp)
    reply = send_raw(client, SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org"))
    assert reply.startswith("250 2.0.0")
    (stored,) = stored_messages(smtp)
    assert (stored.mailbox, stored.row.dmarc_disposition, stored.row.is_reject) == (
        "Junk",
        "quarantine",
        False,
    )


def test_dkim_signed_mail_records_the_verified_domain(
    smtp: ThreadedSMTP, dns: DNSTestServer, tmp_path: Path
) -> None:
    # Only DKIM can align here: the MAIL FROM is another domain, whose SPF does not cover us.
    dns.txt("bounces.example", "v=spf1 -all")
    dns.txt("_dmarc.sender.example", "v=DMARC1; p=reject")
    key = generate_private_key_pem("ed25519")
    (tmp_path / "dkim.pem").write_bytes(key)
    dns.txt("sel._domainkey.sender.example", dns_txt_value(key, "ed25519"))
    message = make_message(SENDER, "admin@example.org")
    selector = DKIMSelector(selector="sel", algorithm="ed25519", private_key_file=tmp_path / "dkim.pem")
    signed = sign(message, "sender.example", [selector]) + message
    client = open_session(smtp)
    assert send_raw(client, "x@bounces.example", ["admin@example.org"], signed).startswith("250 2.0.0")
    (stored,) = stored_messages(smtp)
    row = stored.row
    assert (stored.mailbox, row.dkim_result, row.dkim_domains, row.spf_result) == (
        "Inbox",
        "pass",
        "sender.example",
        "fail",
    )
    assert (row.dmarc_result, row.msg_from_validated) == ("pass", True)
    assert b"dkim=pass" in stored.content.split(b"\r\n\r\n")[0]


def test_mail_to_a_reporting_address_gives_an_optional_evaluation(
    smtp: ThreadedSMTP, dns: DNSTestServer
) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    client = open_session(smtp)
    message = make_message(SENDER, "dmarc-reports@example.org")
    assert send_raw(client, SENDER, ["dmarc-reports@example.org"], message).startswith("250")
    assert [s.mailbox for s in stored_messages(smtp)] == ["DMARC"]
    assert [e["optional"] for e in smtp.evaluations] == [True]


def test_null_sender_and_no_dmarc_record(smtp: ThreadedSMTP) -> None:
    client = open_session(smtp)
    assert client.command("MAIL FROM:<>") == "250 2.1.0 Sender OK"
    assert client.command("RCPT TO:<admin@example.org>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send(make_message("mailer-daemon@nowhere.example", "admin@example.org") + b"\r\n.\r\n")
    assert client.reply().startswith("250 2.0.0")
    (stored,) = stored_messages(smtp)
    assert (stored.mailbox, stored.row.mail_from, stored.row.dmarc_result) == ("Inbox", "", "none")
    assert smtp.evaluations == []


# Protocol: pipelining, sizes, bad input.


def test_pipelined_transaction_gets_every_reply_in_order(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    client = open_session(smtp)
    client.send(
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<admin@example.org>\r\nRCPT TO:<nobody@example.org>\r\n"
        "RCPT TO:<bob@example.org>\r\nDATA\r\n"
    )
    replies = [client.reply() for _ in range(5)]
    assert [r[:9] for r in replies] == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354 End d"]
    client.send(make_message(SENDER, "admin@example.org") + b"\r\n.\r\nQUIT\r\n")
    assert client.reply().startswith("250 2.0.0")
    assert client.reply().startswith("221")
    assert sorted(s.row.rcpt_to for s in stored_messages(smtp)) == ["admin@example.org", "bob@example.org"]


def test_declared_size_over_the_limit_is_refused_at_mail_from(smtp: ThreadedSMTP) -> None:
    client = open_session(smtp)
    reply = client.command(f"MAIL FROM:<{SENDER}> SIZE={LIMITS['max_message_size'] + 1}")
    assert reply.startswith("552 5.3.4") and str(LIMITS["max_message_size"]) in reply
    assert client.command(f"MAIL FROM:<{SENDER}> SIZE=1000").startswith("250 2.1.0")


def test_data_over_the_size_limit_is_refused_and_not_stored(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    client = open_session(smtp)
    line = b"x" * 998 + b"\r\n"
    big = make_message(SENDER, "admin@example.org", body="") + line * (LIMITS["max_message_size"] // 1000 + 5)
    reply = send_raw(client, SENDER, ["admin@example.org"], big.rstrip(b"\r\n"))
    assert reply.startswith("552 5.3.4 Message too big"), reply
    assert stored_messages(smtp) == []
    # The session goes on, and a message within the limit is accepted.
    assert send_raw(
        client, SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org")
    ).startswith("250")


def test_malformed_and_out_of_sequence_commands(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    client = LineClient(smtp_factory(max_errors=50).inbound_port)
    assert client.command("MAIL FROM:<a@b.example>").startswith("503 5.5.1")
    assert client.command("EHLO").startswith("501")
    assert client.command("EHLO client.example").startswith("250")
    assert client.command("RCPT TO:<admin@example.org>").startswith("503 5.5.1")
    assert client.command("DATA").startswith("503 5.5.1")
    assert client.command("MAIL FROM:<a@b.example> FOO=BAR").startswith("555 5.5.4")
    assert client.command("MAIL FROM:<a\x01b@b.example>").startswith("553 5.1.7")
    assert client.command("MAIL TO:<a@b.example>").startswith("501 5.5.4")
    assert client.command("NOSUCHCOMMAND").startswith("500 5.5.2")
    assert client.command("RSET") == "250 2.0.0 OK"


def test_nul_in_a_command_address_is_refused(smtp: ThreadedSMTP) -> None:
    client = open_session(smtp)
    assert client.command("MAIL FROM:<a@b.example>").startswith("250")
    assert client.command(b"RCPT TO:<admin\x00x@example.org>").startswith("553 5.1.3")


def test_overlong_command_line_is_refused(smtp: ThreadedSMTP) -> None:
    client = open_session(smtp)
    assert client.command("NOOP " + "x" * (LIMITS["max_line_length"] + 10)).startswith("500 5.5.2")
    assert client.command("NOOP") == "250 2.0.0 OK"


def test_overlong_data_line_is_refused(smtp: ThreadedSMTP) -> None:
    client = open_session(smtp)
    data = make_message(SENDER, "admin@example.org", body="y" * (LIMITS["max_line_length"] + 1) + "\r\n")
    reply = send_raw(client, SENDER, ["admin@example.org"], data)
    assert reply.startswith("500 5.5.2 Line too long") and str(LIMITS["max_line_length"]) in reply
    assert stored_messages(smtp) == []


@pytest.mark.parametrize("body", [b"one\ntwo\r\n", b"one\rtwo\r\n"], ids=["bare-lf", "bare-cr"])
def test_bare_line_ends_in_data_are_refused(smtp: ThreadedSMTP, body: bytes) -> None:
    client = open_session(smtp)
    reply = send_raw(client, SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org") + body)
    assert reply.startswith("500 5.5.2") and "bare LF or CR" in reply
    assert stored_messages(smtp) == []


def test_lf_dot_lf_does_not_end_data_so_nothing_is_smuggled(smtp: ThreadedSMTP) -> None:
    """Only CRLF.CRLF ends the data (RFC 5321 4.1.1.4): a second transaction hidden behind LF.LF stays
    message text, and the whole message is refused for its bare LFs."""
    client = open_session(smtp)
    smuggled = b"\n.\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<admin@example.org>\r\nDATA\r\nfake\r\n"
    reply = send_raw(
        client, SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org") + smuggled
    )
    assert reply.startswith("500 5.5.2")
    assert client.command("NOOP") == "250 2.0.0 OK", "no other reply may be pending"
    assert stored_messages(smtp) == []


def test_nul_octet_in_data_is_refused(smtp: ThreadedSMTP) -> None:
    client = open_session(smtp)
    reply = send_raw(
        client, SENDER, ["admin@example.org"], make_message(SENDER, "admin@example.org") + b"a\0b\r\n"
    )
    assert reply.startswith("554 5.6.0") and "NUL" in reply
    assert stored_messages(smtp) == []


def test_eight_bit_body_and_smtputf8_addresses(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    client = open_session(smtp)
    assert client.command(f"MAIL FROM:<{SENDER}> BODY=8BITMIME").startswith("250")
    assert client.command("RCPT TO:<jöran@example.org>").startswith("553 5.6.7"), "needs SMTPUTF8"
    assert client.command("RSET").startswith("250")
    message = make_message("ålice@sender.example", "jöran@example.org", subject="Grüße", body="Käse\r\n")
    assert client.command("MAIL FROM:<ålice@sender.example> SMTPUTF8 BODY=8BITMIME").startswith("250")
    assert client.command("RCPT TO:<jöran@example.org>") == "250 2.1.5 Recipient OK"
    assert client.command("DATA").startswith("354")
    client.send(message + b".\r\n")
    assert client.reply().startswith("250 2.0.0")
    (stored,) = stored_messages(smtp)
    assert (stored.mailbox, stored.row.rcpt_to, stored.row.mail_from) == (
        "Inbox",
        "jöran@example.org",
        "ålice@sender.example",
    )
    assert stored.content.endswith(message)
    assert b"with UTF8SMTP id" in stored.content


def test_dot_stuffed_lines_are_unstuffed(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    client = open_session(smtp)
    message = make_message(SENDER, "admin@example.org", body=".leading dot\r\n.\r\nend\r\n")
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    assert send_raw(client, SENDER, ["admin@example.org"], stuffed).startswith("250")
    (stored,) = stored_messages(smtp)
    assert stored.content.endswith(message)


# Error budget and idle timeout.


def test_too_many_errors_closes_with_421(smtp: ThreadedSMTP) -> None:
    client = LineClient(smtp.inbound_port)
    replies = [client.command("MAIL FROM:<a@b.example>") for _ in range(LIMITS["max_errors"])]
    assert all(r.startswith("503 5.5.1") for r in replies)
    assert client.reply().startswith("421 4.7.0 Too many errors")
    assert client.closed_by_server()


def test_unknown_commands_close_with_421(smtp: ThreadedSMTP) -> None:
    client = open_session(smtp)
    replies = [client.command("XYZZY") for _ in range(5)]
    assert replies[:4] == [replies[0]] * 4 and replies[0].startswith("500 5.5.2")
    assert replies[4].startswith("421 4.7.0")
    assert client.closed_by_server()


def test_idle_session_gets_421_and_is_closed(smtp_factory: Callable[..., ThreadedSMTP]) -> None:
    server = smtp_factory(idle_timeout=0.5)
    client = LineClient(server.inbound_port)
    started = time.monotonic()
    assert client.reply().startswith("421 4.4.2")
    assert client.closed_by_server()
    assert time.monotonic() - started < 5


# The DATA reader on its own, fed through a real StreamReader in arbitrary pieces.


async def read_data(
    stream: bytes, *, limit: int = 64, max_size: int = 10_000, max_line: int = 1000
) -> tuple[MessageData, bytes]:
    reader = asyncio.StreamReader(limit=limit)
    for i in range(0, len(stream), 7):  # as if it came in small TCP segments
        reader.feed_data(stream[i : i + 7])
    reader.feed_eof()
    data = await read_message_data(reader, max_size=max_size, max_line_length=max_line)
    return data, await reader.read()


@pytest.mark.parametrize(
    ("stream", "content"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"a.\r\nb\r\n.\r\n", b"a.\r\nb\r\n"),
        (b"..x\r\n..\r\n.\r\n", b".x\r\n.\r\n"),
        (b"x" * 200 + b"\r\n" + b"y" * 150 + b"\r\n.\r\n", b"x" * 200 + b"\r\n" + b"y" * 150 + b"\r\n"),
    ],
    ids=["empty", "empty-line", "dot-at-line-end", "dot-stuffed", "longer-than-stream-limit"],
)
async def test_data_reader_content(stream: bytes, content: bytes) -> None:
    data, rest = await read_data(stream + b"QUIT\r\n")
    assert (data.content, data.problem) == (content, None)
    assert rest == b"QUIT\r\n", "what follows the data is left for the next command"


async def test_data_reader_limits() -> None:
    too_big, rest = await read_data(b"x" * 70 + b"\r\n" + b"y" * 60 + b"\r\n.\r\nNOOP\r\n", max_size=100)
    assert too_big.problem is not None and too_big.problem.startswith("552 5.3.4") and rest == b"NOOP\r\n"
    long_line, _ = await read_data(b"z" * 999 + b"\r\n.\r\n")
    assert long_line.problem is not None and long_line.problem.startswith("500 5.5.2 Line too long")
    limit_line, _ = await read_data(b"z" * 998 + b"\r\n.\r\n")
    assert limit_line.problem is None, "998 octets plus CRLF is the RFC 5321 maximum and allowed"
    # Many lines just under the limit, with CRLFs falling on the reader's chunk boundaries.
    near, _ = await read_data((b"w" * 990 + b"\r\n") * 20 + b".\r\n", limit=63, max_size=100_000)
    assert near.problem is None and len(near.content) == 992 * 20


async def test_data_reader_connection_lost() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"half a message\r\n")
    reader.feed_eof()
    with pytest.raises(ConnectionResetError):
        await read_message_data(reader, max_size=1000, max_line_length=1000)


@pytest.mark.parametrize(
    "path",
    [
        "<a@b.org>",
        "<a@b.org> SIZE=10 BODY=8BITMIME",
        "<a.b+c@x-y.example.org>",
        "<>",
        '<"a b"@x.org>',
        "<jöran@example.org>",
        "<@r.org:a@b.org>",
        "<a@[192.0.2.1]>",
        "<a@b",
        "a@b.org",
        "<.a@b.org>",
    ],
)
async def test_fast_path_parsing_agrees_with_aiosmtpd(path: str) -> None:
    handler = BaseHandler(None)  # type: ignore[arg-type]  # parsing needs no config
    ours = PostwardenSMTP(handler, limits=Limits(), hostname="mail.example.org")
    assert ours._getaddr(path) == SMTP(handler, hostname="mail.example.org")._getaddr(path)
