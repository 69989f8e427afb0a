"""DMARC (RFC 9989, DMARCbis; RFC 7489 records keep working): records, the DNS Tree Walk, alignment, policy.

`discover_policy` finds the DMARC Policy Record of an Author Domain (it needs only the From domain, so
the SMTP server runs it alongside SPF and DKIM); `PolicyDiscovery.evaluate` then decides pass/fail from
the SPF and DKIM results. `evaluate` does both.

Result semantics: `status` is none (no record; DMARC does not apply), pass, fail, temperror (a DNS
lookup the decision needed failed, including a DKIM key or SPF lookup of an identifier that would have
aligned) or permerror (no single author domain in From: RFC 9989 leaves such messages out of scope,
and we report them as a permanent error; or a record whose p=/sp=/np= is unusable and has no rua=, which
RFC 9989 4.10.1 says gets no DMARC processing). On fail, `disposition` is what to apply: the published
policy, one level milder under t=y or legacy pct=0 (RFC 9989 tag "t"); `requested_disposition` is the
published one.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace
from typing import Literal, cast

from app.auth.message import ascii_domain, is_subdomain
from app.auth.types import Disposition, DKIMResult, DMARCRecord, DMARCResult, SPFResult
from app.dns import DNSPermanentError, DNSTemporaryError, Resolver, TXTSource

MAX_TREE_WALK_LABELS = 7  # RFC 9989 4.10: longer names jump to their 7-label suffix (at most 8 queries)
_DISPOSITIONS = ("none", "quarantine", "reject")
_MILDER: dict[Disposition, Disposition] = {"reject": "quarantine", "quarantine": "none", "none": "none"}
# RFC 3986 URIs are printable ASCII: anything else (a control, a non-ASCII letter) makes a value unusable.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+")
# RFC 9989 4.7 numbers: ASCII digits (str.isdigit also accepts "²", which int() refuses); leading
# zeros are dropped before the length check, so no value reaches int() with over 10 digits.
_NUMBER = re.compile(r"0*([0-9]{1,10})")
_FAILURE_OPTIONS = re.compile(r"^[01ds](?::[01ds])*$")


class DMARCRecordError(ValueError):
    """The text is not a DMARC record (it must start with the tag v=DMARC1)."""


# Records.


def parse_record(text: str) -> DMARCRecord:
    """Parse a DMARC Policy Record (RFC 9989 4.7). Only a missing or wrong leading v=DMARC1 is an error:
    unknown tags and unusable values are ignored (the latter listed in `invalid_tags`)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        name = name.strip().lower()
        if not tags and (name != "v" or value.strip() != "DMARC1"):
            raise DMARCRecordError(f"not a DMARC record (it must start with v=DMARC1): {text[:60]!r}")
        if equals and name and name not in tags:
            tags[name] = value.strip()
    invalid: list[str] = []

    def keyword(name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
        value = tags.get(name)
        if value is None:
            return default
        if value.lower() in allowed:
            return value.lower()
        invalid.append(name)
        return default

    def disposition(name: str) -> Disposition | None:
        return cast(Disposition | None, keyword(name, _DISPOSITIONS, None))

    def alignment(name: str) -> Literal["r", "s"]:
        return cast(Literal["r", "s"], keyword(name, ("r", "s"), "r"))

    def integer(name: str, high: int) -> int | None:
        value = tags.get(name)
        if value is None:
            return None
        number = _NUMBER.fullmatch(value)
        if number and int(number[1]) <= high:
            return int(number[1])
        invalid.append(name)
        return None

    fo = tags.get("fo", "0")
    if not _FAILURE_OPTIONS.match(fo):
        invalid.append("fo")
        fo = "0"
    pct = integer("pct", 100)
    return DMARCRecord(
        p=disposition("p"),
        sp=disposition("sp"),
        np=disposition("np"),
        adkim=alignment("adkim"),
        aspf=alignment("aspf"),
        testing=keyword("t", ("y", "n"), "n") == "y" or pct == 0,  # RFC 7489 pct=0 acts like t=y
        psd=cast(Literal["y", "n", "u"], keyword("psd", ("y", "n", "u"), "u")),
        rua=_uris(tags.get("rua", "")),
        ruf=_uris(tags.get("ruf", "")),
        fo=fo,
        ri=integer("ri", 2**32 - 1),
        pct=pct,
        raw=text,
        invalid_tags=tuple(invalid),
    )


def _uris(value: str) -> tuple[str, ...]:
    """The syntactically valid URIs of a rua=/ruf= list; the RFC 7489 size suffix "!10m" is dropped."""
    uris = (re.sub(r"![0-9]+[kmgt]?$", "", u.strip(), flags=re.IGNORECASE) for u in value.split(","))
    return tuple(u for u in uris if _URI.fullmatch(u))


def _usable(record: DMARCRecord) -> bool:
    """RFC 9989 4.10.1: a record without a valid p=, or with an invalid sp=/np=, applies only as p=none
    and only if it has a usable rua=."""
    return record.p is not None and not {"sp", "np"} & set(record.invalid_tags)


# The DNS Tree Walk (RFC 9989 4.10).


def tree_walk_targets(domain: str) -> list[str]:
    """The names a DNS Tree Walk from `domain` queries, in order: at most 8."""
    labels = domain.split(".")
    start = min(len(labels) - 1, MAX_TREE_WALK_LABELS)
    return [domain] + [".".join(labels[-count:]) for count in range(start, 0, -1)]


class DMARCRecords:
    """DMARC records by domain, each looked up at most once for one message."""

    def __init__(self, resolver: Resolver, txt: TXTSource | None = None) -> None:
        """`txt` looks the records up if given (a report run's BulkTXT), else the resolver does."""
        self._resolver = resolver
        self._txt = txt or resolver
        self._records: dict[str, DMARCRecord | None] = {}
        self._organizational: dict[str, str] = {}

    async def at(self, domain: str) -> DMARCRecord | None:
        if domain not in self._records:
            self._records[domain] = await self._lookup(domain)
        return self._records[domain]

    async def _lookup(self, domain: str) -> DMARCRecord | None:
        try:
            answer = await self._txt.txt(f"_dmarc.{domain}")
        except DNSPermanentError:
            return None  # a name DNS cannot carry has no record
        records = []
        for text in answer.records:
            try:
                records.append(parse_record(text))
            except DMARCRecordError:
                continue  # other TXT records at the name are not ours
        return records[0] if len(records) == 1 else None  # several records: all are discarded

    async def walk(self, start: str) -> list[tuple[str, DMARCRecord]]:
        """The records found walking up from `start`; the walk stops at a record with psd=y or psd=n."""
        found = []
        for target in tree_walk_targets(start):
            record = await self.at(target)
            if record is not None:
                found.append((target, record))
                if record.psd in ("y", "n"):
                    break
        return found

    async def organizational_domain(self, domain: str) -> str:
        """RFC 9989 4.10.2 (Identifier Alignment Evaluation): the Organizational Domain of `domain`."""
        if domain not in self._organizational:
            self._organizational[domain] = _select_organizational(domain, await self.walk(domain))
        return self._organizational[domain]

    async def exists(self, domain: str) -> bool:
        """RFC 9989: a domain does not exist when DNS answers NXDOMAIN (asked for A, AAAA and MX)."""
        lookups = (self._resolver.a(domain), self._resolver.aaaa(domain), self._resolver.mx(domain))
        return not all(answer.nxdomain for answer in await asyncio.gather(*lookups))


def _select_organizational(start: str, found: list[tuple[str, DMARCRecord]]) -> str:
    """RFC 9989's selection over the records of a walk (longest name first). The walk stops at psd=n,
    so a psd=n record is the last one found and the fewest-labels rule picks it."""
    for domain, record in found:
        if record.psd == "y" and domain != start:
            return _one_label_below(start, domain)
    return found[-1][0] if found else start  # the record with the fewest labels, else the start


def _one_label_below(start: str, ancestor: str) -> str:
    labels = start.split(".")
    return ".".join(labels[-(ancestor.count(".") + 2) :])


# Evaluation.


@dataclass
class PolicyDiscovery:
    """The DMARC Policy Record that applies to an Author Domain, found before SPF and DKIM are done."""

    from_domain: str
    records: DMARCRecords
    policy_domain: str = ""
    record: DMARCRecord | None = None
    problem: str = ""  # a DNS failure during discovery (temperror)

    async def evaluate(self, spf_mailfrom: SPFResult, dkim: list[DKIMResult]) -> DMARCResult:
        if not self.from_domain:
            return DMARCResult("permerror", "", reason="no single author domain in the From header field")
        if self.problem:
            return DMARCResult("temperror", self.from_domain, reason=self.problem)
        if self.record is None:
            return DMARCResult("none", self.from_domain, reason="no DMARC record")
        result = DMARCResult(
            "none", self.from_domain, self.policy_domain, record=self.record, testing=self.record.testing
        )
        try:
            result = await self._decide(result, self.record, spf_mailfrom, dkim)
        except DNSTemporaryError as e:
            return replace(result, status="temperror", reason=f"DNS lookup failed: {e}")
        try:  # only informative once the result is decided, so a DNS failure here changes nothing
            return replace(
                result, organizational_domain=await self.records.organizational_domain(self.from_domain)
            )
        except DNSTemporaryError:
            return result

    async def _decide(
        self, result: DMARCResult, record: DMARCRecord, spf: SPFResult, dkim: list[DKIMResult]
    ) -> DMARCResult:
        if not _usable(record) and not record.rua:
            return replace(
                result, status="permerror", reason="record has no usable p=, sp= or np= and no rua="
            )
        dkim_aligned = await self._any_aligned([r.domain for r in dkim if r.status == "pass"], record.adkim)
        spf_aligned = spf.status == "pass" and await self._aligned(spf.domain, record.aspf)
        if dkim_aligned or spf_aligned:
            return replace(result, status="pass", dkim_aligned=dkim_aligned, spf_aligned=spf_aligned)
        undecided = await self._any_aligned([r.domain for r in dkim if r.status == "temperror"], record.adkim)
        if undecided or (spf.status == "temperror" and await self._aligned(spf.domain, record.aspf)):
            return replace(result, status="temperror", reason="an identifier that may align had a DNS error")
        requested, tag = await self._requested_policy(record)
        testing = " (testing)" if record.testing else ""
        return replace(
            result,
            status="fail",
            disposition=_MILDER[requested] if record.testing else requested,
            requested_disposition=requested,
            reason=f"no aligned identifier; {tag}={requested}{testing}",
        )

    async def _any_aligned(self, identifiers: list[str], mode: Literal["r", "s"]) -> bool:
        for identifier in identifiers:
            if await self._aligned(identifier, mode):
                return True
        return False

    async def _aligned(self, identifier: str, mode: Literal["r", "s"]) -> bool:
        identifier = identifier.lower().rstrip(".")
        if identifier == self.from_domain:
            return True
        if mode == "s" or identifier.rpartition(".")[2] != self.from_domain.rpartition(".")[2]:
            return False  # an Organizational Domain is a suffix: different TLDs never share one
        mine = await self.records.organizational_domain(self.from_domain)
        if not is_subdomain(identifier, mine):
            return False  # so the identifier's walk is only needed if it is under the author's
        return mine == await self.records.organizational_domain(identifier)

    async def _requested_policy(self, record: DMARCRecord) -> tuple[Disposition, str]:
        """The published policy for the Author Domain and the tag it came from (RFC 9989 4.10.1)."""
        if record.p is None or not _usable(record):
            return "none", "p"  # a record without usable policy tags but with rua= acts as p=none
        if self.policy_domain == self.from_domain:
            return record.p, "p"
        if record.np is not None and not await self.records.exists(self.from_domain):
            return record.np, "np"
        if record.sp is not None:
            return record.sp, "sp"
        return record.p, "p"


async def discover_policy(resolver: Resolver, from_domain: str) -> PolicyDiscovery:
    """RFC 9989 4.10.1: the record at the Author Domain, else at its Organizational Domain, else at its
    Public Suffix Domain (a record with psd=y found by the DNS Tree Walk)."""
    from_domain = ascii_domain(from_domain)
    records = DMARCRecords(resolver)
    discovery = PolicyDiscovery(from_domain, records)
    if not from_domain:
        return discovery
    try:
        record = await records.at(from_domain)
        if record is not None:
            discovery.policy_domain, discovery.record = from_domain, record
            return discovery
        found = await records.walk(from_domain)
        organizational = await records.organizational_domain(from_domain)
        record = await records.at(organizational)
        if record is not None:
            discovery.policy_domain, discovery.record = organizational, record
            return discovery
        for domain, candidate in found:
            if candidate.psd == "y":
                discovery.policy_domain, discovery.record = domain, candidate
    except DNSTemporaryError as e:
        discovery.problem = f"DNS lookup for the DMARC record failed: {e}"
    return discovery


async def evaluate(
    resolver: Resolver, from_domain: str, spf_mailfrom: SPFResult, dkim: list[DKIMResult]
) -> DMARCResult:
    """The DMARC result for a message whose RFC5322.From domain is `from_domain` ("" if there is not
    exactly one), given the SPF result for MAIL FROM and the DKIM results of all signatures."""
    discovery = await discover_policy(resolver, from_domain)
    return await discovery.evaluate(spf_mailfrom, dkim)
