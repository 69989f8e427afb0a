"""Header work on incoming messages: the Received trace field we prepend."""

from __future__ import annotations

import re
from email.utils import format_datetime

from app.models.base import utcnow

UNSAFE_IN_TRACE = re.compile(r"[^\x21-\x7e]")


def received_header(
    *,
    helo: str,
    remote_ip: str,
    hostname: str,
    protocol: str,
    transaction_id: str,
    recipients: list[str],
    tls: str | None = None,
) -> bytes:
    """A Received field (RFC 5321 4.4) with `protocol` from RFC 3848/6531 (ESMTP, ESMTPS, UTF8SMTPSA, ...).

    The recipient is named only when there is one (naming all would tell each who else got it)."""
    client = UNSAFE_IN_TRACE.sub("?", helo)[:255] or "unknown"
    lines = [
        f"Received: from {client} ([{remote_ip}])",
        f"\tby {hostname} with {protocol} id {transaction_id}",
    ]
    if tls:
        lines.append(f"\t({tls})")
    when = format_datetime(utcnow())
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {when}")
    else:
        lines[-1] += f"; {when}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def smtp_protocol(*, smtputf8: bool, extended: bool, tls: bool, authenticated: bool) -> str:
    """The `with` keyword of a Received field (RFC 3848 for ESMTP[S][A], RFC 6531 3.7.3 for UTF8SMTP)."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def tls_description(ssl_info: dict[str, object] | None) -> str | None:
    """`using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384` from aiosmtpd's session.ssl, or None."""
    if not ssl_info:
        return None
    cipher = ssl_info.get("cipher")
    if isinstance(cipher, tuple) and len(cipher) >= 2:
        return f"using {cipher[1]} with cipher {cipher[0]}"
    return "using TLS"
