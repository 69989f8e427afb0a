"""SPF (RFC 7208) evaluated asynchronously on app/dns.py, so the SMTP event loop never waits on DNS.

`check_host` is RFC 7208 section 4 for one identity; `check_mailfrom_and_helo` checks both identities
of an SMTP transaction concurrently. The "exp" modifier is parsed and checked but its explanation is
not fetched (one lookup less on the hot path; the SMTP server writes its own reply texts).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

from app.auth.message import ascii_domain, is_subdomain
from app.auth.types import SPFResult, SPFStatus
from app.dns import Answer, DNSPermanentError, DNSTemporaryError, Resolver
from app.ipaddr import IPAddress, unmapped

Scope = Literal["mfrom", "helo"]

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4: include, a, mx, ptr, exists and redirect together
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4: lookups answering NXDOMAIN or no records
MAX_MX_NAMES = 10  # RFC 7208 4.6.4: more MX names than this is a permerror
MAX_PTR_NAMES = 10  # RFC 7208 4.6.4: PTR names beyond this are ignored
TIME_LIMIT = 20.0  # RFC 7208 4.6.4: an overall limit of at least 20 seconds

_RESULTS: dict[str, SPFStatus] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
# Terms are matched whole (fullmatch, DOTALL): with "(.*)$" a newline in a 64 KiB term made the
# pattern backtrack quadratically (seconds per record), and "$" also matched before a final newline.
_VERSION = re.compile(r"v=spf1(?: |\Z)", re.IGNORECASE)
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)
_MECHANISM = re.compile(r"([+?~-]?)([A-Za-z][A-Za-z0-9]*)(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?\Z")
_MACRO = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([-.+,/_=]*)\}")
# RFC 7208 7.1 toplabel: letters, digits and inner hyphens, not all digits. Checked on the last label
# alone: the ABNF as one pattern searched over the text backtracked quadratically on a long label.
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# Printable ASCII except '"', '(', ')', ';' and '\\', which DNS presentation format reads specially.
_MACRO_LABEL = re.compile(r"^[\x21\x23-\x27\x2a-\x3a\x3c-\x5b\x5d-\x7e]{1,63}$")
_DOMAIN_MECHANISMS = {"include", "a", "mx", "ptr", "exists"}


class SPFPermError(Exception):
    """The record or its evaluation is broken (syntax, limits): result "permerror"."""


class SPFTempError(Exception):
    """A DNS lookup failed temporarily: result "temperror"."""


# Parsed records.


@dataclass(frozen=True)
class Macro:
    letter: str  # lowercase macro letter
    digits: int | None  # keep this many right-hand parts
    reverse: bool
    delimiters: str
    url_escape: bool  # an uppercase letter asks for URL escaping (RFC 7208 7.3)


MacroString = tuple[str | Macro, ...]


@dataclass(frozen=True)
class Directive:
    qualifier: str
    mechanism: str
    domain_spec: MacroString | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class Record:
    directives: tuple[Directive, ...]
    redirect: MacroString | None = None
    exp: MacroString | None = None


def is_spf_record(text: str) -> bool:
    return bool(_VERSION.match(text))


def parse_record(text: str) -> Record:
    """Parse a "v=spf1" record; any syntax error anywhere raises SPFPermError (RFC 7208 4.6)."""
    if not is_spf_record(text):
        raise SPFPermError("not an SPF record (no v=spf1)")
    directives: list[Directive] = []
    modifiers: dict[str, MacroString] = {}
    for term in text[6:].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise SPFPermError(f"{name}= appears more than once")
                modifiers[name] = parse_domain_spec(value)
            else:
                parse_macro_string(value)  # unknown modifiers are ignored, but must be well-formed
            continue
        directives.append(_parse_directive(term))
    return Record(tuple(directives), modifiers.get("redirect"), modifiers.get("exp"))


def _parse_directive(term: str) -> Directive:
    match = _MECHANISM.fullmatch(term)
    if not match:
        raise SPFPermError(f"invalid term {term!r}")
    qualifier, name, rest = match.group(1) or "+", match.group(2).lower(), match.group(3)
    if name == "all":
        if rest:
            raise SPFPermError(f"invalid term {term!r}")
        return Directive(qualifier, name)
    if name in ("ip4", "ip6"):
        return Directive(qualifier, name, network=_parse_network(name, rest, term))
    if name not in _DOMAIN_MECHANISMS:
        raise SPFPermError(f"unknown mechanism {name!r}")
    cidr4, cidr6 = 32, 128
    if name in ("a", "mx"):
        cidr = _DUAL_CIDR.search(rest)
        assert cidr is not None  # every part of the pattern is optional, so it always matches
        rest = rest[: cidr.start()]
        cidr4 = int(cidr.group(1) or 32)
        cidr6 = int(cidr.group(2) or 128)
        if cidr4 > 32 or cidr6 > 128:
            raise SPFPermError(f"invalid CIDR length in {term!r}")
    if not rest:
        if name in ("include", "exists"):
            raise SPFPermError(f"{name} needs a domain: {term!r}")
        return Directive(qualifier, name, cidr4=cidr4, cidr6=cidr6)
    if not rest.startswith(":"):
        raise SPFPermError(f"invalid term {term!r}")
    return Directive(qualifier, name, parse_domain_spec(rest[1:]), cidr4=cidr4, cidr6=cidr6)


def _parse_network(name: str, rest: str, term: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not rest.startswith(":") or "%" in rest:
        raise SPFPermError(f"invalid term {term!r}")
    address, slash, length = rest[1:].partition("/")
    max_length = 32 if name == "ip4" else 128
    if slash and not re.fullmatch(r"0|[1-9][0-9]{0,2}", length):
        raise SPFPermError(f"invalid CIDR length in {term!r}")
    try:
        ip = ipaddress.IPv4Address(address) if name == "ip4" else ipaddress.IPv6Address(address)
    except ValueError:
        raise SPFPermError(f"invalid address in {term!r}") from None
    prefix = int(length) if slash else max_length
    if prefix > max_length:
        raise SPFPermError(f"invalid CIDR length in {term!r}")
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)


def parse_macro_string(text: str) -> MacroString:
    """RFC 7208 7.1 macro-string; letters c, r and t are only valid in explanations, not accepted here."""
    parts: list[str | Macro] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            escape = {"%%": "%", "%_": " ", "%-": "%20"}.get(text[i : i + 2])
            if escape is not None:
                parts.append(escape)
                i += 2
                continue
            match = _MACRO.match(text, i)
            if not match:
                raise SPFPermError(f"invalid macro in {text!r}")
            parts.append(_macro(match, text))
            i = match.end()
        elif "\x21" <= char <= "\x7e":
            parts.append(char)
            i += 1
        else:
            raise SPFPermError(f"invalid character {char!r} in {text!r}")
    return tuple(parts)


def _macro(match: re.Match[str], text: str) -> Macro:
    letter, digits, reverse, delimiters = match.groups()
    if letter.lower() not in "slodiphv":
        raise SPFPermError(f"macro letter {letter!r} not allowed in {text!r}")
    return Macro(letter.lower(), _parts_to_keep(digits, text), bool(reverse), delimiters, letter.isupper())


def _parts_to_keep(digits: str, text: str) -> int | None:
    """A macro's digit transformer. A name has at most 127 labels, so any number of 4 or more digits
    keeps them all: it is not converted (int() refuses strings of over 4300 digits)."""
    if not digits:
        return None
    significant = digits.lstrip("0")
    if not significant:
        raise SPFPermError(f"macro with zero parts in {text!r}")
    return int(significant) if len(significant) <= 3 else 1000


def parse_domain_spec(text: str) -> MacroString:
    spec = parse_macro_string(text)
    if not spec:
        raise SPFPermError("empty domain-spec")
    ends_with_expand = isinstance(spec[-1], Macro) or text.endswith(("%%", "%_", "%-"))
    if not ends_with_expand and not _has_domain_end(text):
        raise SPFPermError(f"invalid domain-spec {text!r} (it must end in a dot and a top label)")
    return spec


def _has_domain_end(text: str) -> bool:
    """RFC 7208 7.1 domain-end for a literal ending: "." toplabel ["."]."""
    _, dot, top = text.removesuffix(".").rpartition(".")
    return bool(dot) and bool(_LDH_LABEL.fullmatch(top)) and ("-" in top or not top.isdigit())


# Evaluation.


@dataclass
class _Evaluation:
    """The state shared by one check_host() call and all the includes and redirects it follows."""

    resolver: Resolver
    ip: IPAddress
    sender: str
    local_part: str
    sender_domain: str
    helo: str
    dns_terms: int = 0
    void_lookups: int = 0
    # The client's PTR names and those of them that were validated, once looked up (ptr and %{p}).
    ptr_names: tuple[list[str], list[str]] | None = None

    def count_dns_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise SPFPermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    def count_void(self) -> None:
        self.void_lookups += 1
        if self.void_lookups > MAX_VOID_LOOKUPS:
            raise SPFPermError(f"more than {MAX_VOID_LOOKUPS} void DNS lookups")

    async def addresses(self, name: str, *, count_void: bool) -> list[str]:
        """The A or AAAA records of `name`, for the client's address family."""
        lookup = self.resolver.a if self.ip.version == 4 else self.resolver.aaaa
        records = (await _dns(lookup, name)).records
        if not records and count_void:
            self.count_void()
        return list(records)


