"""Delivery status notifications (RFC 3464): multipart/report with message/delivery-status.

A DSN is only ever delivered into a local mailbox (SPEC R4.1: never queued to strangers, so no
backscatter): the sending account's Inbox, or for report messages quietly into the postmaster's
`/dmarc` or `/tlsrpt` sub-mailbox (R2.7). `dsn_mailbox` decides which; `build_dsn` writes it.
Addresses or headers with UTF-8 use the RFC 6533 types (message/global-delivery-status, utf-8).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Literal

from app.auth.message import header_fields, header_section
from app.config import Config

MAX_FIELD = 900  # keep each DSN field line well under the 998 octet limit (RFC 5322 2.1.1)


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of the report (RFC 3464 §2.3)."""

    recipient: str
    action: Literal["failed", "delayed"]
    status: str  # RFC 3463 code, e.g. 5.1.1
    diagnostic: str | None  # "smtp; 550 5.1.1 ..." or another diagnostic type
    remote_mta: str | None
    last_attempt: datetime
    will_retry_until: datetime | None = None


@dataclass(frozen=True)
class DSNMailbox:
    account: str
    mailbox: str
    seen: bool  # quiet delivery: marked seen, no notification (R2.7)


def dsn_mailbox(
    config: Config, sender_account: str | None, is_dmarc_report: bool, is_tls_report: bool
) -> DSNMailbox | None:
    """Where the DSN of a queued message goes; None when no local account sent it (then no DSN)."""
    if is_dmarc_report or is_tls_report:
        folder = "dmarc" if is_dmarc_report else "tlsrpt"
        return DSNMailbox(config.postmaster.account, f"{config.postmaster.mailbox}/{folder}", seen=True)
    account = config.accounts.get(sender_account or "")
    if account is None:
        return None
    return DSNMailbox(sender_account or "", account.inbox, seen=False)


def build_dsn(
    *,
    hostname: str,
    sender: str,
    original: bytes,
    statuses: Sequence[RecipientStatus],
    arrival: datetime,
    now: datetime,
) -> bytes:
    """The complete DSN message (CRLF line endings) for `sender` about `statuses` of one message."""
    failed = any(s.action == "failed" for s in statuses)
    headers = header_section(original) + b"\r\n"
    utf8 = not (sender.isascii() and all(s.recipient.isascii() for s in statuses))
    boundary = f"dsn-{secrets.token_hex(12)}"
    subject = "Undelivered mail" if failed else "Delayed mail (still trying)"
    original_subject = next((v for n, v in header_fields(original) if n.lower() == "subject"), "")
    if original_subject:
        subject += f": {original_subject}"
    message_headers = [
        f"From: Mail Delivery System <postmaster@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {_one_line(subject)[:MAX_FIELD]}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(16)}@{hostname}>",
        "Auto-Submitted: auto-replied",  # RFC 3834: no automatic replies to this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    parts = [
        _part("text/plain; charset=utf-8", _explanation(hostname, statuses, failed), "8bit"),
        _part(
            "message/global-delivery-status" if utf8 else "message/delivery-status",
            _delivery_status(hostname, statuses, arrival, utf8),
        ),
        _part("message/global-headers" if not headers.isascii() else "text/rfc822-headers", headers),
    ]
    body = b"".join(f"--{boundary}\r\n".encode() + part for part in parts) + f"--{boundary}--\r\n".encode()
    return "\r\n".join(message_headers).encode() + b"\r\n\r\n" + body


def _explanation(hostname: str, statuses: Sequence[RecipientStatus], failed: bool) -> bytes:
    if failed:
        lines = [f"This is the mail system at {hostname}.", "", "Your message could not be delivered to:"]
    else:
        lines = [
            f"This is the mail system at {hostname}.",
            "",
            "Your message has not been delivered yet; we keep trying. No action is needed. Recipients:",
        ]
    for status in statuses:
        reason = status.diagnostic or status.status
        lines.append(f"  <{status.recipient}>: {_one_line(reason)[:MAX_FIELD]}")
        if status.will_retry_until is not None:
            lines.append(f"    (will keep trying until {format_datetime(status.will_retry_until)})")
    lines += ["", "The technical details and the headers of your message follow."]
    return ("\r\n".join(lines) + "\r\n").encode()


def _delivery_status(
    hostname: str, statuses: Sequence[RecipientStatus], arrival: datetime, utf8: bool
) -> bytes:
    address_type = "utf-8" if utf8 else "rfc822"
    blocks = [[f"Reporting-MTA: dns; {hostname}", f"Arrival-Date: {format_datetime(arrival)}"]]
    for status in statuses:
        block = [
            f"Final-Recipient: {address_type}; {status.recipient}",
            f"Action: {status.action}",
            f"Status: {status.status}",
        ]
        if status.remote_mta:
            block.append(f"Remote-MTA: dns; {status.remote_mta}")
        if status.diagnostic:
            block.append(f"Diagnostic-Code: {_one_line(status.diagnostic)[:MAX_FIELD]}")
        block.append(f"Last-Attempt-Date: {format_datetime(status.last_attempt)}")
        if status.will_retry_until is not None:
            block.append(f"Will-Retry-Until: {format_datetime(status.will_retry_until)}")
        blocks.append(block)
    # Groups of fields separated by one blank line (RFC 3464 §2.1), no empty group at the end.
    return "\r\n".join("\r\n".join(block) + "\r\n" for block in blocks).encode()


def _part(content_type: str, content: bytes, encoding: str | None = None) -> bytes:
    headers = f"Content-Type: {content_type}\r\n"
    if encoding:
        headers += f"Content-Transfer-Encoding: {encoding}\r\n"
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    # The CRLF before the next boundary belongs to the delimiter (RFC 2046 5.1.1), not the content.
    return headers.encode() + b"\r\n" + content + b"\r\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())
