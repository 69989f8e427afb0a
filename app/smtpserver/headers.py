"""Header work on incoming messages: the Received trace field we prepend."""

from __future__ import annotations

import ipaddress
import re
from email.utils import format_datetime
from functools import lru_cache

from app.models.base import utcnow

# The HELO name and the recipient are the client's text: no part of the field may end it early (CR, LF)
# or hide characters (controls). Words are written as printable ASCII, the recipient only if printable.
UNSAFE_IN_TRACE = re.compile(r"[^\x21-\x7e]")
UNSAFE_IN_COMMENT = re.compile(r"[^\x20-\x27\x2a-\x5b\x5d-\x7e]")  # also "(", ")" and "\\"
MAX_WORD = 255  # the longest domain name: no word of the field needs more
MAX_PATH = 254  # RFC 5321 4.5.3.1.3: 256 octets with the angle brackets


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

    The recipient is named only when there is one (naming all would tell each who else got it), and
    only when it is printable and at most a path long (an SMTPUTF8 address stays UTF-8)."""
    lines = [
        f"Received: from {_word(helo)} ({_address_literal(remote_ip)})",
        f"\tby {_word(hostname)} with {_word(protocol)} id {_word(transaction_id)}",
    ]
    if tls:
        lines.append(f"\t({UNSAFE_IN_COMMENT.sub('?', tls)[:MAX_WORD]})")
    when = format_datetime(utcnow())
    recipient = recipients[0] if len(recipients) == 1 else ""
    if recipient and recipient.isprintable() and len(recipient.encode()) <= MAX_PATH:
        lines.append(f"\tfor <{recipient}>; {when}")
    else:
        lines[-1] += f"; {when}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _word(text: str) -> str:
    """A word of the field: unsafe characters (module doc, and spaces) as "?", at most MAX_WORD long."""
    return UNSAFE_IN_TRACE.sub("?", text)[:MAX_WORD] or "unknown"


@lru_cache(maxsize=4096)
def _address_literal(ip: str) -> str:
    """RFC 5321 4.1.3: `[192.0.2.1]` or `[IPv6:2001:db8::1]`, without an IPv6 zone; "unknown" if `ip`
    is not an address. Cached per address: every message asks, from a few clients' addresses (the
    ipaddress module parses in Python)."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return "unknown"
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


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
