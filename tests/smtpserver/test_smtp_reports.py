"""Reports sent to our reporting addresses over real SMTP, with the loopback DNS (SPEC R6.1-R6.3): the
sender checks of R6.2, the error header of R6.3 in the stored message, the hand-off of a valid report
and what the parse after storage stores (app/inreports/intake.py, run here as the task runs it)."""

from __future__ import annotations

import email.policy
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from sqlalchemy import func, select

from app.auth.dkim import sign
from app.auth.dkimkeys import dns_txt_value, generate_private_key_pem
from app.config import DKIMSelector
from app.db import session_scope
from app.inreports.intake import (
    SWEEP_GRACE,
    SWEEP_WINDOW,
    ReportMessage,
    parse_stored_report,
    sweep_report_messages,
)
from app.models.base import utcnow
from app.models.inreports import DMARCReport, TLSReport
from tests.inreports.samples import RFC8460_EXAMPLE, RFC9990_REPORT, gzipped
from tests.support.celeryworker import celery_worker, wait_for_text
from tests.support.dkimpeers import dkimpy_private_key
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import LineClient, ThreadedSMTP, publish_sender_domain, stored_messages

DMARC_ADDRESS = "dmarc-reports@example.org"  # tests/support/smtpfixtures.py EXTRA_ACCOUNTS
TLS_ADDRESS = "tlsrpt@mail.example.org"  # the host TLSRPT address (tests/support/configs.py)
DMARC_HEADER = b"X-Postwarden-DMARCReport-Error"
TLS_HEADER = b"X-Postwarden-TLSReport-Error"
FUTURE = "2099-04-01T23:59:59Z"
FUTURE_UNIX = "4078079999"


def dmarc_xml(domain: str = "example.org", end: str = "1694563199") -> bytes:
    report = RFC9990_REPORT.replace(b"<domain>example.com</domain>", f"<domain>{domain}</domain>".encode())
    return report.replace(b"<end>1694563199</end>", f"<end>{end}</end>".encode())


def tls_json(domain: str = "example.org", end: str = "2016-04-01T23:59:59Z") -> bytes:
    report = RFC8460_EXAMPLE.replace(
        b'"policy-domain": "company-y.example"', f'"policy-domain": "{domain}"'.encode()
    )
    return report.replace(b'"end-datetime": "2016-04-01T23:59:59Z"', f'"end-datetime": "{end}"'.encode())


