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
from app.auth.dkim import MessageParts, Signer, signer
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


def compose(report: ReportMail, sender: ReportSender, recipients: list[str], now: datetime) -> MessageParts:
    """The unsigned message, CRLF line ends, as its header fields and body (signed as composed).

    Written out directly rather than with the email package: its header objects cost milliseconds per
    message, which an hourly run for thousands of domains pays thousands of times. Every value here
    is ASCII (host and domain names, the Report-ID), so no header needs encoding; the values from
    outside are checked (ValueError if one is not an address or a domain name).
    """
    boundary = f"=_report_{secrets.token_hex(12)}"
    report_id = report.report_id
    policy_domain = checked_domain(report.policy_domain)
    name = filename(sender.domain, policy_domain, report.begin, report.end)
    attachment = base64.encodebytes(report.gzipped).replace(b"\n", b"\r\n")
    fields = [
        ("From", sender.address),
        ("To", address_field(recipients)),
        # Folded as RFC 9990 2.6.2 shows it.
        (
            "Subject",
            f"Report Domain: {policy_domain}\r\n Submitter: {sender.domain}\r\n Report-ID: <{report_id}>",
        ),
        ("Date", format_datetime(now.astimezone(UTC))),
        # RFC 9990 2.6.2: the Report-ID may be reused in the Message-ID, so duplicates are recognisable.
        ("Message-ID", f"<{report_id}@{sender.domain}>"),
        ("Auto-Submitted", "auto-generated"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
    ]
    text = _text(report, sender.domain).replace("\n", "\r\n")
    parts = [
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
    body = "\r\n".join(parts).encode("ascii") + attachment + f"--{boundary}--\r\n".encode("ascii")
    return MessageParts([(n.encode("ascii"), f" {v}\r\n".encode("ascii")) for n, v in fields], body)


def report_signer(sender: ReportSender) -> Signer | None:
    """The sender's Signer, for every report of a run (DKIMSigningError if a key file is unusable);
    None: the reports go out unsigned."""
    if sender.signing_domain is None or not sender.selectors:
        return None
    return signer(sender.signing_domain, sender.selectors)


def report_message(
    report: ReportMail, sender: ReportSender, recipients: list[str], now: datetime, signing: Signer | None
) -> bytes:
    """The message as queued: signed with every key of `signing` (from `report_signer`), if any."""
    message = compose(report, sender, recipients, now)
    if signing is None:
        return message.octets()
    return signing.sign(message) + message.octets()