_NO_ANSWER = Answer(nxdomain=True)


async def _dns(lookup: Callable[[str], Awaitable[Answer]], name: str) -> Answer:
    """A lookup for SPF: a temporary DNS error is a temperror, a name DNS cannot carry finds nothing."""
    if not name:
        return _NO_ANSWER
    try:
        return await lookup(name)
    except DNSTemporaryError as e:
        raise SPFTempError(str(e)) from None
    except DNSPermanentError:
        return _NO_ANSWER


async def check_host(
    resolver: Resolver, ip: str, domain: str, sender: str, helo: str, scope: Scope
) -> SPFResult:
    """RFC 7208 check_host(): the SPF result for `ip` sending as `sender` from `domain`.

    `sender` is the full MAIL FROM address (or postmaster@<helo> for the HELO identity); its
    local-part defaults to "postmaster" (RFC 7208 4.3). Raises ValueError only for an invalid `ip`.
    """
    client = _client_address(ip)
    name = ascii_domain(domain)
    local, _, sender_domain = sender.rpartition("@")
    local, sender_domain = local or "postmaster", sender_domain or name
    evaluation = _Evaluation(resolver, client, f"{local}@{sender_domain}", local, sender_domain, helo.lower())
    checked = name or domain.strip()
    if not name or "." not in name:
        return SPFResult("none", checked, scope, reason="not a valid multi-label domain name")
    try:
        async with asyncio.timeout(TIME_LIMIT):
            status, reason = await _check(evaluation, name)
    except SPFPermError as e:
        return SPFResult("permerror", checked, scope, reason=str(e))
    except SPFTempError as e:
        return SPFResult("temperror", checked, scope, reason=str(e))
    except TimeoutError:
        return SPFResult("temperror", checked, scope, reason=f"evaluation took over {TIME_LIMIT:.0f} s")
    return SPFResult(status, checked, scope, reason=reason)


