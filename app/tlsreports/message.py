"""The report message (RFC 8460 §5.3): multipart/report with report-type="tlsrpt", DKIM-signed by d.

A short text part, then the gzipped JSON as `application/tlsrpt+gzip` named per §5.1. Headers
`TLS-Report-Domain` (the policy domain) and `TLS-Report-Submitter` (d) are signed along with the usual
ones; `TLS-Required: No` (RFC 8689) so our own delivery ignores TLS failures (RFC 8460 §5.3).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from app.auth.dkim import sign
from app.tlsreports.report import Report
from app.tlsreports.sender import Submitter

SIGNED_REPORT_HEADERS = (b"TLS-Report-Domain", b"TLS-Report-Submitter")


def subject(report: Report) -> str:
    """RFC 8460 §5.3: `Report Domain: <policy domain> Submitter: <submitter> Report-ID: <<id>>`."""
    return f"Report Domain: {report.policy_domain} Submitter: {report.submitter} Report-ID: <{report.id}>"


def _text(report: Report) -> str:
    start = f"{report.day:%Y-%m-%d} 00:00:00"
    end = f"{report.day:%Y-%m-%d} 23:59:59"
    return (
        "This is an aggregate TLS report (RFC 8460) about deliveries to your domain or mail host.\n"
        "You receive it because your address is a rua of the domain's _smtp._tls TXT record.\n\n"
        f"Policy domain: {report.policy_domain}\n"
        f"Submitter: {report.submitter}\n"
        f"Report-ID: {report.id}\n"
        f"Period: {start} - {end} UTC\n"
    )


def compose(
    report: Report, gzipped: bytes, submitter: Submitter, recipients: list[str], now: datetime
) -> bytes:
    """The unsigned message, CRLF line ends."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = submitter.address
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject(report)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    # The report id has the form of a msg-id (`<day>.<policy domain>@<d>`), and a receiver seeing it
    # twice knows it is the same report.
    msg["Message-ID"] = f"<{report.id}>"
    msg["TLS-Report-Domain"] = report.policy_domain
    msg["TLS-Report-Submitter"] = report.submitter
    msg["TLS-Required"] = "No"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(_text(report))
    msg.add_attachment(gzipped, maintype="application", subtype="tlsrpt+gzip", filename=report.filename)
    msg.set_type("multipart/report")
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes()


def report_message(
    report: Report, gzipped: bytes, submitter: Submitter, recipients: list[str], now: datetime
) -> bytes:
    """The DKIM-signed report message: d= is the From domain, and the TLS-Report-* headers are signed."""
    unsigned = compose(report, gzipped, submitter, recipients, now)
    signature = sign(unsigned, submitter.domain, submitter.selectors, extra_headers=SIGNED_REPORT_HEADERS)
    return signature + unsigned
