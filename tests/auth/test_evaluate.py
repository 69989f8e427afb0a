"""authenticate(): SPF, DKIM and DMARC together on real signed messages; the From author extraction."""

from __future__ import annotations

import time
from pathlib import Path

import authres
import pytest

from app.auth import message as message_module
from app.auth.dkim import sign
from app.auth.dkimkeys import DKIMAlgorithm, dns_txt_value, generate_private_key_pem
from app.auth.evaluate import authenticate
from app.auth.message import author
from app.auth.types import AuthOutcome
from app.config import DKIMSelector
from app.dns import Resolver
from tests.support.dnsserver import DNSTestServer

CLIENT = "192.0.2.10"
BODY = b"\r\n" + b"Hello from the example.\r\n" * 40


@pytest.fixture(scope="module")
def selectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DKIMSelector]:
    folder = tmp_path_factory.mktemp("keys")
    result = {}
    algorithms: tuple[DKIMAlgorithm, ...] = ("rsa", "ed25519")
    for algorithm in algorithms:
        path = folder / f"{algorithm}.pem"
        path.write_bytes(generate_private_key_pem(algorithm))
        result[algorithm] = DKIMSelector(
            selector=f"{algorithm}2026", algorithm=algorithm, private_key_file=path
        )
    return result


def publish_key(dns: DNSTestServer, domain: str, selector: DKIMSelector) -> None:
    algorithm: DKIMAlgorithm = selector.algorithm
    dns.txt(
        f"{selector.selector}._domainkey.{domain}",
        dns_txt_value(Path(selector.private_key_file).read_bytes(), algorithm),
    )


def message(from_header: bytes = b"Alice <alice@example.com>", *extra: bytes) -> bytes:
    return b"From: " + from_header + b"\r\nTo: bob@example.org\r\nSubject: hi\r\n" + b"".join(extra) + BODY


def example_com(dns: DNSTestServer, selectors: dict[str, DKIMSelector]) -> None:
    dns.txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject; rua=mailto:dmarc@example.com")
    dns.txt("mail.example.com", "v=spf1 a -all")
    dns.add("mail.example.com", "A", CLIENT)
    for selector in selectors.values():
        publish_key(dns, "example.com", selector)


async def run(
    resolver: Resolver, raw: bytes, mail_from: str = "bounce@example.com", ip: str = CLIENT
) -> AuthOutcome:
    return await authenticate(
        resolver,
        authserv_id="mx.example.org",
        remote_ip=ip,
        helo="mail.example.com",
        mail_from=mail_from,
        message=raw,
    )


async def test_signed_message_from_an_authorised_host_passes(
    dns: DNSTestServer, resolver: Resolver, selectors: dict[str, DKIMSelector]
) -> None:
    example_com(dns, selectors)
    raw = message()
    signed = sign(raw, "example.com", list(selectors.values())) + raw
    outcome = await run(resolver, signed)
    assert (outcome.spf_mailfrom.status, outcome.spf_mailfrom.domain) == ("pass", "example.com")
    assert (outcome.spf_helo.status, outcome.spf_helo.domain) == ("pass", "mail.example.com")
    assert [(r.status, r.algorithm) for r in outcome.dkim] == [
        ("pass", "rsa-sha256"),
        ("pass", "ed25519-sha256"),
    ]
    assert (outcome.dmarc.status, outcome.dmarc.dkim_aligned, outcome.dmarc.spf_aligned) == (
        "pass",
        True,
        True,
    )
    assert outcome.dmarc.record is not None and outcome.dmarc.record.rua == ("mailto:dmarc@example.com",)
    assert (outcome.from_address, outcome.from_domain) == ("alice@example.com", "example.com")
    assert outcome.verified_dkim_domains == ["example.com"]

    header = outcome.authentication_results
    assert header.startswith("Authentication-Results: mx.example.org;\r\n") and header.endswith("\r\n")
    parsed = authres.AuthenticationResultsHeader.parse(header.rstrip("\r\n").replace("\r\n", "\n"))
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "pass"),
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dkim", "pass"),
        ("dmarc", "pass"),
    ]


async def test_spoofed_message_fails_dmarc(
    dns: DNSTestServer, resolver: Resolver, selectors: dict[str, DKIMSelector]
) -> None:
    example_com(dns, selectors)
    outcome = await run(resolver, message(), ip="203.0.113.66")
    assert outcome.spf_mailfrom.status == "fail"
    assert outcome.dkim == []
    assert (outcome.dmarc.status, outcome.dmarc.disposition) == ("fail", "reject")
    assert outcome.verified_dkim_domains == []
    assert "dmarc=fail" in outcome.authentication_results