def _client_address(ip: str) -> IPAddress:
    return unmapped(ipaddress.ip_address(ip.strip().strip("[]")))  # RFC 7208 5: mapped is IPv4


async def _check(evaluation: _Evaluation, domain: str) -> tuple[SPFStatus, str]:
    """check_host() for `domain`: pass/fail/softfail/neutral/none, or raise for the error results."""
    record = await _fetch_record(evaluation, domain)
    if record is None:
        return "none", f"no SPF record at {domain}"
    for directive in record.directives:
        if await _matches(evaluation, directive, domain):
            return _RESULTS[directive.qualifier], f"matched {_describe(directive)} at {domain}"
    if record.redirect is not None:
        evaluation.count_dns_term()
        target = await _expand_domain(evaluation, record.redirect, domain)
        status, reason = await _check(evaluation, target) if target else ("none", "")
        if status == "none":
            raise SPFPermError(f"redirect from {domain} to {target or 'an invalid name'} has no SPF record")
        return status, reason
    return "neutral", f"no term matched at {domain}"


async def _fetch_record(evaluation: _Evaluation, domain: str) -> Record | None:
    answer = await _dns(evaluation.resolver.txt, domain)
    records = [text for text in answer.records if is_spf_record(text)]
    if not records:
        return None
    if len(records) > 1:
        raise SPFPermError(f"{len(records)} SPF records at {domain}")
    try:
        return parse_record(records[0])
    except SPFPermError as e:
        raise SPFPermError(f"{domain}: {e}") from None


