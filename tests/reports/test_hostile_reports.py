"""Issue 8 item 1, the report side: hostile rua URIs published in DNS (DMARC and TLSRPT) never reach a
header of the report we sign, our SMTP client's commands, a log line or a queue row.

Each control character (CR, LF, NUL, TAB, SOH, ESC, DEL, NEL, U+2028) is published in a rua twice:
percent-encoded (RFC 6068, decoded by the parser) and raw in the TXT record. The job runs against the
loopback DNS, the report is delivered to a recording SMTP server, and everything is read back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import select

from app.config import Config
from app.db import session_scope
from app.dmarcreports.mail import ReportMail, compose
from app.dns import Resolver
from app.models import OutgoingMessage
from app.queue.deliver import deliver
from app.queue.enqueue import QueueAddressError, Queued, enqueue
from app.reportsender import ReportSender
from app.tlsreports.job import send_tls_reports
from tests.reports.test_dmarc_job import DAY, DELIVERY, ev, migrated, queued, report_rows, run, store
from tests.reports.test_tlsreports_job import (
    EXPIRED,
    NOW,
    SPACING,
    STS_NET,
    TLSA_NET,
    make_config,
    record,
    sessions,
)
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.hostile import CLEAN_HEADER_LINE, CONTROLS, UNSAFE
from tests.support.logcapture import CidLog, captured
from tests.support.smtprecorder import CommandRecorder

CLEAN_COMMAND = re.compile(rb"[\x20-\x7e]*\r\n")


def hostile_uris(domain: str) -> list[str]:
    """mailto URIs carrying each control character, percent-encoded and raw, in the local part and
    between the domain and a second header line; all at `domain`, so no outside check filters them."""
    uris = []
    for c in CONTROLS.values():
        encoded = quote(c, safe="")
        uris += [
            f"mailto:x{encoded}Subject:pwned{encoded}{encoded}body@{domain}",
            f"mailto:dmarc@{domain}{encoded}Bcc:pwned@{domain}",
            f"mailto:raw{c}pwned@{domain}",
        ]
    return uris


def publish_raw_txt(dns: DNSTestServer, name: str, value: str) -> None:
    """A TXT record with the value's UTF-8 octets as they are (\\DDD for the unprintable ones)."""
    raw = value.encode()
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)]

    def presentation(chunk: bytes) -> str:
        return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03d}" for b in chunk)

    dns.add(name, "TXT", " ".join(f'"{presentation(c)}"' for c in chunks))


def publish_mx(dns: DNSTestServer, domain: str) -> None:
    dns.add(domain, "MX", f"10 mx.{domain}.")
    dns.add(f"mx.{domain}", "A", "127.0.0.1")


def assert_clean_header_section(message: bytes) -> None:
    head = message.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert CLEAN_HEADER_LINE.fullmatch(line), f"header line with a control character: {line!r}"
    assert b"pwned" not in head


def assert_clean_log(log: CidLog) -> None:
    assert log.lines, "the run logged something"
    for _, _, line in log.lines:
        assert not UNSAFE.search(line), f"raw control character in a log line: {line!r}"


def assert_clean_commands(recorder: CommandRecorder, sender: str, recipient: str) -> None:
    for line in recorder.lines:
        assert CLEAN_COMMAND.fullmatch(line), f"our client sent {line!r}"
    (mail_from,) = recorder.commands("MAIL")
    assert mail_from.startswith(f"MAIL FROM:<{sender}>".encode())
    assert recorder.commands("RCPT") == [f"RCPT TO:<{recipient}>\r\n".encode()]


def queue_rows(config: Config) -> list[OutgoingMessage]:
    with session_scope(config.resolved_database_url) as session:
        return list(session.scalars(select(OutgoingMessage)))


@pytest.fixture
def recorder() -> Iterator[CommandRecorder]:
    with CommandRecorder() as server:
        yield server


@pytest.fixture
def app_log() -> Iterator[CidLog]:
    with captured("app") as log:
        yield log