def report_message(sender: str, to: str, payload: bytes, media_type: str, filename: str) -> bytes:
    """A report mail in CRLF form, the payload attached as reporters send it."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Report Domain: example.org Submitter: reporter.example Report-ID: <1>"
    message["Message-ID"] = f"<{filename}@reporter.example>"
    message["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    message.set_content("A report is attached.\n")
    maintype, subtype = media_type.split("/")
    message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


@dataclass
class Signer:
    """An ed25519 key written to disk, its public half published in the loopback DNS on demand."""

    pem: bytes
    path: Path

    def publish(self, dns: DNSTestServer, domain: str, extra: str = "") -> None:
        dns.txt(f"sel._domainkey.{domain}", dns_txt_value(self.pem, "ed25519") + extra)

    def sign(self, message: bytes, domain: str) -> bytes:
        selector = DKIMSelector(selector="sel", algorithm="ed25519", private_key_file=self.path)
        return sign(message, domain, [selector]) + message

    def sign_with_length(self, message: bytes, domain: str) -> bytes:
        private = dkimpy_private_key(self.pem, "ed25519")
        header = dkim.sign(
            message, b"sel", domain.encode(), private, signature_algorithm=b"ed25519-sha256", length=True
        )
        return header + message


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    pem = generate_private_key_pem("ed25519")
    (tmp_path / "sel.pem").write_bytes(pem)
    return Signer(pem, tmp_path / "sel.pem")


def deliver(server: ThreadedSMTP, mail_from: str, rcpt: str, data: bytes) -> str:
    client = LineClient(server.inbound_port)
    try:
        assert client.command("EHLO client.reporter.example").startswith("250")
        assert client.command(f"MAIL FROM:<{mail_from}>").startswith("250")
        assert client.command(f"RCPT TO:<{rcpt}>").startswith("250")
        assert client.command("DATA").startswith("354")
        client.send(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return client.reply()
    finally:
        client.close()


def parse_handed_on(server: ThreadedSMTP) -> list[str]:
    """Run the parse of every report the SMTP service handed on, as the task does."""
    return [parse_stored_report(server.config, m) for m in server.handoff.reports]


def report_rows(server: ThreadedSMTP) -> tuple[int, int]:
    with session_scope(server.database_url) as session:
        dmarc = session.scalar(select(func.count(DMARCReport.id))) or 0
        tls = session.scalar(select(func.count(TLSReport.id))) or 0
    return dmarc, tls


def header_section(server: ThreadedSMTP) -> bytes:
    (stored,) = stored_messages(server)
    return stored.content.split(b"\r\n\r\n")[0]


# DMARC reports: the message must pass DMARC.


def send_dmarc_report(server: ThreadedSMTP, dns: DNSTestServer, document: bytes, spf: str) -> str:
    publish_sender_domain(dns, "reporter.example", "v=DMARC1; p=none", spf=spf)
    data = report_message(
        "reports@reporter.example", DMARC_ADDRESS, gzipped(document), "application/gzip", "r.xml.gz"
    )
    return deliver(server, "reports@reporter.example", DMARC_ADDRESS, data)


def test_a_dmarc_report_passing_dmarc_is_accepted_and_parsed(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    reply = send_dmarc_report(smtp, dns, dmarc_xml(), "v=spf1 ip4:127.0.0.1 -all")
    assert reply.startswith("250 2.0.0")
    (stored,) = stored_messages(smtp)
    assert (stored.mailbox, stored.row.reason, stored.row.is_dmarc_report) == ("DMARC", "reporting", True)
    assert DMARC_HEADER not in header_section(smtp)
    assert smtp.handoff.reports == [ReportMessage(stored.row.file_id, "dmarc")]
    assert parse_handed_on(smtp) == ["stored"]
    assert report_rows(smtp) == (1, 0)
    assert parse_handed_on(smtp) == ["already processed"]  # a second run for the message does nothing
    assert report_rows(smtp) == (1, 0)


@pytest.mark.parametrize(
    ("document", "spf", "reason"),
    [
        # SPF neutral: DMARC fails without the message being rejected, so it is delivered as usual.
        (dmarc_xml(), "v=spf1 ?all", b"no DMARC pass"),
        (
            dmarc_xml(domain="other.example"),
            "v=spf1 ip4:127.0.0.1 -all",
            b"published policy domain unrecognized",
        ),
        (dmarc_xml(end=FUTURE_UNIX), "v=spf1 ip4:127.0.0.1 -all", b"report has end date in the future"),
        (b"<feedback><report_metadata>", "v=spf1 ip4:127.0.0.1 -all", b"could not parse report"),
    ],
)
def test_a_dmarc_report_not_processed_is_delivered_with_its_reason(
    smtp: ThreadedSMTP, dns: DNSTestServer, document: bytes, spf: str, reason: bytes
) -> None:
    assert send_dmarc_report(smtp, dns, document, spf).startswith("250 2.0.0")
    assert DMARC_HEADER + b": " + reason + b"\r\n" in header_section(smtp) + b"\r\n"
    (stored,) = stored_messages(smtp)
    assert (stored.mailbox, stored.row.is_dmarc_report) == ("DMARC", False)
    assert smtp.handoff.reports == []
    assert report_rows(smtp) == (0, 0)


# TLS reports: an acceptable DKIM signature (RFC 8460 3).


@dataclass(frozen=True)
class TLSCase:
    sender_domain: str
    signing_domain: str
    key_extra: str = ""
    length_limit: bool = False
    document: bytes = tls_json()
    reason: bytes | None = None  # None: accepted
    dkim: bytes = b"dkim=pass"  # every signature verifies: a refusal is R6.2's, not a broken signature


TLS_CASES = {
    "signed by the From domain": TLSCase("reporter.example", "reporter.example"),
    "key for tlsrpt only": TLSCase("reporter.example", "reporter.example", "; s=tlsrpt", dkim=b"dkim=policy"),
    "key for email and tlsrpt": TLSCase("reporter.example", "reporter.example", "; s=email:tlsrpt"),
    "signed by a parent domain": TLSCase("mail.reporter.example", "reporter.example"),
    "signature with l=": TLSCase(
        "reporter.example", "reporter.example", length_limit=True, reason=b"no acceptable DKIM signature"
    ),
    "key for email only": TLSCase(
        "reporter.example", "reporter.example", "; s=email", reason=b"no acceptable DKIM signature"
    ),
    "signed by the public suffix": TLSCase("reporter.co.uk", "co.uk", reason=b"no acceptable DKIM signature"),
    "signed by another domain": TLSCase(
        "reporter.example", "other.example", reason=b"no acceptable DKIM signature"
    ),
    "unknown domain": TLSCase(
        "reporter.example",
        "reporter.example",
        document=tls_json(domain="other.example"),
        reason=b"report for unknown domain",
    ),
    "future end date": TLSCase(
        "reporter.example",
        "reporter.example",
        document=tls_json(end=FUTURE),
        reason=b"report has end date in the future",
    ),
    "unparsable report": TLSCase(
        "reporter.example",
        "reporter.example",
        document=b'{"policies": [',
        reason=b"could not parse TLS report",
    ),
}


@pytest.mark.parametrize("case", TLS_CASES.values(), ids=TLS_CASES.keys())
def test_tls_reports_and_their_dkim_signature(
    smtp: ThreadedSMTP, dns: DNSTestServer, signer: Signer, case: TLSCase
) -> None:
    sender = f"tlsrpt@{case.sender_domain}"
    dns.txt(case.sender_domain, "v=spf1 ip4:127.0.0.1 -all")
    signer.publish(dns, case.signing_domain, case.key_extra)
    data = report_message(sender, TLS_ADDRESS, gzipped(case.document), "application/tlsrpt+gzip", "r.json.gz")
    sign = signer.sign_with_length if case.length_limit else signer.sign
    assert deliver(smtp, sender, TLS_ADDRESS, sign(data, case.signing_domain)).startswith("250 2.0.0")
    (stored,) = stored_messages(smtp)
    assert stored.mailbox == "TLSRPT"
    headers = header_section(smtp) + b"\r\n"
    assert case.dkim + b" " in headers
    if case.reason is None:
        assert TLS_HEADER not in headers
        assert (stored.row.reason, stored.row.is_tls_report) == ("reporting", True)
        assert parse_handed_on(smtp) == ["stored"]
        assert report_rows(smtp) == (0, 1)
    else:
        assert TLS_HEADER + b": " + case.reason + b"\r\n" in headers
        assert smtp.handoff.reports == []
        assert report_rows(smtp) == (0, 0)


def test_a_report_the_parse_refuses_later_stores_nothing(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    """The verdict step reads the head only: a broken record after it is found by the task."""
    broken = dmarc_xml().replace(b"<count>123</count>", b"<count>-1</count>")
    assert send_dmarc_report(smtp, dns, broken, "v=spf1 ip4:127.0.0.1 -all").startswith("250 2.0.0")
    assert DMARC_HEADER not in header_section(smtp)
    assert parse_handed_on(smtp) == ["refused"]
    assert parse_handed_on(smtp) == ["already processed"]
    assert report_rows(smtp) == (0, 0)


def test_a_report_message_that_is_gone_is_missing(smtp: ThreadedSMTP) -> None:
    assert parse_stored_report(smtp.config, ReportMessage("0000000000000000000000ff", "dmarc")) == "missing"
    assert ReportMessage.from_args("0000000000000000000000ff", "tls").kind == "tls"
    with pytest.raises(ValueError, match="unknown report kind"):  # task arguments from the broker
        ReportMessage.from_args("0000000000000000000000ff", "xml")


def test_a_report_sent_over_smtp_is_stored_by_a_celery_worker_once(
    smtp: ThreadedSMTP, dns: DNSTestServer, tmp_path: Path
) -> None:
    assert send_dmarc_report(smtp, dns, dmarc_xml(), "v=spf1 ip4:127.0.0.1 -all").startswith("250 2.0.0")
    (handed_on,) = smtp.handoff.reports
    config_file = smtp.config.data_dir.parent / "postwarden.toml"  # tests/support/configs.py's layout
    log = tmp_path / "worker.log"
    with celery_worker(config_file, log):
        # Published as the SMTP service's publisher child does (tasks/handoff.py), in a process of its
        # own with the config in the environment; twice, as a redelivered or repeated hand-off would.
        publisher = (
            "import sys; from app.inreports.intake import ReportMessage; "
            "from app.smtpserver.handoff import Batch; from tasks.handoff import publish; "
            "message = ReportMessage(sys.argv[1], sys.argv[2]); publish(Batch((), False, (message, message)))"
        )
        env = {**os.environ, "POSTWARDEN_CONFIG": str(config_file)}
        args = [sys.executable, "-c", publisher, handed_on.file_id, handed_on.kind]
        subprocess.run(args, env=env, check=True, timeout=60)
        text = wait_for_text(log, "report message already processed")
    assert text.count("report stored") == 1
    assert "Sample Reporter" not in text and "example-reporter.com" not in text  # no report text logged
    assert report_rows(smtp) == (1, 0)
    with session_scope(smtp.database_url) as session:
        stored = session.scalars(select(DMARCReport)).one()
        assert (stored.domain, stored.record_count, stored.message_count) == ("example.org", 2, 130)


def test_the_sweep_parses_report_messages_whose_hand_off_was_lost(
    smtp: ThreadedSMTP, dns: DNSTestServer
) -> None:
    assert send_dmarc_report(smtp, dns, dmarc_xml(), "v=spf1 ip4:127.0.0.1 -all").startswith("250 2.0.0")
    refused = dmarc_xml(domain="other.example")  # not marked: never parsed, by the sweep either
    assert send_dmarc_report(smtp, dns, refused, "v=spf1 ip4:127.0.0.1 -all").startswith("250 2.0.0")
    # The hand-off is lost (nothing runs it). Within the grace period the sweep leaves it to the task.
    assert sweep_report_messages(smtp.config) == 0
    later = utcnow() + SWEEP_GRACE + timedelta(seconds=1)
    assert sweep_report_messages(smtp.config, later) == 1
    assert report_rows(smtp) == (1, 0)
    assert sweep_report_messages(smtp.config, later) == 0
    assert sweep_report_messages(smtp.config, later + SWEEP_WINDOW) == 0  # out of the window
