"""The one strict check for mail addresses that come from outside: DNS (rua URIs), SMTP (MAIL FROM,
RCPT TO) and messages (From). An address that passes may go into an SMTP command, a header field, a
log line or a database column as it is.

An address is an RFC 5321 Mailbox, `Local-part "@" Domain`:
- the local part is a Dot-string (atext atoms joined by single dots) or a Quoted-string (printable
  ASCII and space; a backslash quotes a printable character). With SMTPUTF8 (RFC 6531) non-ASCII
  characters may appear in either, except controls, format characters (bidi overrides, zero-width
  joiners), surrogates, private-use, unassigned code points and separators (spaces, U+2028): none is
  needed in a mailbox name and each can hide or reorder what a reader sees.
- the domain is a host name: dot-separated labels of letters, digits and hyphens (1 to 63 octets, no
  hyphen at either end), the last one not all digits. A non-ASCII domain (SMTPUTF8 only) must
  convert to such labels (IDNA A-labels). Address literals (`[192.0.2.1]`) are refused: none of our
  mail needs one, and they step around the domain checks (relay, SPF, DMARC, suppression).
- lengths: local part at most 64 octets, the whole address 254 (RFC 5321 4.5.3.1: a path is at most
  256 octets with its angle brackets), which keeps the domain within its 255; as A-labels, a
  non-ASCII domain must fit a DNS name (the IDNA conversion checks it).

Error messages never repeat the address, so they are safe in an SMTP reply; callers that name the
address escape it (app.logs.escape_control).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import idna

MAX_LOCAL_PART = 64
MAX_ADDRESS = 254

_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_STRING = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*")
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])+"')
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


class AddressError(ValueError):
    """Not a usable mail address; the message says why (without repeating the address)."""


class NeedsSMTPUTF8(AddressError):
    """A non-ASCII address where SMTPUTF8 was not asked for (RFC 6531)."""


def validate_address(address: str, *, smtputf8: bool = False) -> str:
    """The address normalised (`normalize_address`) if it is a valid Mailbox (module doc), else
    AddressError. Non-ASCII is allowed only with `smtputf8`."""
    # str.isprintable() is False for controls (C0, DEL, C1), format characters, line and paragraph
    # separators, spaces other than ASCII's, surrogates, private-use and unassigned code points.
    if not address.isprintable():
        raise AddressError("address contains a control character or another unprintable one")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise AddressError("address must be of the form local-part@domain")
    if not smtputf8 and not address.isascii():
        raise NeedsSMTPUTF8("a non-ASCII address needs SMTPUTF8 (RFC 6531)")
    if len(address.encode()) > MAX_ADDRESS:
        raise AddressError(f"address is longer than {MAX_ADDRESS} octets")
    _check_local_part(local)
    _check_domain(domain)
    return normalize_address(address)


def address_field(addresses: Iterable[str]) -> str:
    """The value of a To field naming `addresses`, for the messages we compose ourselves.

    Each address is checked again here (ASCII only: our reports are 7-bit), however it was obtained,
    so no CR, LF or other text can end the field early or add one: AddressError otherwise. A checked
    address is valid RFC 5322 addr-spec text as it is; this costs microseconds where the email
    package's header objects cost a millisecond per message."""
    return ", ".join(validate_address(address) for address in addresses)


# Three views of one address; every place that compares or stores addresses uses one of them:
# - normalize_address: what we store, send and match exactly (configured addresses, accounts, the
#   recipients our users sent to, TLSRPT report destinations);
# - address_key: for the places that match on purpose without the local part's case (inbound
#   recipients once the exact match failed, DMARC report destinations, the report suppression list);
# - address_domain: the domain alone, for domain columns and per-domain decisions.


def normalize_address(address: str) -> str:
    """The domain in lower case; the local part is kept as sent (RFC 5321 2.4: only its host may
    interpret it)."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def address_key(address: str) -> str:
    """The whole address in lower case, local part included: a key for matching case-insensitively
    where we are the host that may decide (RFC 5321 2.4) that "Admin@" and "admin@" are one mailbox.
    Only for comparing: what is stored or sent keeps its local part (`normalize_address`)."""
    return address.lower()


def address_domain(address: str) -> str:
    """The domain of an address in lower case (the text after the last "@"; all of it without one)."""
    return address.rpartition("@")[2].lower()


def _check_local_part(local: str) -> None:
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError(f"local part is longer than {MAX_LOCAL_PART} octets")
    # Non-ASCII characters (printable: checked) count as atext and qtext (RFC 6531 3.3).
    shape = _NON_ASCII.sub("a", local)
    if not (_DOT_STRING.fullmatch(shape) or _QUOTED_STRING.fullmatch(shape)):
        raise AddressError("local part must be a dot-atom or a quoted string (RFC 5321 4.1.2)")


def _check_domain(domain: str) -> None:
    if domain.startswith("["):
        raise AddressError("address literals such as [192.0.2.1] are not accepted; use a domain name")
    name = domain
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):  # also when its A-labels are longer than a DNS name
            raise AddressError("domain is not a valid internationalised domain name (IDNA)") from None
    labels = name.lower().split(".")
    if not all(_LDH_LABEL.fullmatch(label) for label in labels):
        raise AddressError(
            "domain must be a host name: labels of 1 to 63 letters, digits and hyphens, joined by dots"
        )
    if labels[-1].isdigit():
        raise AddressError("domain's last label is all digits, so it is not a host name")
