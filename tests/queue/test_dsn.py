"""DSNs (RFC 3464): structure, per-recipient fields, UTF-8 variants (RFC 6533), and where they go."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from app.config import load_config
from app.queue.dsn import DSNMailbox, RecipientStatus, build_dsn, dsn_mailbox
from tests.support.configs import write_config

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ORIGINAL = (
    b"From: Admin <admin@example.org>\r\nTo: bob@example.net\r\nSubject: Budget\r\n"
    b"Message-ID: <b1@example.org>\r\n\r\nThe secret numbers.\r\n"
)


def failed(recipient: str = "bob@example.net", **changes: object) -> RecipientStatus:
    values: dict[str, object] = {
        "recipient": recipient,
        "action": "failed",
        "status": "5.1.1",
        "diagnostic": "smtp; 550 5.1.1 no such user",
        "remote_mta": "mx.example.net",
        "last_attempt": NOW,
    }
    values.update(changes)
    return RecipientStatus(**values)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def fields(part: EmailMessage) -> list[dict[str, str]]:
    """The field groups of a delivery-status part: per-message first, then one per recipient."""
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return [{k: str(v) for k, v in block.items()} for block in blocks]


def dsn(*statuses: RecipientStatus, sender: str = "admin@example.org", original: bytes = ORIGINAL) -> bytes:
    return build_dsn(
        hostname="mail.example.org",
        sender=sender,
        original=original,
        statuses=list(statuses),
        arrival=NOW - timedelta(hours=1),
        now=NOW,
    )


def test_failure_dsn_is_a_multipart_report_with_delivery_status_and_headers() -> None:
    raw = dsn(failed())
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    message = parse(raw)
    assert message["From"] == "Mail Delivery System <postmaster@mail.example.org>"
    assert message["To"] == "admin@example.org"
    assert message["Subject"] == "Undelivered mail: Budget"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"].endswith("@mail.example.org>")
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    text, status, headers = message.iter_parts()
    assert "<bob@example.net>: smtp; 550 5.1.1 no such user" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = fields(status)  # type: ignore[arg-type]
    assert per_message == {
        "Reporting-MTA": "dns; mail.example.org",
        "Arrival-Date": "Wed, 25 Nov 2026 11:00:00 +0000",
    }
    assert per_recipient == {
        "Final-Recipient": "rfc822; bob@example.net",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.net",
        "Diagnostic-Code": "smtp; 550 5.1.1 no such user",
        "Last-Attempt-Date": "Wed, 25 Nov 2026 12:00:00 +0000",
    }
    assert headers.get_content_type() == "text/rfc822-headers"
    original_headers = headers.get_content()
    assert "Message-ID: <b1@example.org>" in original_headers
    assert "secret numbers" not in original_headers  # only the header section comes back


def test_delay_and_failure_of_several_recipients_in_one_dsn() -> None:
    retry_until = NOW + timedelta(hours=16)
    delayed = failed(
        "carol@example.net",
        action="delayed",
        status="4.4.1",
        diagnostic="X-Postwarden; connection refused",
        remote_mta=None,
        will_retry_until=retry_until,
    )
    message = parse(dsn(failed(), delayed))
    _, status, _ = message.iter_parts()
    _, bob, carol = fields(status)  # type: ignore[arg-type]
    assert bob["Action"] == "failed"
    assert carol["Action"] == "delayed" and carol["Status"] == "4.4.1"
    assert carol["Will-Retry-Until"] == "Thu, 26 Nov 2026 04:00:00 +0000"
    assert "Remote-MTA" not in carol
    assert message["Subject"].startswith("Undelivered mail")


def test_delay_only_dsn_says_no_action_is_needed() -> None:
    message = parse(dsn(failed(action="delayed", status="4.3.0", will_retry_until=NOW)))
    assert message["Subject"] == "Delayed mail (still trying): Budget"
    assert "No action is needed" in next(message.iter_parts()).get_content()


def test_utf8_addresses_use_the_global_types() -> None:
    original = "From: jörg@exämple.org\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    message = parse(dsn(failed("zoë@exämple.net"), sender="jörg@exämple.org", original=original))
    _, status, headers = message.iter_parts()
    assert status.get_content_type() == "message/global-delivery-status"
    assert headers.get_content_type() == "message/global-headers"
    assert "Final-Recipient: utf-8; zoë@exämple.net" in status.as_bytes().decode()


def test_long_diagnostics_are_cut_so_no_line_exceeds_the_limit() -> None:
    raw = dsn(failed(diagnostic="smtp; 550 " + "x" * 5000))
    assert max(len(line) for line in raw.split(b"\r\n")) < 998


def test_message_without_a_body_still_gets_its_headers_back() -> None:
    message = parse(dsn(failed(), original=b"Subject: only headers\r\n"))
    *_, headers = message.iter_parts()
    assert "Subject: only headers" in headers.get_content()


def test_where_dsns_go(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert dsn_mailbox(config, "admin", False, False) == DSNMailbox("admin", "Inbox", seen=False)
    assert dsn_mailbox(config, "admin", True, False) == DSNMailbox("admin", "Postmaster/dmarc", seen=True)
    assert dsn_mailbox(config, None, False, True) == DSNMailbox("admin", "Postmaster/tlsrpt", seen=True)
    # Not one of our accounts: no DSN at all (never back into the queue to a stranger).
    assert dsn_mailbox(config, None, False, False) is None
    assert dsn_mailbox(config, "removed-account", False, False) is None
