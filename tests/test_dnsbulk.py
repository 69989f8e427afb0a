"""BulkTXT (app/dns.py): many TXT lookups over one UDP socket, against real servers on loopback.

Its answers must be the resolver's in every case: the plain ones taken from the socket, the rest
(truncated, CNAME, SERVFAIL, no answer) through the resolver. Datagrams that answer nothing in
flight, or are not DNS at all, are dropped and the query waits for its real answer.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.rrset
import pytest

from app.dns import BulkTXT, DNSTemporaryError, Resolver
from tests.support.dnsserver import DNSTestServer


async def test_answers_as_the_resolver_does(dns: DNSTestServer, resolver: Resolver) -> None:
    long_value = "v=TLSRPTv1; rua=" + ",".join(f"mailto:r{i}@example.org" for i in range(20))
    dns.txt("_smtp._tls.a.example", long_value)
    dns.txt("_smtp._tls.b.example", "v=TLSRPTv1; rua=mailto:b@example.org", "other")
    dns.add("_smtp._tls.c.example", "A", "192.0.2.1")  # the name exists, without TXT
    dns.authentic("b.example")
    names = [f"_smtp._tls.{d}.example" for d in "abcd"]  # d: no such name
    async with BulkTXT(resolver) as bulk:
        answers = await asyncio.gather(*(bulk.txt(name) for name in names))
    expected = [await resolver.txt(name) for name in names]
    # The order of the records of an RRset means nothing (RFC 2181 5).
    assert [(sorted(a.records), a.authentic, a.nxdomain) for a in answers] == [
        (sorted(a.records), a.authentic, a.nxdomain) for a in expected
    ]
    assert answers[0].records == [long_value] and answers[1].authentic
    assert not answers[2] and not answers[2].nxdomain
    assert answers[3].nxdomain


async def test_what_it_does_not_take_goes_through_the_resolver(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    values = [f"record-{i}-" + "x" * 200 for i in range(12)]  # over 1232 octets: truncated over UDP
    dns.txt("big.example", *values)
    dns.txt("target.example", "v=TLSRPTv1; rua=mailto:t@example.org")
    dns.add("alias.example", "CNAME", "target.example.")
    dns.servfail("broken.example")
    async with BulkTXT(resolver) as bulk:
        assert sorted((await bulk.txt("big.example")).records) == sorted(values)
        assert (await bulk.txt("alias.example")).records == ["v=TLSRPTv1; rua=mailto:t@example.org"]
        with pytest.raises(DNSTemporaryError):
            await bulk.txt("broken.example")


async def test_no_answer_in_time_goes_through_the_resolver(dns: DNSTestServer) -> None:
    dns.timeout("slow.example")
    resolver = Resolver(["127.0.0.1"], port=dns.port, timeout=0.3, cache=False)
    async with BulkTXT(resolver, fast_timeout=0.2) as bulk:
        with pytest.raises(DNSTemporaryError):
            await bulk.txt("slow.example")
    assert dns.queries.count(("slow.example", "TXT")) >= 2  # on the socket, then by the resolver


@pytest.fixture
def hostile_server() -> Iterator[tuple[int, list[bytes]]]:
    """A UDP server that answers each query with junk first: a datagram too short for a header,
    garbage under the query's id, an answer about another name under its id, an answer under another
    id; then the real answer. Yields its port and the queries it got."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    queries: list[bytes] = []
    stop = threading.Event()

    def answer(query: dns.message.Message, name: str, value: str) -> bytes:
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", f'"{value}"'))
        return response.to_wire()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            queries.append(data)
            query = dns.message.from_wire(data)
            name = query.question[0].name.to_text()
            forged = dns.message.make_query("forged.example", "TXT")
            forged.id = query.id
            other_id = dns.message.from_wire(data)
            other_id.id = (query.id + 1) % 65536
            for junk in (
                b"\x01",
                data[:2] + b"\xff" * 40,
                answer(forged, "forged.example.", "v=TLSRPTv1; rua=mailto:evil@attacker.example"),
                answer(other_id, name, "v=TLSRPTv1; rua=mailto:evil@attacker.example"),
                answer(query, name, "v=TLSRPTv1; rua=mailto:good@example.org"),
            ):
                sock.sendto(junk, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], queries
    finally:
        stop.set()
        thread.join()
        sock.close()


async def test_junk_datagrams_are_dropped_and_the_real_answer_taken(
    hostile_server: tuple[int, list[bytes]],
) -> None:
    port, queries = hostile_server
    resolver = Resolver(["127.0.0.1"], port=port, timeout=1.0, cache=False)
    async with BulkTXT(resolver) as bulk:
        answer = await bulk.txt("_smtp._tls.example.net")
    assert answer.records == ["v=TLSRPTv1; rua=mailto:good@example.org"]
    assert len(queries) == 1  # taken from the socket, not asked again by the resolver
