"""Async DNS facade over dnspython: timeouts, the AD (DNSSEC) bit, typed errors, a shared cache.

Every lookup in Postwarden goes through `Resolver`, so tests can point it at a loopback DNS server.
A name that does not exist, or has no records of the type, is an empty `Answer` (not an error):
callers care about "no record" versus "could not find out", and the latter is `DNSTemporaryError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename

from app import dnswire
from app.dnswire import TXTReply, question_name, read_txt_reply, txt_query

CACHE_SIZE = 50_000  # answers kept


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


@dataclass(frozen=True)
class _Known:
    """An Answer built from dnspython's answer `source`, cached under `key` in its cache."""

    key: tuple[Any, Any, Any]
    source: dns.resolver.Answer
    answer: Answer


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
            resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
        self._resolver = resolver
        # Our Answers of what dnspython's cache holds, by the (name, type) asked. A hit is served
        # while dnspython's cache still holds the very answer it was built from (so its expiry,
        # flushes and statistics rule), without dnspython's resolution steps, which cost more than
        # the rest of a cached lookup (the inbound path asks several per message).
        self._known: dict[tuple[str, str], _Known] = {}
        self.trust_dnssec = trust_dnssec
        self.timeout = timeout

    async def query(self, name: str, rdtype: str) -> Answer:
        known = self._known.get((name, rdtype))
        cache = self._resolver.cache
        if known is not None and cache is not None and cache.get(known.key) is known.source:
            return known.answer
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            qname = e.qnames()[0]
            result = Answer(nxdomain=True, authentic=self._authentic(e.response(qname)))
            if isinstance(cache, dns.resolver.LRUCache):  # dnspython caches a name's NXDOMAIN as its ANY
                self._remember_nxdomain(name, rdtype, cache, qname, result)
            return result
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as e:
            raise DNSTemporaryError(f"{rdtype} {name}: {e}") from None
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel) as e:
            raise DNSPermanentError(f"{rdtype} {name}: {e}") from None
        except dns.exception.DNSException as e:
            raise DNSTemporaryError(f"{rdtype} {name}: {e}") from None
        authentic = self._authentic(answer.response)
        records = list(answer.rrset) if answer.rrset is not None else []
        result = Answer(records=records, authentic=authentic)
        if cache is not None:
            self._remember(name, rdtype, answer, result)
        return result

    def _remember(self, name: str, rdtype: str, source: dns.resolver.Answer, answer: Answer) -> None:
        self._keep(name, rdtype, _Known((source.qname, source.rdtype, source.rdclass), source, answer))

    def _remember_nxdomain(
        self, name: str, rdtype: str, cache: dns.resolver.LRUCache, qname: dns.name.Name, answer: Answer
    ) -> None:
        key = (qname, dns.rdatatype.ANY, dns.rdataclass.IN)
        node = cache.data.get(key)  # read as it is: a get() would count a cache hit
        if node is not None:
            self._keep(name, rdtype, _Known(key, node.value, answer))

    def _keep(self, name: str, rdtype: str, known: _Known) -> None:
        if len(self._known) >= CACHE_SIZE:
            self._known.clear()  # dnspython's cache evicts by use; ours starts over (it refills on hits)
        self._known[(name, rdtype)] = known

    def _authentic(self, response: dns.message.Message | None) -> bool:
        return bool(self.trust_dnssec and response is not None and response.flags & dns.flags.AD)

    def udp_server(self) -> tuple[str, int] | None:
        """The first nameserver's address, if it is one to send UDP queries to (not DoH, say)."""
        servers = [s for s in self._resolver.nameservers if isinstance(s, str) and is_ip_address(s)]
        return (servers[0], self._resolver.port) if servers else None

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


class TXTSource(Protocol):
    """What looks up TXT values: a `Resolver`, or a `BulkTXT` of one (a batch job's lookups)."""

    async def txt(self, name: str) -> Answer: ...


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes], None]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received(data)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error (port unreachable): the queries in flight time out and fall back."""


class BulkTXT:
    """Many TXT lookups at once over one UDP socket, for a batch job (`async with BulkTXT(resolver)`).

    dnspython's resolver sets up a socket and an asyncio transport per query, and builds and parses
    each message as objects: for the 100,000 names of a daily TLS report run that was most of the
    run's CPU. Here one connected socket (the kernel picks its port; a job opens one per batch of
    names) carries the queries, written and read by app/dnswire.py, each answer matched to its query
    by a random 16-bit id not in flight and by the question. Only the plain outcomes are taken here:
    the name's TXT records, none (NODATA) or NXDOMAIN. Anything else (no answer within
    `fast_timeout`, a truncated answer, another rcode, a CNAME, a name with escapes, no usable
    nameserver) goes to `Resolver.txt`, which retries, uses TCP and follows CNAMEs as always: this
    path decides no case it does not understand.

    Datagrams are hostile: one that is not a DNS message answering a query in flight is dropped, and
    the query goes on waiting for its answer, as dnspython's `ignore_unexpected` does.
    """

    IN_FLIGHT = 512  # queries on the socket at once (ids in use)

    def __init__(self, resolver: Resolver, fast_timeout: float = 2.0) -> None:
        self.resolver = resolver
        self.fast_timeout = fast_timeout  # seconds without an answer; then the resolver asks
        self._pending: dict[int, tuple[bytes, asyncio.Future[TXTReply]]] = {}
        self._slots = asyncio.Semaphore(self.IN_FLIGHT)
        self._transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> BulkTXT:
        server = self.resolver.udp_server()
        if server is not None:
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self._received), remote_addr=server
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._transport is not None:
            self._transport.close()

    async def txt(self, name: str) -> Answer:
        qname = question_name(name) if self._transport is not None else None
        reply = await self._ask(qname) if qname is not None else None
        answer = self._plain(reply) if reply is not None else None
        return answer if answer is not None else await self.resolver.txt(name)

    async def _ask(self, qname: bytes) -> TXTReply | None:
        """The reply to a TXT query for `qname` from the socket, or None (then the resolver asks)."""
        async with self._slots:
            query_id = self._free_id()
            reply: asyncio.Future[TXTReply] = asyncio.get_running_loop().create_future()
            self._pending[query_id] = (qname, reply)
            try:
                assert self._transport is not None
                self._transport.sendto(txt_query(query_id, qname))
                return await asyncio.wait_for(reply, self.fast_timeout)
            except (TimeoutError, OSError):
                return None
            finally:
                del self._pending[query_id]

    def _free_id(self) -> int:
        while (candidate := secrets.randbelow(65536)) in self._pending:
            pass
        return candidate

    def _received(self, data: bytes) -> None:
        pending = self._pending.get(int.from_bytes(data[:2], "big")) if len(data) >= 12 else None
        if pending is None or pending[1].done():
            return
        qname, future = pending
        reply = read_txt_reply(data, qname)
        if reply is not None:
            future.set_result(reply)

    def _plain(self, reply: TXTReply) -> Answer | None:
        """The answer if the reply is one of the plain outcomes, else None."""
        if reply.flags & dnswire.TC or reply.unclear:
            return None
        authentic = bool(self.resolver.trust_dnssec and reply.flags & dnswire.AD)
        if reply.rcode == dnswire.NXDOMAIN:
            return Answer(nxdomain=True, authentic=authentic)
        if reply.rcode != 0:
            return None
        return Answer(reply.records, authentic)