def test_dmarc_rua_with_control_characters_never_reaches_the_report_or_the_smtp_commands(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver, recorder: CommandRecorder, app_log: CidLog
) -> None:
    config = migrated(write_config(tmp_path, DELIVERY.format(port=recorder.port), dns_port=dns.port))
    ruas = ["mailto:dmarc@hourly.example", *hostile_uris("hourly.example")]
    publish_raw_txt(dns, "_dmarc.hourly.example", f"v=DMARC1; p=reject; ri=3600; rua={','.join(ruas)}")
    publish_mx(dns, "hourly.example")
    store(config, ev("hourly.example", DAY + timedelta(hours=6, minutes=1), ri=3600))

    summary = run(config, resolver, DAY + timedelta(hours=7, seconds=40))

    assert len(summary.reports) == 1, "the one valid address still gets its report"
    (report,) = queued(config)
    assert report.recipients == ["dmarc@hourly.example"]
    assert_clean_header_section(report.message)
    parsed = message_from_bytes(report.message, policy=default)
    assert parsed.get_all("To") == ["dmarc@hourly.example"]
    assert len(parsed.get_all("Subject")) == 1 and parsed.get_all("Bcc") is None
    # The skipped URIs are named, as published, in the report's error entry (valid XML: `report`
    # checks the schema). Those with raw controls are not URIs to the record parser at all.
    (error,) = report.report["report_metadata"]["errors"]
    assert not UNSAFE.search(error)
    for c in CONTROLS.values():
        assert f"mailto:x{quote(c, safe='')}Subject:pwned" in error

    (queue_id,) = report_rows(config)
    assert asyncio.run(deliver(config, queue_id, resolver)).delivered == [queue_id]
    assert_clean_commands(recorder, "postmaster@mail.example.org", "dmarc@hourly.example")
    assert_clean_log(app_log)


def test_tlsrpt_rua_with_control_characters_never_reaches_the_report_or_the_smtp_commands(
    tmp_path: Path,
    dns: DNSTestServer,
    resolver: Resolver,
    https_ca_file: Path,
    recorder: CommandRecorder,
    app_log: CidLog,
) -> None:
    config = make_config(tmp_path, dns, https_ca_file, f"smtp_port = {recorder.port}\n")
    record(config, sessions("example.net", STS_NET, TLSA_NET, 17, [EXPIRED] * 3))
    ruas = ["mailto:tlsrpt@example.net", *hostile_uris("example.net")]
    publish_raw_txt(dns, "_smtp._tls.example.net", f"v=TLSRPTv1; rua={','.join(ruas)}")
    publish_mx(dns, "example.net")

    summary = asyncio.run(send_tls_reports(config, NOW, resolver=resolver, spacing=SPACING))

    assert summary.reports == ["20261124.example.net@example.org"]
    (row,) = queue_rows(config)
    assert row.recipient == "tlsrpt@example.net"
    message = (config.data_dir / row.path).read_bytes()
    assert_clean_header_section(message)
    assert message_from_bytes(message, policy=default).get_all("To") == ["tlsrpt@example.net"]

    with session_scope(config.resolved_database_url) as session:
        session.get(OutgoingMessage, row.id).next_attempt = datetime.now(UTC)  # the job ran a day ahead
    assert asyncio.run(deliver(config, row.id, resolver)).delivered == [row.id]
    assert_clean_commands(recorder, "postmaster@example.org", "tlsrpt@example.net")
    assert_clean_log(app_log)


@pytest.mark.parametrize("name", CONTROLS)
@pytest.mark.parametrize("field", ["sender", "recipient"])
def test_the_queue_refuses_an_address_with_a_control_character(
    config_file: Path, tmp_path: Path, name: str, field: str
) -> None:
    """enqueue is the way into the outgoing queue for mail we compose: the last guard before our SMTP
    client writes MAIL FROM and RCPT TO."""
    config = migrated(config_file)
    bad = f"x{CONTROLS[name]}RCPT TO:<victim@example.net>@example.net"
    addresses = {"sender": "postmaster@mail.example.org", "recipient": "dmarc@example.net", field: bad}
    with session_scope(config.resolved_database_url) as session, pytest.raises(QueueAddressError) as refused:
        enqueue(session, config, Queued(b"Subject: x\r\n\r\n", addresses["sender"], [addresses["recipient"]]))
    assert "cannot queue a message for" in str(refused.value) and not UNSAFE.search(str(refused.value))
    assert queue_rows(config) == []
    assert not list((config.data_dir / "outgoing").glob("**/*.*")), "no message file written"


@pytest.mark.parametrize("name", CONTROLS)
def test_report_composition_checks_recipients_and_policy_domain(name: str) -> None:
    """However an address or policy domain got into the report job, composing refuses it."""
    c = CONTROLS[name]
    mail = ReportMail("policy.example", "r1", 0, 3600, 1, 1, b"")
    sender = ReportSender("mail.example.org", None, ())
    now = datetime(2026, 11, 25, tzinfo=UTC)
    with pytest.raises(ValueError):
        compose(mail, sender, [f"x{c}Bcc: evil@example.net"], now)
    with pytest.raises(ValueError):
        compose(ReportMail(f"policy.example{c}X: y", "r1", 0, 3600, 1, 1, b""), sender, ["a@b.example"], now)
