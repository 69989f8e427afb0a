"""Async DNS facade over dnspython: timeouts, the AD (DNSSEC) bit, typed errors, a shared cache.

Every lookup in Postwarden goes through `Resolver`, so tests can point it at a loopback DNS server.
A name that does not exist, or has no records of the type, is an empty `Answer` (not an error):
callers care about "no record" versus "could not find out", and the latter is `DNSTemporaryError`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename


class DNSError(Exception):
    """Base of lookup failures."""


class DNSTemporaryError(DNSError):
    """Timeout, SERVFAIL or no reachable server: try again later (SPF/DMARC temperror)."""


class DNSPermanentError(DNSError):
    """The name itself is malformed (e.g. a label over 63 octets)."""


@dataclass(frozen=True)
class Answer:
    records: list[Any] = field(default_factory=list)
    # True only when the resolver is trusted for DNSSEC and set the AD bit on the response.
    authentic: bool = False
    nxdomain: bool = False

    def __bool__(self) -> bool:
        return bool(self.records)


@dataclass(frozen=True)
class MX:
    preference: int
    host: str


def _txt_string(rdata: Any) -> str:
    # A TXT record is a sequence of character-strings that together form one value (RFC 7208 3.3).
    return b"".join(rdata.strings).decode("utf-8", errors="replace")


class Resolver:
    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 5.0,
        trust_dnssec: bool = False,
        cache: bool = True,
    ) -> None:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = list(nameservers)
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.port = port
        resolver.lifetime = timeout
        resolver.timeout = timeout
        # EDNS with the DO bit so a validating resolver reports authenticity (AD) to us.
        resolver.use_edns(0, dns.flags.DO, 1232)
        if cache:
            resolver.cache = dns.resolver.LRUCache(50_000)
        self._resolver = resolver
        self.trust_dnssec = trust_dnssec
        self.timeout = timeout

    async def query(self, name: str, rdtype: str) -> Answer:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            return Answer(nxdomain=True, authentic=self._authentic(e.response(e.qnames()[0])))
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as e:
            raise DNSTemporaryError(f"{rdtype} {name}: {e}") from None
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel) as e:
            raise DNSPermanentError(f"{rdtype} {name}: {e}") from None
        except dns.exception.DNSException as e:
            raise DNSTemporaryError(f"{rdtype} {name}: {e}") from None
        authentic = self._authentic(answer.response)
        records = list(answer.rrset) if answer.rrset is not None else []
        return Answer(records=records, authentic=authentic)

    def _authentic(self, response: dns.message.Message | None) -> bool:
        return bool(self.trust_dnssec and response is not None and response.flags & dns.flags.AD)

    async def txt(self, name: str) -> Answer:
        answer = await self.query(name, "TXT")
        return Answer([_txt_string(r) for r in answer.records], answer.authentic, answer.nxdomain)

    async def ips(self, name: str) -> list[str]:
        """A and AAAA addresses of a name."""
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            answer = await self.query(name, rdtype)
            addresses += [r.address for r in answer.records]
        return addresses

    async def a(self, name: str) -> Answer:
        answer = await self.query(name, "A")
        return Answer([r.address for r in answer.records], answer.authentic, answer.nxdomain)

    async def aaaa(self, name: str) -> Answer:
        answer = await self.query(name, "AAAA")
        return Answer([r.address for r in answer.records], answer.authentic, answer.nxdomain)

    async def mx(self, name: str) -> Answer:
        answer = await self.query(name, "MX")
        records = sorted(
            (MX(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in answer.records),
            key=lambda m: m.preference,
        )
        return Answer(records, answer.authentic, answer.nxdomain)

    async def ptr(self, ip: str) -> list[str]:
        answer = await self.query(dns.reversename.from_address(ip).to_text(), "PTR")
        return [r.target.to_text(omit_final_dot=True).lower() for r in answer.records]

    async def tlsa(self, name: str) -> Answer:
        return await self.query(name, "TLSA")

    async def srv(self, name: str) -> Answer:
        """SRV records (dnspython rdata: priority, weight, port, target)."""
        return await self.query(name, "SRV")

    async def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's `dnsfunc` for async verification: the first TXT value, as bytes, or None."""
        qname = name.decode("ascii", errors="replace") if isinstance(name, bytes) else name
        answer = await self.query(qname.rstrip("."), "TXT")
        if not answer.records:
            return None
        return b"".join(answer.records[0].strings)


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def resolver_from_config(dns_config: Any, cache: bool = True) -> Resolver:
    """Build the resolver from the `[dns]` config section; `cache=False` for one-off bulk lookups."""
    return Resolver(
        nameservers=dns_config.nameservers or None,
        port=dns_config.port,
        timeout=dns_config.timeout,
        trust_dnssec=dns_config.trust_dnssec,
        cache=cache,
    )
