"""Properties of SPF (app/auth/spf.py): the record parser on any text, and check_host with macro
expansion on records published on the loopback DNS server, for any sender and HELO."""

from __future__ import annotations

import asyncio
from typing import get_args

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.auth.spf import SPFPermError, check_host, parse_record
from app.auth.types import SPFResult, SPFStatus
from app.dns import Resolver
from tests.property.bounds import LARGE, LARGE_INPUT_SECONDS, finishes_within
from tests.property.strategies import (
    address,
    decoded_text,
    domain,
    hostile_text,
    joined,
    numberish,
    printable_ascii,
    repeated,
)
from tests.support.dnsserver import DNSTestServer

MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists", "redirect", "exp", "unknown")
MACROS = st.builds(
    lambda letter, digits, reverse, delimiters: f"%{{{letter}{digits}{reverse}{delimiters}}}",
    st.sampled_from("slodiphvcrtSLODIPHVx"),
    st.one_of(st.just(""), numberish),
    st.sampled_from(("", "r", "R")),
    st.text(alphabet="-.+,/_=", max_size=3),
)
domain_spec = joined(st.one_of(MACROS, st.sampled_from(("%%", "%_", "%-", ".", "example.com"))), st.just(""))
term = st.builds(
    lambda qualifier, mechanism, separator, argument: f"{qualifier}{mechanism}{separator}{argument}",
    st.sampled_from(("", "+", "-", "~", "?")),
    st.sampled_from(MECHANISMS),
    st.sampled_from(("", ":", "=", "/", "//")),
    st.one_of(domain_spec, numberish, st.ip_addresses().map(str), decoded_text),
)
spf_text = st.one_of(decoded_text, joined(term, st.sampled_from((" ", "  "))).map(lambda t: "v=spf1 " + t))


@given(spf_text)
@example("v=spf1 exists:%{d" + "9" * 4301 + "}.example.com")  # over int()'s digit limit
def test_parse_raises_only_its_own_error(text: str) -> None:
    try:
        parse_record(text)
    except SPFPermError:
        return


@settings(max_examples=max(10, settings().max_examples // 4))  # large inputs: fewer
@given(repeated(st.one_of(hostile_text, term.map(lambda t: t + " ")), LARGE))
@example("A" + "0" * LARGE + "\n0")  # "(.*)$" backtracked over the digits: 15 s
@example("include:." + "a" * LARGE + "!")  # the domain-end pattern backtracked over the label: 30 s
def test_large_records_parse_quickly(rest: str) -> None:
    with finishes_within(LARGE_INPUT_SECONDS):
        try:
            parse_record("v=spf1 " + rest)
        except SPFPermError:
            return


# check_host against the loopback DNS server: the record under test is published at DOMAIN.

DOMAIN = "spf.example"
STATUSES = set(get_args(SPFStatus))
# Records whose terms all look things up in DNS, with macros from the hostile sender and HELO.
published_text = st.one_of(
    joined(term, st.just(" ")).map(lambda t: "v=spf1 " + t),
    st.lists(domain_spec.map(lambda spec: f"exists:{spec}.example"), max_size=4).map(
        lambda terms: " ".join(["v=spf1", *terms, "-all"])
    ),
)
sender = st.one_of(address, hostile_text, st.builds(lambda local: f"{local}@{DOMAIN}", hostile_text))


def published(dns: DNSTestServer, record: str) -> Resolver:
    """`record` as the only TXT record of DOMAIN, and a resolver that asks the loopback server."""
    dns.clear()
    dns.txt(DOMAIN, record)
    return Resolver(nameservers=[dns.host], port=dns.port, timeout=1.0, cache=False)


def check(resolver: Resolver, ip: str, sender: str, helo: str) -> SPFResult:
    return asyncio.run(check_host(resolver, ip, DOMAIN, sender, helo, "mfrom"))


# Record text on the loopback server is printable ASCII: the test server's TXT encoding needs it.
@settings(max_examples=max(5, settings().max_examples // 4))
@given(
    published_text.filter(lambda text: all(" " <= c <= "~" for c in text)),
    st.ip_addresses().map(str),
    sender,
    st.one_of(domain, hostile_text),
)
def test_check_host_always_returns_a_result(
    dns_server: DNSTestServer, record: str, ip: str, mail_from: str, helo: str
) -> None:
    resolver = published(dns_server, record)
    try:
        with finishes_within(5.0):
            result = check(resolver, ip, mail_from, helo)
    finally:
        dns_server.clear()
    assert result.status in STATUSES
    assert result.domain == DOMAIN


@given(st.text(alphabet=printable_ascii, max_size=45))
def test_check_host_refuses_an_invalid_client_address_with_value_error(ip: str) -> None:
    """The only exception check_host raises is ValueError, for a client address that is not one."""
    try:
        result = asyncio.run(
            check_host(Resolver(nameservers=["127.0.0.1"], port=9, timeout=0.2), ip, "", "", "", "helo")
        )
    except ValueError:
        return
    assert result.status == "none"  # an empty domain is never looked up


def test_macro_expansion_of_a_large_record_finishes_quickly(dns_server: DNSTestServer) -> None:
    """A record of thousands of %{l} macros, each expanding to a local part of many labels, builds
    a name of megabytes that is truncated to its last 253 characters (RFC 7208 7.3)."""
    macros = "%{l}" * (LARGE // 8)  # a 32 KiB record: large, yet well within one DNS message
    resolver = published(dns_server, f"v=spf1 exists:{macros}.example.com -all")
    local = ".".join("a" * 30)
    try:
        with finishes_within(5.0):
            result = check(resolver, "192.0.2.1", f"{local}@{DOMAIN}", "client.example")
    finally:
        dns_server.clear()
    assert result.status == "fail", result


@settings(max_examples=max(5, settings().max_examples // 4))
@given(st.lists(st.from_regex(r"[a-z0-9]{1,63}", fullmatch=True), min_size=1, max_size=10))
def test_long_expansions_keep_their_longest_suffix_of_whole_labels(
    dns_server: DNSTestServer, labels: list[str]
) -> None:
    """RFC 7208 7.3: a name over 253 characters loses labels from the left until it fits."""
    local = ".".join(labels)
    resolver = published(dns_server, "v=spf1 exists:%{l}.%{l}.example.com -all")
    try:
        check(resolver, "192.0.2.1", f"{local}@{DOMAIN}", "client.example")
        queried = [name for name, rdtype in dns_server.queries if rdtype == "A"]
    finally:
        dns_server.clear()
    kept = f"{local}.{local}.example.com".split(".")
    while len(".".join(kept)) > 253:
        kept.pop(0)
    assert queried == [".".join(kept)]
