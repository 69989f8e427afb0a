"""The report message (SPEC R2.4, R2.6; RFC 9990 2.6.2): From postmaster@<our host>, DKIM-signed.

multipart/mixed with a short text part and the gzipped XML as `application/gzip`. The signing domain is
the configured domain that is the host name or its nearest parent, which aligns (relaxed) with the
From domain, so the report itself passes DMARC as RFC 9990 asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from app.auth.dkim import sign
from app.config import Config, DKIMSelector
from app.dmarcreports.xml import filename
from app.tlsreports.sender import host_domains


@dataclass(frozen=True)
class ReportSender:
    host: str
    signing_domain: str | None  # None: no configured domain for the host; reports go out unsigned
    selectors: tuple[DKIMSelector, ...]

    @property
    def address(self) -> str:
        return f"postmaster@{self.host}"


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


def report_sender(config: Config) -> ReportSender:
    for name in host_domains(config.hostname):
        domain = config.domains.get(name)
        if domain is not None:
            return ReportSender(config.hostname, name, tuple(domain.dkim))
    return ReportSender(config.hostname, None, ())


def subject(report: ReportMail, host: str) -> str:
    return f"Report Domain: {report.policy_domain} Submitter: {host} Report-ID: <{report.report_id}>"


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
    """The unsigned message, CRLF line ends."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender.address
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject(report, sender.host)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    # RFC 9990 2.6.2: the Report-ID may be reused in the Message-ID, so duplicates are recognisable.
    msg["Message-ID"] = f"<{report.report_id}@{sender.host}>"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(_text(report, sender.host))
    msg.add_attachment(
        report.gzipped,
        maintype="application",
        subtype="gzip",
        filename=filename(sender.host, report.policy_domain, report.begin, report.end),
    )
    return msg.as_bytes()


def report_message(report: ReportMail, sender: ReportSender, recipients: list[str], now: datetime) -> bytes:
    """The message as queued: signed with every selector of the sender's domain, if it has any."""
    unsigned = compose(report, sender, recipients, now)
    if sender.signing_domain is None or not sender.selectors:
        return unsigned
    return sign(unsigned, sender.signing_domain, sender.selectors) + unsigned