def _describe(directive: Directive) -> str:
    qualifier = "" if directive.qualifier == "+" else directive.qualifier
    return f"{qualifier}{directive.mechanism}"


async def _matches(evaluation: _Evaluation, directive: Directive, domain: str) -> bool:
    mechanism = directive.mechanism
    if mechanism == "all":
        return True
    if mechanism in ("ip4", "ip6"):
        return directive.network is not None and evaluation.ip in directive.network
    evaluation.count_dns_term()
    target = domain
    if directive.domain_spec is not None:
        target = await _expand_domain(evaluation, directive.domain_spec, domain)
    if mechanism == "include":
        return await _include(evaluation, target)
    if mechanism == "a":
        addresses = await evaluation.addresses(target, count_void=True)
        return _in_any(evaluation.ip, addresses, directive)
    if mechanism == "mx":
        return await _mx(evaluation, target, directive)
    if mechanism == "ptr":
        names, validated = await _ptr_names(evaluation)
        if not names:
            evaluation.count_void()
        return any(is_subdomain(name, target) for name in validated)
    # exists: an A query whatever the client's address family (RFC 7208 5.7).
    answer = await _dns(evaluation.resolver.a, target)
    if not answer.records:
        evaluation.count_void()
    return bool(answer.records)


async def _include(evaluation: _Evaluation, target: str) -> bool:
    status, _ = await _check(evaluation, target) if target else ("none", "")
    if status == "none":
        raise SPFPermError(f"include of {target or 'an invalid name'} has no SPF record")
    return status == "pass"


async def _mx(evaluation: _Evaluation, target: str, directive: Directive) -> bool:
    answer = await _dns(evaluation.resolver.mx, target)
    if not answer.records:
        evaluation.count_void()
        return False
    if len(answer.records) > MAX_MX_NAMES:
        raise SPFPermError(f"{target} has more than {MAX_MX_NAMES} MX records")
    # A null MX (RFC 7505, host ".") names no host.
    hosts = [mx.host for mx in answer.records if mx.host not in ("", ".")]
    lists = await asyncio.gather(*(evaluation.addresses(h, count_void=False) for h in hosts))
    return any(_in_any(evaluation.ip, addresses, directive) for addresses in lists)


def _in_any(ip: IPAddress, addresses: list[str], directive: Directive) -> bool:
    prefix = directive.cidr4 if ip.version == 4 else directive.cidr6
    for address in addresses:
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        if ip in network:
            return True
    return False


async def _ptr_names(evaluation: _Evaluation) -> tuple[list[str], list[str]]:
    """The client's PTR names, and those whose forward lookup gives the client's address back
    (RFC 7208 5.5), looked up once per evaluation."""
    if evaluation.ptr_names is not None:
        return evaluation.ptr_names
    try:
        names = (await evaluation.resolver.ptr(str(evaluation.ip)))[:MAX_PTR_NAMES]
    except (DNSTemporaryError, DNSPermanentError):
        names = []  # a PTR lookup error makes the mechanism not match (RFC 7208 5.5)

    async def confirmed(name: str) -> bool:
        try:
            return str(evaluation.ip) in await evaluation.addresses(name, count_void=False)
        except SPFTempError:
            return False  # a failed forward lookup skips that name (RFC 7208 5.5)

    results = await asyncio.gather(*(confirmed(n) for n in names))
    evaluation.ptr_names = names, [name for name, ok in zip(names, results, strict=True) if ok]
    return evaluation.ptr_names


