"""The EHLO/HELO argument (RFC 5321 4.1.1.1): a domain name or an address literal, or a 501.

Checked before aiosmtpd acts on the command, which would reset the transaction first: a refused
greeting leaves the session as it was (RFC 5321 4.1.4). The argument is never echoed: it may carry
control characters or terminal escapes.
"""

from __future__ import annotations

import ipaddress
import re

# An EHLO/HELO domain (RFC 5321 4.1.2): ASCII labels (the client cannot have asked for SMTPUTF8 yet).
# The underscore, which host names may not contain, is let through: Windows machines send it, and it
# is harmless here. A final dot is tolerated.
_HELO_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HELO_DOMAIN = re.compile(rf"{_HELO_LABEL}(?:\.{_HELO_LABEL})*\.?")
# General-address-literal (RFC 5321 4.1.3): Standardized-tag ":" 1*dcontent.
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
MAX_HELO = 255


def greeting_problem(command: str, argument: str) -> str | None:
    """The 501 refusing an EHLO/HELO argument that is not a domain name or address literal, or None.

    No enhanced status code: RFC 2034 leaves the replies to EHLO and HELO without one. The argument
    is not echoed (it may carry control characters or terminal escapes)."""
    if len(argument) <= MAX_HELO and (_HELO_DOMAIN.fullmatch(argument) or _is_address_literal(argument)):
        return None
    return (
        f"501 Syntax: {command} domain-name or [address literal] (printable ASCII without spaces, "
        f"at most {MAX_HELO} characters; RFC 5321 4.1.1.1)"
    )


def _is_address_literal(argument: str) -> bool:
    """`[IPv4]`, `[IPv6:address]` or a general `[tag:content]` literal (RFC 5321 4.1.3)."""
    if not (argument.startswith("[") and argument.endswith("]")):
        return False
    content = argument[1:-1]
    try:
        if content[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(content[5:])
        elif not _GENERAL_LITERAL.fullmatch(content):
            ipaddress.IPv4Address(content)
    except ValueError:
        return False
    return True