async def test_third_party_signature_does_not_align_but_ours_does(
    dns: DNSTestServer, resolver: Resolver, selectors: dict[str, DKIMSelector]
) -> None:
    example_com(dns, selectors)
    publish_key(dns, "esp.example.net", selectors["ed25519"])
    raw = message()
    signed = (
        sign(raw, "esp.example.net", [selectors["ed25519"]])
        + sign(raw, "example.com", [selectors["rsa"]])
        + raw
    )
    outcome = await run(resolver, signed, mail_from="bounce@esp.example.net", ip="203.0.113.66")
    assert outcome.spf_mailfrom.status == "none"
    assert outcome.verified_dkim_domains == ["esp.example.net", "example.com"]
    assert (outcome.dmarc.status, outcome.dmarc.dkim_aligned, outcome.dmarc.spf_aligned) == (
        "pass",
        True,
        False,
    )

    only_esp = sign(raw, "esp.example.net", [selectors["ed25519"]]) + raw
    outcome = await run(resolver, only_esp, mail_from="bounce@esp.example.net", ip="203.0.113.66")
    assert outcome.verified_dkim_domains == ["esp.example.net"]
    assert (outcome.dmarc.status, outcome.dmarc.disposition) == ("fail", "reject")


async def test_null_sender_and_no_repeated_lookups(
    dns: DNSTestServer, resolver: Resolver, selectors: dict[str, DKIMSelector]
) -> None:
    example_com(dns, selectors)
    raw = message()
    outcome = await run(resolver, sign(raw, "example.com", list(selectors.values())) + raw, mail_from="")
    assert (outcome.spf_mailfrom.status, outcome.spf_mailfrom.domain) == ("pass", "mail.example.com")
    assert outcome.dmarc.status == "pass"
    assert len(dns.queries) == len(set(dns.queries)), dns.queries


async def test_dns_timeouts_everywhere_are_temperror_and_run_concurrently(
    dns: DNSTestServer, resolver: Resolver, selectors: dict[str, DKIMSelector]
) -> None:
    for name in ("example.com", "mail.example.com", "_dmarc.example.com", "rsa2026._domainkey.example.com"):
        dns.timeout(name)
    raw = message()
    started = time.monotonic()
    outcome = await run(resolver, sign(raw, "example.com", [selectors["rsa"]]) + raw)
    elapsed = time.monotonic() - started
    assert outcome.spf_mailfrom.status == outcome.spf_helo.status == "temperror"
    assert [r.status for r in outcome.dkim] == ["temperror"]
    assert outcome.dmarc.status == "temperror"
    # Each lookup waits the resolver's 1 s timeout; one after the other they would take 4 s.
    assert elapsed < 2.5


@pytest.mark.parametrize(
    ("from_header", "problem"),
    [
        (None, "no From"),
        (b"joe@example.com <evil@example.net>", "malformed"),
        (b"a@example.com, b@example.net", "several domains"),
        (b"undisclosed-recipients:;", "no address"),
        (b"user@[192.0.2.1]", "valid domain"),
        (b"user@", "cannot be parsed"),
        (b"(" * 1500 + b"a@example.com", "cannot be parsed"),  # the stdlib parser recurses per "("
        (b", ".join(b"u%d@example.com" % i for i in range(5000)), "too long"),
    ],
)
async def test_no_single_author_domain_is_dmarc_permerror(
    dns: DNSTestServer, resolver: Resolver, from_header: bytes | None, problem: str
) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    raw = b"To: bob@example.org\r\n" + BODY if from_header is None else message(from_header)
    assert problem in author(raw).problem
    outcome = await run(resolver, raw)
    assert (outcome.from_address, outcome.from_domain) == ("", "")
    assert (outcome.dmarc.status, outcome.dmarc.disposition) == ("permerror", "none")


def test_authors_are_cached_per_from_value_but_not_over_long_ones() -> None:
    """A sender's repeated From is parsed once; a From over the length limit, whose text a sender
    chooses, is refused before the cache and never kept in it."""
    value = b'"Cached" <cached-author@example.com>'
    first = author(message(value))
    hits = message_module._parsed_author.cache_info().hits
    assert author(message(value)) == first
    assert message_module._parsed_author.cache_info().hits == hits + 1
    size = message_module._parsed_author.cache_info().currsize
    assert "too long" in author(message(b"x" * 100_000 + b"@example.com")).problem
    assert message_module._parsed_author.cache_info().currsize == size


def test_author_extraction() -> None:
    assert author(message(b'"Doe, Jane" <Jane.Doe@Example.COM>')).address == "Jane.Doe@example.com"
    assert (
        author(message(b"=?utf-8?q?J=C3=B6rg?= <j@b\xc3\xbccher.example>")).domain == "xn--bcher-kva.example"
    )
    assert author(message(b"<a@example.com> (comment)")).domain == "example.com"
    folded = b"From: Alice\r\n <alice@example.com>\r\nSubject: x\r\n" + BODY
    assert author(folded).address == "alice@example.com"
    # Two addresses of one domain: an author domain, but no single address (RFC 9989 allows DMARC).
    same_domain = author(message(b"a@example.com, b@EXAMPLE.com"))
    assert (same_domain.address, same_domain.domain) == ("", "example.com")
    twice = message(b"a@example.com", b"From: a@example.com\r\n")
    assert (author(twice).domain, author(twice).problem) == ("", "2 From header fields")
    # Only the header section counts.
    assert author(b"Subject: x\r\n\r\nFrom: a@example.com\r\n").problem == "no From header field"
    assert author(b"\xff\xfe\x00").problem == "no From header field"