# Macro expansion (RFC 7208 7).


async def _expand_domain(evaluation: _Evaluation, spec: MacroString, domain: str) -> str:
    """Expand a domain-spec; "" if the result cannot be a DNS name (a lookup on it finds nothing)."""
    expanded = (await _expand(evaluation, spec, domain)).rstrip(".")
    if not expanded.isascii():
        expanded = ascii_domain(expanded)
    expanded = _truncate_left(expanded)
    # Macros put local-parts into names: printable labels are fine for DNS.
    if not all(_MACRO_LABEL.match(label) for label in expanded.split(".")):
        return ""
    return expanded


def _truncate_left(name: str) -> str:
    """RFC 7208 7.3: labels are dropped from the left until the name is at most 253 characters: what
    stays is what follows the first dot among the last 254 characters. In one step, as an expansion
    can be megabytes of labels (thousands of macros in a record, each a local part of many labels)."""
    if len(name) <= 253:
        return name
    dot = name.find(".", len(name) - 254)
    return name[dot + 1 :] if dot >= 0 else ""


async def _expand(evaluation: _Evaluation, spec: MacroString, domain: str) -> str:
    out = []
    for part in spec:
        if isinstance(part, str):
            out.append(part)
            continue
        value = await _macro_value(evaluation, part.letter, domain)
        pieces = re.split("[" + re.escape(part.delimiters or ".") + "]", value)
        if part.reverse:
            pieces.reverse()
        if part.digits is not None:
            pieces = pieces[-part.digits :]
        text = ".".join(pieces)
        out.append(urllib.parse.quote(text, safe="") if part.url_escape else text)
    return "".join(out)


async def _macro_value(evaluation: _Evaluation, letter: str, domain: str) -> str:
    ip = evaluation.ip
    if letter == "i":
        return str(ip) if ip.version == 4 else ".".join(ip.exploded.replace(":", ""))
    if letter == "p":
        return await _validated_domain(evaluation, domain)
    values = {
        "s": evaluation.sender,
        "l": evaluation.local_part,
        "o": evaluation.sender_domain,
        "d": domain,
        "v": "in-addr" if ip.version == 4 else "ip6",
        "h": evaluation.helo,
    }
    return values[letter]


async def _validated_domain(evaluation: _Evaluation, domain: str) -> str:
    """%{p}: a validated name of the client, preferring `domain` and its subdomains (RFC 7208 7.3)."""
    _, names = await _ptr_names(evaluation)
    for candidates in ([n for n in names if n == domain], [n for n in names if is_subdomain(n, domain)]):
        if candidates:
            return candidates[0]
    return names[0] if names else "unknown"


# The SMTP server's entry point.


async def check_mailfrom_and_helo(
    resolver: Resolver, ip: str, mail_from: str, helo: str
) -> tuple[SPFResult, SPFResult]:
    """SPF for the MAIL FROM and the HELO identities, checked concurrently.

    An empty MAIL FROM (`""` or `"<>"`) is the mailbox postmaster@<helo> (RFC 7208 2.4), so its result
    is the HELO check's. A HELO that is an address literal cannot be checked: result "none".
    """
    mail_from = mail_from.strip().removeprefix("<").removesuffix(">")
    helo_name = helo.strip()
    helo_is_literal = _is_address_literal(helo_name)

    async def helo_check(scope: Scope) -> SPFResult:
        if helo_is_literal:
            return SPFResult("none", helo_name, scope, reason="HELO is an address literal")
        return await check_host(resolver, ip, helo_name, f"postmaster@{helo_name}", helo_name, scope)

    if not mail_from:
        helo_result = await helo_check("helo")
        return replace(helo_result, scope="mfrom"), helo_result
    domain = mail_from.rpartition("@")[2]
    return await asyncio.gather(
        check_host(resolver, ip, domain, mail_from, helo_name, "mfrom"), helo_check("helo")
    )


def _is_address_literal(helo: str) -> bool:
    text = helo.strip("[]")
    text = text[5:] if text.lower().startswith("ipv6:") else text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
