"""The parts of a raw message that authentication and storage need: header fields, the RFC5322.From
author, and the Message-ID and Subject we index.

Only the header section is looked at, and nothing here raises on junk input: a message that does not
have exactly one usable author domain gets an empty domain and a `problem` saying why.

Field names are read as RFC 5322 4.5.3 allows (obs-optional): white space may stand between the name
and its colon, and readers that honour this see `From : Bob <bob@...>` as a From field. Reading them
so here makes such a field count wherever From fields are counted (one author, RFC 9989).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import errors as email_errors
from email import policy
from email.header import decode_header, make_header
from functools import lru_cache

import idna

from app.address import AddressError, validate_address
from app.logs import escape_control

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_SPLIT = re.compile(rb"\r?\n")
# field-name, then (obsolete syntax) optional WSP, then the colon.
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)([ \t]*):(.*)$", re.DOTALL)
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# The stdlib address parser is slow on long lists (about 2 s for 100 KB, blocking the event loop): the
# From field of a single author never needs this much, so a longer one is refused without parsing.
MAX_FROM_LENGTH = 2048


@dataclass(frozen=True)
class Author:
    """The RFC5322.From author. `domain` is set when exactly one author domain can be extracted (RFC 9989,
    "Extract Author Domain"), `address` only when there is exactly one address; `problem` says why not."""

    address: str = ""
    domain: str = ""
    problem: str = ""


def header_section(message: bytes) -> bytes:
    match = _HEADER_END.search(message)
    return message if match is None else message[: match.start()]


def header_fields(message: bytes) -> list[tuple[str, str]]:
    """Unfolded (name, value) pairs in message order; lines that are not fields are skipped."""
    fields: list[tuple[bytes, bytes]] = []
    for line in _LINE_SPLIT.split(header_section(message)):
        if line[:1] in (b" ", b"\t"):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + b" " + line.strip())
            continue
        match = _FIELD.match(line)
        if match:
            fields.append((match.group(1), match.group(3).strip()))
    return [(n.decode("ascii"), v.decode("utf-8", errors="replace")) for n, v in fields]


def obsolete_field_names(message: bytes) -> list[str]:
    """Names of the header fields written with white space before the colon (RFC 5322 4.5.3)."""
    names = []
    for line in _LINE_SPLIT.split(header_section(message)):
        match = _FIELD.match(line)
        if match and match.group(2):
            names.append(match.group(1).decode("ascii"))
    return names


def ascii_domain(domain: str) -> str:
    """A domain as lowercase A-labels without the final dot, or "" if it is not a usable domain name."""
    name = domain.strip().rstrip(".")
    if not name or len(name) > 253:
        return ""
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return ""
    name = name.lower()
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return ""
    return name


def checked_domain(name: str) -> str:
    """`name` if it is a domain in the form `ascii_domain` gives (so it is safe in a header field as it
    is), else ValueError: for names that came from mail or DNS and go into a message we compose."""
    if not name or ascii_domain(name) != name:
        raise ValueError(f"{name!r} is not a domain name in lowercase A-labels")
    return name


def is_subdomain(name: str, domain: str) -> bool:
    """`name` is `domain` or below it (both as returned by `ascii_domain`)."""
    return name == domain or name.endswith("." + domain)


HeaderFields = Sequence[tuple[str, str]]  # what header_fields returns


def author(message: bytes, fields: HeaderFields | None = None) -> Author:
    """The author of the message from its single From header field. `fields`: the message's
    header_fields, when the caller has them already."""
    fields = header_fields(message) if fields is None else fields
    values = [value for name, value in fields if name.lower() == "from"]
    if not values:
        return Author(problem="no From header field")
    if len(values) > 1:
        return Author(problem=f"{len(values)} From header fields")
    return _author_from_value(values[0])


def _author_from_value(value: str) -> Author:
    if len(value) > MAX_FROM_LENGTH:
        return Author(problem="From header field is too long")
    return _parsed_author(value)


@lru_cache(maxsize=4096)  # of values up to MAX_FROM_LENGTH: 8 Mi characters at the most
def _parsed_author(value: str) -> Author:
    """Cached per field value: the stdlib parser costs a good part of a millisecond, and mail from
    one sender repeats its From field (a sender varying it only misses the cache)."""
    try:
        header = policy.default.header_factory("from", value)
        addresses = header.addresses
        defects = header.defects
    except (email_errors.HeaderParseError, IndexError, ValueError, TypeError, AttributeError, RecursionError):
        # The stdlib parser raises on some junk ("a@", deeply nested comments); such a From is unusable.
        return Author(problem="From header field cannot be parsed")
    # "joe@a.example <evil@b.example>" parses as joe@a.example with a defect, while mail readers may
    # show the other address: an invalid From must not yield an author domain.
    if any(isinstance(d, email_errors.InvalidHeaderDefect) for d in defects):
        return Author(problem="From header field is malformed")
    if not addresses:
        return Author(problem="From header field has no address")
    domains = {ascii_domain(a.domain) for a in addresses}
    if "" in domains:
        return Author(problem="From address without a valid domain")
    if len(domains) > 1:
        return Author(problem="From header field has addresses in several domains")
    domain = domains.pop()
    if len(addresses) > 1:
        return Author(domain=domain, problem="From header field has several addresses")
    # The address is stored, logged and compared with our accounts: it must pass the strict check
    # (the domain alone, as RFC 9989 extracts it, is enough for DMARC).
    local_part = addresses[0].addr_spec.rpartition("@")[0]
    try:
        address = validate_address(f"{local_part}@{domain}", smtputf8=True)
    except AddressError as e:
        return Author(domain=domain, problem=f"From address is not usable: {e}")
    return Author(address=address, domain=domain)


@dataclass(frozen=True)
class HeaderSummary:
    message_id: str | None
    subject: str | None


def summarize_headers(message: bytes, fields: HeaderFields | None = None) -> HeaderSummary:
    """Message-ID and (decoded) Subject, the first of each, from the header section (`fields`: its
    header_fields, when the caller has them already)."""
    first: dict[str, str] = {}
    for name, value in header_fields(message) if fields is None else fields:
        first.setdefault(name.lower(), value)
    message_id = first.get("message-id")
    subject = first.get("subject")
    # Stored for listings: control characters (terminal escapes, line breaks) are kept as escapes.
    return HeaderSummary(
        message_id=escape_control(message_id)[:998] if message_id else None,
        subject=escape_control(_decode_subject(subject)) if subject is not None else None,
    )


def _decode_subject(text: str) -> str:
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeDecodeError):  # malformed encoded word: keep it as sent
        return text
