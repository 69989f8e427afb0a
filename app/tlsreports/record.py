"""The TLSRPT policy record `_smtp._tls.<policy domain>` TXT `v=TLSRPTv1; rua=...` (RFC 8460 §3).

Parsing follows the ABNF of §3: the version first (case-sensitive), fields separated by `*WSP ";" *WSP`,
an optional trailing delimiter, at least one `rua` field (more are grammatical: their URIs add up),
extensions `name=value` that we ignore. Of several TXT records, those not starting with the version are
discarded; if not exactly one remains, or it is invalid, the domain has no usable TLSRPT policy.

Each mailto address (percent-decoded, RFC 6068) must pass the strict check of app/address.py: it
goes into a report's To field and our RCPT TO. URIs are quoted in reasons with repr(), so control
characters in them never reach a log line raw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote, urlsplit

from app.address import AddressError, validate_address
from app.dns import DNSError, TXTSource

VERSION = "v=TLSRPTv1"
# A field delimiter directly after the version: `v=TLSRPTv1;` or `v=TLSRPTv1 ;`.
_VERSION_PREFIX = re.compile(r"v=TLSRPTv1[ \t]*;")
_EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# Any visible character except "=" and ";" (RFC 8460 §3 tlsrpt-ext-value).
_EXTENSION_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")


class TLSRPTRecordError(ValueError):
    """The record is not valid TLSRPT; the message says why, for the log."""


@dataclass(frozen=True)
class TLSRPTRecord:
    """A parsed record: where reports go. `ignored` lists rua URIs we cannot send to, with the reason."""

    mailto: tuple[str, ...] = ()
    https: tuple[str, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()

    @property
    def destinations(self) -> tuple[str, ...]:
        """Usable URIs, normalised: `mailto:<address>` and https URLs, in record order within each kind."""
        return tuple(f"mailto:{a}" for a in self.mailto) + self.https


class LookupStatus(StrEnum):
    OK = "ok"
    NONE = "none"  # no TLSRPT record: the domain does not ask for reports
    INVALID = "invalid"  # records exist but none usable (syntax, several records, no usable rua)
    TEMPERROR = "temperror"  # DNS could not answer now; try again on a later run


@dataclass(frozen=True)
class TLSRPTLookup:
    status: LookupStatus
    record: TLSRPTRecord | None = None
    reason: str = ""
    found: tuple[str, ...] = field(default=())


def _mailto_addresses(uri: str) -> list[str]:
    """The addresses of a mailto: URI (RFC 6068: percent-encoded, comma-separated, `?` starts headers)."""
    to = unquote(uri[len("mailto:") :].split("?", 1)[0])
    addresses = []
    for address in (a.strip() for a in to.split(",") if a.strip()):
        try:
            # Reports are sent without SMTPUTF8: a receiver need not support it.
            valid = validate_address(address)
        except AddressError as e:
            raise TLSRPTRecordError(f"rua {uri!r}: {address!r} is not an email address: {e}") from None
        if " " in valid:  # a quoted local part: valid, but no destination URI may contain a space
            raise TLSRPTRecordError(f"rua {uri!r}: addresses with a space are not supported for reports")
        addresses.append(valid)
    return addresses


def _https_host(uri: str) -> str | None:
    try:
        return urlsplit(uri).hostname
    except ValueError:  # e.g. "https://[x": an unclosed IPv6 literal
        return None


def _add_uri(uri: str, mailto: list[str], https: list[str], ignored: list[tuple[str, str]]) -> None:
    if not _URI_SCHEME.match(uri):
        raise TLSRPTRecordError(f"rua value {uri!r} is not a URI")
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "mailto":
        try:
            # Duplicates compared as normalised (normalize_address: the local part's case kept),
            # unlike DMARC's rua list, which compares with address_key.
            mailto += [a for a in _mailto_addresses(uri) if a not in mailto]
        except TLSRPTRecordError as e:
            ignored.append((uri, str(e)))
    elif scheme == "https":
        if not _PRINTABLE_ASCII.fullmatch(uri):  # urlsplit() would silently drop a CR, LF or TAB
            ignored.append((uri, "https URI with a control character, space or non-ASCII character"))
        elif not _https_host(uri):
            ignored.append((uri, "https URI without a (valid) host"))
        elif uri not in https:
            https.append(uri)
    else:
        ignored.append((uri, f"unsupported URI scheme {scheme!r} (only mailto and https)"))


def _split(text: str, delimiter: str) -> list[str]:
    """`text` split at `delimiter` with the blanks around each one removed (RFC 8460 §3 `*WSP`); done by
    hand because a regex split that takes the blanks along is quadratic in a long run of them."""
    return [piece.strip(" \t") for piece in text.split(delimiter)]


def parse_tlsrpt_record(text: str) -> TLSRPTRecord:
    """Parse one TXT value; raise TLSRPTRecordError if it is not a valid TLSRPT record."""
    if not _VERSION_PREFIX.match(text):
        raise TLSRPTRecordError(f"record does not start with {VERSION!r} and a ';'")
    fields = _split(text[len(VERSION) :].lstrip(" \t")[1:].strip(" \t"), ";")
    if fields and fields[-1] == "":
        fields.pop()  # the trailing delimiter the ABNF allows
    mailto: list[str] = []
    https: list[str] = []
    ignored: list[tuple[str, str]] = []
    seen_rua = False
    for item in fields:
        name, eq, value = item.partition("=")
        if name == "rua" and eq:
            seen_rua = True
            for uri in _split(value, ","):
                _add_uri(uri, mailto, https, ignored)
        elif not (eq and _EXTENSION_NAME.fullmatch(name) and _EXTENSION_VALUE.fullmatch(value)):
            raise TLSRPTRecordError(f"field {item!r} is not of the form name=value")
    if not seen_rua:
        raise TLSRPTRecordError("record has no rua field")
    return TLSRPTRecord(tuple(mailto), tuple(https), tuple(ignored))


def select_tlsrpt_record(values: list[str]) -> TLSRPTRecord:
    """The one TLSRPT record among a name's TXT values (RFC 8460 §3: exactly one, else none at all)."""
    candidates = [v for v in values if _VERSION_PREFIX.match(v)]
    if len(candidates) > 1:
        raise TLSRPTRecordError(f"{len(candidates)} TLSRPT records published; senders must use none")
    if not candidates:
        raise TLSRPTRecordError("no TXT value starts with 'v=TLSRPTv1;'")
    record = parse_tlsrpt_record(candidates[0])
    if not record.destinations:
        reasons = "; ".join(f"{uri!r}: {why}" for uri, why in record.ignored)
        raise TLSRPTRecordError(f"no usable rua URI ({reasons})")
    return record


def tlsrpt_name(policy_domain: str) -> str:
    return f"_smtp._tls.{policy_domain}"


async def lookup_tlsrpt(resolver: TXTSource, policy_domain: str) -> TLSRPTLookup:
    """Look up and parse the policy domain's TLSRPT record."""
    try:
        answer = await resolver.txt(tlsrpt_name(policy_domain))
    except DNSError as e:
        return TLSRPTLookup(LookupStatus.TEMPERROR, reason=str(e))
    values = list(answer.records)
    if not any(v.startswith("v=TLSRPTv1") for v in values):
        return TLSRPTLookup(LookupStatus.NONE, reason="no TLSRPT record", found=tuple(values))
    try:
        record = select_tlsrpt_record(values)
    except TLSRPTRecordError as e:
        return TLSRPTLookup(LookupStatus.INVALID, reason=str(e), found=tuple(values))
    return TLSRPTLookup(LookupStatus.OK, record=record, found=tuple(values))
