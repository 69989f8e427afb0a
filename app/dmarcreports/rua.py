"""Where a report goes: the rua URIs of a DMARC record (SPEC R2.5, RFC 9990 section 4).

Only `mailto:` URIs are used. The RFC 7489 size suffix (`!10m`) is obsolete in RFC 9989: the record
parser (app/auth/dmarc.py) accepts and drops it, so such records keep working. An address outside the
policy domain's organisation is used only if its domain confirms, with a `v=DMARC1` TXT record at
`<policy domain>._report._dmarc.<address domain>`, that it wants reports for the policy domain.

A URI comes from DNS, so from anyone: its percent-decoded address must pass the strict check of
app/address.py (a `%0D%0A` in it would otherwise end up in the report's To field and in RCPT TO),
and a URI is only ever quoted in reasons and logs with its control characters escaped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from app.address import AddressError, NeedsSMTPUTF8, address_key, validate_address
from app.auth.dmarc import DMARCRecordError, parse_record
from app.dns import DNSError, DNSTemporaryError, TXTSource
from app.logs import escape_control

OrgDomain = Callable[[str], Awaitable[str]]


class RUAError(ValueError):
    """A rua URI we cannot send to; the message is meant for the report's error entry and logs."""


@dataclass(frozen=True)
class Destination:
    """A mailto rua, parsed: the URI as published and the address reports go to."""

    uri: str  # control characters escaped: it is only shown
    address: str

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass
class Destinations:
    """The addresses a report goes to, and why others were left out."""

    addresses: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason), control characters escaped
    temporary_failure: bool = False  # some URI could not be checked now; another run may succeed


def parse_mailto(uri: str) -> Destination:
    """Parse one rua URI; RUAError if it is not a usable `mailto:` address."""
    text = uri.strip()
    shown = escape_control(text)
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() != "mailto":
        raise RUAError(f"{shown}: only mailto: report URIs are supported")
    # Header fields after "?" (RFC 6068) mean nothing for a report; the address is before them.
    local, at, domain = unquote(rest.partition("?")[0]).strip().rpartition("@")
    if not at or not local or not domain or "," in local or "," in domain:
        raise RUAError(f"{shown}: not a single mailto: address")
    try:
        address = validate_address(f"{local}@{domain.rstrip('.')}")
    except NeedsSMTPUTF8:
        raise RUAError(f"{shown}: addresses that need SMTPUTF8 are not supported for reports") from None
    except AddressError as e:
        raise RUAError(f"{shown}: not a usable mailto: address: {e}") from None
    domain = address.rpartition("@")[2]
    if "." not in domain:
        raise RUAError(f"{shown}: {domain!r} is not a domain name")
    return Destination(shown, address)


def verification_name(policy_domain: str, address_domain: str) -> str:
    return f"{policy_domain}._report._dmarc.{address_domain}"


def confirmation_ruas(txt_records: list[str]) -> list[str] | None:
    """The rua URIs of the first record that starts with v=DMARC1 ([] without rua); None if none does."""
    for text in txt_records:
        try:
            return list(parse_record(text).rua)
        except DMARCRecordError:
            continue
    return None


async def verify_external(resolver: TXTSource, policy_domain: str, destination: Destination) -> list[str]:
    """The addresses to use for an external destination, after its confirmation (RFC 9990 section 4).

    Raises RUAError if the destination did not opt in, or its record names another host (then neither
    the original nor the override is used); DNSTemporaryError if the check must wait for another run.
    """
    name = verification_name(policy_domain, destination.domain)
    try:
        answer = await resolver.txt(name)
    except DNSTemporaryError:
        raise
    except DNSError as e:  # e.g. the constructed name exceeds DNS limits: no confirmation possible
        raise RUAError(f"{destination.uri}: cannot check {name}: {e}") from None
    ruas = confirmation_ruas(list(answer.records))
    if ruas is None:
        raise RUAError(
            f"{destination.uri}: {destination.domain} has not agreed to receive reports for "
            f"{policy_domain} (no v=DMARC1 record at {name})"
        )
    if not ruas:
        return [destination.address]
    overrides: list[str] = []
    for uri in ruas:
        override = parse_mailto(uri)
        if override.domain != destination.domain:
            raise RUAError(
                f"{destination.uri}: the record at {name} redirects reports to another host "
                f"({escape_control(uri)})"
            )
        overrides.append(override.address)
    return overrides


async def report_destinations(
    resolver: TXTSource, policy_domain: str, ruas: list[str], org_domain: OrgDomain
) -> Destinations:
    """Resolve a record's rua list into addresses, verifying external destinations."""
    result = Destinations()
    policy_org = await org_domain(policy_domain)
    for uri in ruas:
        try:
            destination = parse_mailto(uri)
            if await org_domain(destination.domain) == policy_org:
                addresses = [destination.address]
            else:
                addresses = await verify_external(resolver, policy_domain, destination)
        except RUAError as e:
            result.skipped.append((escape_control(uri), str(e)))
            continue
        except DNSTemporaryError as e:
            shown = escape_control(uri)
            result.skipped.append((shown, f"{shown}: temporary DNS error verifying the destination: {e}"))
            result.temporary_failure = True
            continue
        # One report per mailbox, however the record spells the local part's case (address_key).
        result.addresses += [
            a for a in addresses if address_key(a) not in {address_key(x) for x in result.addresses}
        ]
    return result
