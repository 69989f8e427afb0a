"""The report message (SPEC R2.4, R2.6; RFC 9990 2.6.2): From postmaster@<our host>, DKIM-signed.

multipart/mixed with a short text part and the gzipped XML as `application/gzip`. The signing domain is
the configured domain that is the host name or its nearest parent (`dmarc_report_sender`,
app/reportsender.py), which aligns (relaxed) with the From domain, so the report itself passes DMARC
as RFC 9990 asks.

The recipients come from DNS and the policy domain from a message's From: both are checked again as
the header fields are written (`address_field`, `checked_domain`), so a CR or LF can never end up in
a header of a message we sign.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from app.address import address_field
from app.auth.dkim import sign
from app.auth.message import checked_domain
from app.dmarcreports.xml import filename
from app.reportsender import ReportSender


@dataclass(frozen=True)
class ReportMail:
    """What one report message says about its report."""

    policy_domain: str
    report_id: str
    begin: int
    end: int
    rows: int
    messages: int
    gzipped: bytes


def _utc(seconds: int) -> str:
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d %H:%M:%S} UTC"


def _text(report: ReportMail, host: str) -> str:
    return (
        "This is a DMARC aggregate report (RFC 9990) about mail we received from your domain.\n"
        "You receive it because your address is a rua of the domain's DMARC record.\n\n"
        f"Policy domain: {report.policy_domain}\n"
        f"Submitter: {host}\n"
        f"Report-ID: {report.report_id}\n"
        f"Period: {_utc(report.begin)} - {_utc(report.end)}\n"
        f"Rows: {report.rows}, messages: {report.messages}\n"
    )


def compose(report: ReportMail, sender: ReportSender, recipients: list[str], now: datetime) -> bytes:
    """The unsigned message, CRLF line ends.

    Written out directly rather than with the email package: its header objects cost milliseconds per
    message, which an hourly run for thousands of domains pays thousands of times. Every value here
    is ASCII (host and domain names, the Report-ID), so no header needs encoding; the values from
    outside are checked (ValueError if one is not an address or a domain name).
    """
    boundary = f"=_report_{secrets.token_hex(12)}"
    policy_domain = checked_domain(report.policy_domain)
    name = filename(sender.domain, policy_domain, report.begin, report.end)
    attachment = base64.encodebytes(report.gzipped).replace(b"\n", b"\r\n")
    headers = [
        f"From: {sender.address}",
        f"To: {address_field(recipients)}",
        # Folded as RFC 9990 2.6.2 shows it.
        f"Subject: Report Domain: {policy_domain}\r\n Submitter: {sender.domain}\r\n"
        f" Report-ID: <{report.report_id}>",
        f"Date: {format_datetime(now.astimezone(UTC))}",
        # RFC 9990 2.6.2: the Report-ID may be reused in the Message-ID, so duplicates are recognisable.
        f"Message-ID: <{report.report_id}@{sender.domain}>",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]
    text = _text(report, sender.domain).replace("\n", "\r\n")
    parts = [
        "\r\n".join(headers),
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "",
        text,
        f"--{boundary}",
        f'Content-Type: application/gzip; name="{name}"',
        f'Content-Disposition: attachment; filename="{name}"',
        "Content-Transfer-Encoding: base64",
        "",
        "",
    ]
    return "\r\n".join(parts).encode("ascii") + attachment + f"--{boundary}--\r\n".encode("ascii")


def report_message(report: ReportMail, sender: ReportSender, recipients: list[str], now: datetime) -> bytes:
    """The message as queued: signed with every selector of the sender's domain, if it has any."""
    unsigned = compose(report, sender, recipients, now)
    if sender.signing_domain is None or not sender.selectors:
        return unsigned
    return sign(unsigned, sender.signing_domain, sender.selectors) + unsigned
