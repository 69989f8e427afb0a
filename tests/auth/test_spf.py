"""SPF (RFC 7208) against the loopback DNS server: results, syntax, limits, macros, IPv6, HELO."""

from __future__ import annotations

import time

import pytest

from app.auth.spf import SPFPermError, check_host, check_mailfrom_and_helo, parse_record
from app.auth.types import SPFResult
from app.dns import Resolver
from tests.support.dnsserver import DNSTestServer

CLIENT = "192.0.2.10"
CLIENT6 = "2001:db8:1::10"


async def spf(resolver: Resolver, sender: str = "alice@example.com", ip: str = CLIENT) -> SPFResult:
    domain = sender.rpartition("@")[2]
    return await check_host(resolver, ip, domain, sender, "mail.sender.example", "mfrom")


@pytest.mark.parametrize(
    ("record", "status"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
        ("v=spf1 ip4:198.51.100.1 -all", "fail"),
        ("v=spf1 ip4:198.51.100.1 ~all", "softfail"),
        ("v=spf1 ip4:198.51.100.1 ?all", "neutral"),
        ("v=spf1 ip4:198.51.100.1", "neutral"),  # nothing matched, no redirect
        ("v=spf1 -ip4:192.0.2.10 +all", "fail"),
        ("V=SPF1 IP4:192.0.2.10 -ALL", "pass"),  # names are case-insensitive
        ("v=spf1 ip4:192.0.2.10 foo=bar -all", "pass"),  # unknown modifiers are ignored
        ("v=spf1 ip4:192.0.2.10 exp=explain.%{d} -all", "pass"),
    ],
)
async def test_results_of_simple_records(
    dns: DNSTestServer, resolver: Resolver, record: str, status: str
) -> None:
    dns.txt("example.com", "some other text", record)
    result = await spf(resolver)
    assert result.status == status
    assert result.domain == "example.com" and result.scope == "mfrom"


async def test_none_without_record_or_domain(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "google-site-verification=abc")  # a TXT record, but no SPF record
    assert (await spf(resolver)).status == "none"
    assert (await spf(resolver, "alice@missing.example")).status == "none"  # NXDOMAIN
    assert (await spf(resolver, "alice@localhost")).status == "none"  # not a multi-label name
    result = await check_host(resolver, CLIENT, "bad..name", "x@bad..name", "h.example", "mfrom")
    assert result.status == "none"


async def test_dns_timeout_and_servfail_are_temperror(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.timeout("example.com")
    result = await spf(resolver)
    assert result.status == "temperror"
    dns.txt("example.org", "v=spf1 include:broken.example.net -all")
    dns.servfail("broken.example.net")
    assert (await spf(resolver, "bob@example.org")).status == "temperror"
    dns.txt("example.net", "v=spf1 a:broken.example.net -all")
    assert (await spf(resolver, "bob@example.net")).status == "temperror"


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 ip4:192.0.2 -all",
        "v=spf1 ip4:192.0.2.010 -all",  # leading zeros
        "v=spf1 ip4:192.0.2.0/33 -all",
        "v=spf1 ip4:192.0.2.0/024 -all",
        "v=spf1 ip6:2001:db8::/129 -all",
        "v=spf1 ip6:fe80::1%eth0 -all",
        "v=spf1 a/33 -all",
        "v=spf1 mx//129 -all",
        "v=spf1 foo:example.com -all",  # unknown mechanism
        "v=spf1 a:foo -all",  # domain-spec without a top label
        "v=spf1 a:192.0.2.1 -all",  # an all-numeric top label
        "v=spf1 include -all",
        "v=spf1 exists -all",
        "v=spf1 all:x",
        "v=spf1 redirect=a.example.net redirect=b.example.net",
        "v=spf1 exp=a.example.net exp=b.example.net -all",
        "v=spf1 redirect= -all",
        "v=spf1 exists:%{x}.example.net -all",  # unknown macro letter
        "v=spf1 exists:%{c}.example.net -all",  # c is only allowed in explanations
        "v=spf1 exists:%{d0}.example.net -all",  # zero parts
        "v=spf1 exists:%{d.example.net -all",  # unterminated
        "v=spf1 exists:50%.example.net -all",  # a bare percent sign
        "v=spf1 -all foo=%{z}",  # unknown modifiers must still be well-formed
        "v=spf1 ip4:192.0.2.10\t-all",  # only spaces separate terms
    ],
)
async def test_syntax_errors_are_permerror(dns: DNSTestServer, resolver: Resolver, record: str) -> None:
    dns.txt("example.com", record)
    result = await spf(resolver)
    assert result.status == "permerror", result.reason
    with pytest.raises(SPFPermError):
        parse_record(record)


