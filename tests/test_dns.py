"""The resolver facade against the loopback DNS server: records, AD bit, errors."""

import pytest

from app.dns import MX, DNSTemporaryError, Resolver
from tests.support.dnsserver import DNSTestServer


async def test_txt_joins_character_strings(dns: DNSTestServer, resolver: Resolver) -> None:
    long_value = "v=spf1 " + "ip4:192.0.2.1 " * 40 + "-all"
    dns.txt("example.org", long_value)
    answer = await resolver.txt("example.org")
    assert answer.records == [long_value]
    assert not answer.authentic


async def test_missing_name_and_missing_type_are_empty(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.add("example.org", "A", "192.0.2.1")
    missing = await resolver.txt("nope.example.org")
    assert not missing and missing.nxdomain
    no_type = await resolver.txt("example.org")
    assert not no_type and not no_type.nxdomain


async def test_ad_bit_only_for_authentic_zone(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.add("mx.signed.example", "A", "192.0.2.1")
    dns.add("mx.plain.example", "A", "192.0.2.2")
    dns.authentic("signed.example")
    assert (await resolver.a("mx.signed.example")).authentic
    assert not (await resolver.a("mx.plain.example")).authentic
    untrusting = Resolver(["127.0.0.1"], port=dns.port, timeout=1.0, trust_dnssec=False, cache=False)
    assert not (await untrusting.a("mx.signed.example")).authentic


async def test_mx_sorted_by_preference(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.add("example.org", "MX", "20 b.example.org.", "10 A.example.org.")
    answer = await resolver.mx("example.org")
    assert answer.records == [MX(10, "a.example.org"), MX(20, "b.example.org")]


async def test_timeout_and_servfail_are_temporary(dns: DNSTestServer) -> None:
    fast = Resolver(["127.0.0.1"], port=dns.port, timeout=0.3, cache=False)
    dns.timeout("slow.example.org")
    dns.servfail("broken.example.org")
    with pytest.raises(DNSTemporaryError):
        await fast.txt("slow.example.org")
    with pytest.raises(DNSTemporaryError):
        await fast.txt("broken.example.org")


async def test_large_answer_falls_back_to_tcp(dns: DNSTestServer, resolver: Resolver) -> None:
    values = [f"record-{i}-" + "x" * 200 for i in range(12)]
    dns.txt("big.example.org", *values)
    answer = await resolver.txt("big.example.org")
    assert sorted(answer.records) == sorted(values)


async def test_cached_answers_follow_dnspythons_cache(dns: DNSTestServer) -> None:
    """A repeated lookup is answered from the cache, a missing name too, until dnspython's cache lets
    the answer go (here: flushed); then the server is asked again."""
    resolver = Resolver(nameservers=["127.0.0.1"], port=dns.port, timeout=1.0)
    dns.txt("a.example", "first")
    assert (await resolver.txt("a.example")).records == ["first"]
    assert (await resolver.txt("nothing.example")).nxdomain
    dns.clear()
    dns.txt("a.example", "second")
    dns.txt("nothing.example", "now here")
    asked = len(dns.queries)
    assert (await resolver.txt("a.example")).records == ["first"]
    assert (await resolver.txt("nothing.example")).nxdomain
    assert len(dns.queries) == asked
    resolver._resolver.cache.flush()  # type: ignore[union-attr]
    assert (await resolver.txt("a.example")).records == ["second"]
    assert (await resolver.txt("nothing.example")).records == ["now here"]
    assert len(dns.queries) == asked + 2