async def test_permerror_even_after_a_matching_term(dns: DNSTestServer, resolver: Resolver) -> None:
    # RFC 7208 4.6: a syntax error anywhere in the record is checked before evaluation.
    dns.txt("example.com", "v=spf1 +all ip4:300.1.1.1")
    assert (await spf(resolver)).status == "permerror"


async def test_two_spf_records_are_permerror(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 +all", "v=spf1 -all")
    assert (await spf(resolver)).status == "permerror"


async def test_include_results(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 include:fails.example.net include:passes.example.net -all")
    dns.txt("fails.example.net", "v=spf1 -all")  # fail inside an include is "no match"
    dns.txt("passes.example.net", "v=spf1 ip4:192.0.2.0/28 -all")
    assert (await spf(resolver)).status == "pass"
    assert (await spf(resolver, ip="192.0.2.200")).status == "fail"

    dns.txt("example.org", "v=spf1 include:norecord.example.net ~all")
    dns.add("norecord.example.net", "A", "192.0.2.1")
    assert (await spf(resolver, "a@example.org")).status == "permerror"  # include of "none"


async def test_redirect(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 ip4:198.51.100.1 redirect=_spf.example.net")
    dns.txt("_spf.example.net", "v=spf1 ip4:192.0.2.0/24 ~all")
    assert (await spf(resolver)).status == "pass"
    assert (await spf(resolver, ip="198.51.100.1")).status == "pass"
    assert (await spf(resolver, ip="203.0.113.5")).status == "softfail"

    dns.txt("example.org", "v=spf1 redirect=norecord.example.net")
    assert (await spf(resolver, "a@example.org")).status == "permerror"
    # With "all" in the record the redirect is never reached.
    dns.txt("example.net", "v=spf1 ?all redirect=_spf.example.net")
    assert (await spf(resolver, "a@example.net")).status == "neutral"


async def test_redirect_target_decides_with_its_own_domain(dns: DNSTestServer, resolver: Resolver) -> None:
    # In the redirect target, %{d} and a/mx without a domain refer to the target domain.
    dns.txt("example.com", "v=spf1 redirect=_spf.example.net")
    dns.txt("_spf.example.net", "v=spf1 a -all")
    dns.add("_spf.example.net", "A", CLIENT)
    assert (await spf(resolver)).status == "pass"


def a_records(dns: DNSTestServer, count: int) -> str:
    for i in range(count):
        dns.add(f"h{i}.example.net", "A", "198.51.100.1")
    return " ".join(f"a:h{i}.example.net" for i in range(count))


async def test_ten_dns_terms_allowed_eleventh_is_permerror(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", f"v=spf1 {a_records(dns, 9)} include:inc.example.net -all")
    dns.txt("inc.example.net", "v=spf1 ip4:192.0.2.10 -all")
    result = await spf(resolver)
    assert result.status == "pass", result.reason

    dns.txt("example.org", f"v=spf1 {a_records(dns, 10)} include:inc.example.net -all")
    result = await spf(resolver, "a@example.org")
    assert result.status == "permerror"
    assert "more than 10" in result.reason


async def test_terms_after_a_match_do_not_count(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", f"v=spf1 ip4:192.0.2.10 {a_records(dns, 12)} -all")
    assert (await spf(resolver)).status == "pass"


async def test_lookup_limit_counts_across_includes_and_stops_loops(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("example.com", "v=spf1 include:loop.example.net -all")
    dns.txt("loop.example.net", "v=spf1 include:loop.example.net -all")
    result = await spf(resolver)
    assert result.status == "permerror"
    assert len([q for q in dns.queries if q == ("loop.example.net", "TXT")]) <= 10


async def test_two_void_lookups_allowed_third_is_permerror(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.add("exists.example.net", "TXT", '"x"')  # the name exists, but has no A record
    dns.txt("example.com", "v=spf1 a:nx1.example.net a:exists.example.net -all")
    assert (await spf(resolver)).status == "fail"
    dns.txt("example.org", "v=spf1 a:nx1.example.net mx:nx2.example.net exists:nx3.example.net -all")
    result = await spf(resolver, "a@example.org")
    assert result.status == "permerror"
    assert "void" in result.reason


async def test_mx_mechanism(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 mx -all")
    dns.add("example.com", "MX", "10 mx1.example.com.", "20 mx2.example.com.")
    dns.add("mx1.example.com", "A", "198.51.100.7")
    dns.add("mx2.example.com", "A", CLIENT)
    assert (await spf(resolver)).status == "pass"
    assert (await spf(resolver, ip="192.0.2.11")).status == "fail"

    dns.txt("example.org", "v=spf1 mx:example.com/24 -all")
    assert (await spf(resolver, "a@example.org", ip="192.0.2.99")).status == "pass"


async def test_mx_with_more_than_ten_names_is_permerror(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 mx -all")
    dns.add("example.com", "MX", *(f"{i} mx{i}.example.com." for i in range(11)))
    for i in range(11):
        dns.add(f"mx{i}.example.com", "A", CLIENT)
    assert (await spf(resolver)).status == "permerror"


async def test_a_mechanism_with_dual_cidr(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 a:hosts.example.com/24//64 -all")
    dns.add("hosts.example.com", "A", "192.0.2.1")
    dns.add("hosts.example.com", "AAAA", "2001:db8:1::1")
    assert (await spf(resolver, ip="192.0.2.250")).status == "pass"
    assert (await spf(resolver, ip="192.0.3.1")).status == "fail"
    assert (await spf(resolver, ip="2001:db8:1::ffff")).status == "pass"
    assert (await spf(resolver, ip="2001:db8:2::1")).status == "fail"


async def test_ipv6(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:1::/48 a -all")
    assert (await spf(resolver, ip=CLIENT6)).status == "pass"
    assert (await spf(resolver, ip="2001:db8:2::1")).status == "fail"
    dns.add("example.com", "AAAA", "2001:db8:3::5")
    assert (await spf(resolver, ip="2001:db8:3::5")).status == "pass"
    # An IPv4-mapped IPv6 client is checked as IPv4.
    assert (await spf(resolver, ip="::ffff:192.0.2.77")).status == "pass"


# The examples of RFC 7208 7.4 (sender strong-bad@email.example.com, client 192.0.2.3), as exists: names.
@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("%{s}", "strong-bad\\@email.example.com"),  # as DNS presentation format shows "@"
        ("%{o}.x.example", "email.example.com.x.example"),
        ("%{d4}.x.example", "email.example.com.x.example"),
        ("%{d2}.x.example", "example.com.x.example"),
        ("%{d1}.x.example", "com.x.example"),
        ("%{dr}.x.example", "com.example.email.x.example"),
        ("%{d2r}.x.example", "example.email.x.example"),
        ("%{l-}.x.example", "strong.bad.x.example"),
        ("%{lr}.x.example", "strong-bad.x.example"),
        ("%{lr-}.x.example", "bad.strong.x.example"),
        ("%{l1r-}.x.example", "strong.x.example"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%{S}.%{h}.x.example", "strong-bad%40email.example.com.mail.sender.example.x.example"),
        ("%{l}%%%-.x.example", "strong-bad%%20.x.example"),
    ],
)
async def test_macro_expansion(dns: DNSTestServer, resolver: Resolver, spec: str, name: str) -> None:
    dns.txt("email.example.com", f"v=spf1 exists:{spec} -all")
    assert (await spf(resolver, "strong-bad@email.example.com", ip="192.0.2.3")).status == "fail"
    assert [q for q in dns.queries if q[1] == "A"] == [(name.lower(), "A")]
    dns.add(name, "A", "127.0.0.2")
    assert (await spf(resolver, "strong-bad@email.example.com", ip="192.0.2.3")).status == "pass"


async def test_ipv6_macro_is_nibbles(dns: DNSTestServer, resolver: Resolver) -> None:
    # RFC 7208 7.4: client 2001:db8::cb01.
    dns.txt("example.com", "v=spf1 exists:%{ir}.%{v}._spf.%{d2} -all")
    nibbles = "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    dns.add(f"{nibbles}.ip6._spf.example.com", "A", "127.0.0.2")
    assert (await spf(resolver, ip="2001:db8::cb01")).status == "pass"
    assert (await spf(resolver, ip="2001:db8::cb02")).status == "fail"


async def test_macro_expansion_truncated_to_253_octets(dns: DNSTestServer, resolver: Resolver) -> None:
    local = ".".join(["l" * 60] * 4)  # 243 octets of local-part
    dns.txt("example.com", "v=spf1 exists:%{l}.a-long-suffix.example.com -all")
    await spf(resolver, f"{local}@example.com")
    queried = [name for name, rdtype in dns.queries if rdtype == "A"]
    assert queried and all(len(name) <= 253 for name in queried)
    assert queried[0].endswith(".a-long-suffix.example.com")


async def test_local_part_defaults_to_postmaster(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 exists:%{l}.%{o}.x.example.com -all")
    dns.add("postmaster.example.com.x.example.com", "A", "127.0.0.2")
    result = await check_host(resolver, CLIENT, "example.com", "", "helo.example", "mfrom")
    assert result.status == "pass"


async def test_ptr_mechanism_and_p_macro(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.add("10.2.0.192.in-addr.arpa", "PTR", "mail.example.com.", "spoofed.example.org.")
    dns.add("mail.example.com", "A", CLIENT)
    dns.add("spoofed.example.org", "A", "198.51.100.1")  # does not confirm the PTR name
    dns.txt("example.com", "v=spf1 ptr -all")
    assert (await spf(resolver)).status == "pass"
    dns.txt("example.org", "v=spf1 ptr -all")
    assert (await spf(resolver, "a@example.org")).status == "fail"
    dns.txt("example.net", "v=spf1 exists:%{p}.p.example.net -all")
    dns.add("mail.example.com.p.example.net", "A", "127.0.0.2")
    assert (await spf(resolver, "a@example.net")).status == "pass"


async def test_ptr_names_that_cannot_be_confirmed_are_skipped(dns: DNSTestServer, resolver: Resolver) -> None:
    # RFC 7208 5.5: a DNS error confirming a PTR name skips that name; it is not a temperror.
    dns.add("10.2.0.192.in-addr.arpa", "PTR", "slow.example.net.", "mail.example.com.")
    dns.add("mail.example.com", "A", CLIENT)
    dns.timeout("slow.example.net")
    dns.txt("example.net", "v=spf1 ptr ~all")
    result = await spf(resolver, "a@example.net")
    assert result.status == "softfail"
    dns.servfail("10.2.0.192.in-addr.arpa")
    dns.txt("example.com", "v=spf1 ptr ~all")
    assert (await spf(resolver)).status == "softfail"  # a PTR lookup error: no match


async def test_mailfrom_and_helo_checked_together(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 ip4:192.0.2.10 -all")
    dns.txt("mail.example.com", "v=spf1 a -all")
    dns.add("mail.example.com", "A", "198.51.100.9")
    mfrom, helo = await check_mailfrom_and_helo(resolver, CLIENT, "<alice@Example.COM>", "mail.example.com")
    assert (mfrom.status, mfrom.scope, mfrom.domain) == ("pass", "mfrom", "example.com")
    assert (helo.status, helo.scope, helo.domain) == ("fail", "helo", "mail.example.com")


async def test_null_sender_uses_postmaster_at_helo_once(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("mail.example.com", "v=spf1 exists:%{l}.%{d}.x.example.net -all")
    dns.add("postmaster.mail.example.com.x.example.net", "A", "127.0.0.2")
    mfrom, helo = await check_mailfrom_and_helo(resolver, CLIENT, "<>", "mail.example.com")
    assert (mfrom.status, mfrom.scope, mfrom.domain) == ("pass", "mfrom", "mail.example.com")
    assert (helo.status, helo.scope) == ("pass", "helo")
    assert dns.queries.count(("mail.example.com", "TXT")) == 1


async def test_both_identities_are_checked_concurrently(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.timeout("example.com")
    dns.timeout("mail.example.com")
    started = time.monotonic()
    mfrom, helo = await check_mailfrom_and_helo(resolver, CLIENT, "a@example.com", "mail.example.com")
    assert mfrom.status == helo.status == "temperror"
    assert time.monotonic() - started < 1.7  # one after the other, the two 1 s timeouts take 2 s


async def test_helo_address_literal_is_none(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("example.com", "v=spf1 -all")
    for literal in ("[192.0.2.10]", "[IPv6:2001:db8::1]", "192.0.2.10"):
        mfrom, helo = await check_mailfrom_and_helo(resolver, CLIENT, "a@example.com", literal)
        assert mfrom.status == "fail"
        assert helo.status == "none"
    mfrom, helo = await check_mailfrom_and_helo(resolver, CLIENT, "", "[192.0.2.10]")
    assert mfrom.status == helo.status == "none"


async def test_invalid_client_address_is_a_clear_error(resolver: Resolver) -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        await check_host(resolver, "not-an-ip", "example.com", "a@example.com", "h.example", "mfrom")
