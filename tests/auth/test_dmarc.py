"""DMARC (RFC 9989) against the loopback DNS server: records, tree walk, alignment, policies, testing."""

from __future__ import annotations

import pytest

from app.auth.dmarc import DMARCRecordError, evaluate, parse_record, tree_walk_targets
from app.auth.types import DKIMResult, DKIMStatus, SPFResult, SPFStatus
from app.dns import Resolver
from tests.support.dnsserver import DNSTestServer

NO_SPF = SPFResult("none", "", "mfrom")


def spf(domain: str, status: SPFStatus = "pass") -> SPFResult:
    return SPFResult(status, domain, "mfrom")


def dkim(domain: str, status: DKIMStatus = "pass") -> list[DKIMResult]:
    return [DKIMResult(status, domain, "sel", "ed25519-sha256")]


def dmarc_queries(dns: DNSTestServer) -> list[str]:
    return [name for name, rdtype in dns.queries if name.startswith("_dmarc.")]


# Records.


def test_parse_record_tags_and_defaults() -> None:
    record = parse_record(
        "v=DMARC1; p=Reject; sp=quarantine; np=reject; adkim=s; aspf=r; t=y; psd=n; fo=0:d;"
        " rua=mailto:a@example.com!10m, mailto:b@example.net,not a uri; ruf=mailto:f@example.com; foo=bar"
    )
    assert (record.p, record.sp, record.np, record.adkim, record.aspf) == (
        "reject",
        "quarantine",
        "reject",
        "s",
        "r",
    )
    assert (record.testing, record.psd, record.fo) == (True, "n", "0:d")
    assert record.rua == ("mailto:a@example.com", "mailto:b@example.net")
    assert record.ruf == ("mailto:f@example.com",)
    assert record.invalid_tags == ()
    default = parse_record("v=DMARC1")
    assert (default.p, default.sp, default.np, default.adkim, default.aspf, default.psd) == (
        None,
        None,
        None,
        "r",
        "r",
        "u",
    )
    assert not default.testing and default.rua == ()


def test_parse_record_legacy_tags() -> None:
    record = parse_record("v=DMARC1; p=reject; pct=50; ri=3600; rf=afrf")
    assert (record.pct, record.ri, record.testing) == (50, 3600, False)
    assert parse_record("v=DMARC1; p=reject; pct=0").testing  # RFC 7489 pct=0 acts like t=y
    assert parse_record("v=DMARC1; p=reject; pct=100; t=n").testing is False


def test_parse_record_ignores_unusable_values() -> None:
    record = parse_record("v=DMARC1; p=bogus; adkim=x; pct=101; ri=-1; fo=9; psd=maybe; t=maybe")
    assert record.p is None and record.adkim == "r" and record.pct is None and record.ri is None
    assert record.fo == "0" and record.psd == "u" and not record.testing
    assert set(record.invalid_tags) == {"p", "adkim", "pct", "ri", "fo", "psd", "t"}


@pytest.mark.parametrize(
    "text", ["", "p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=dmarc1; p=reject", "v=spf1 -all"]
)
def test_parse_record_rejects_non_dmarc_text(text: str) -> None:
    with pytest.raises(DMARCRecordError, match="v=DMARC1"):
        parse_record(text)


def test_tree_walk_targets() -> None:
    # RFC 9989's example: eight queries, the second one at the seven-label suffix.
    assert tree_walk_targets("a.b.c.d.e.f.g.h.i.j.mail.example.com") == [
        "a.b.c.d.e.f.g.h.i.j.mail.example.com",
        "g.h.i.j.mail.example.com",
        "h.i.j.mail.example.com",
        "i.j.mail.example.com",
        "j.mail.example.com",
        "mail.example.com",
        "example.com",
        "com",
    ]
    assert tree_walk_targets("example.com") == ["example.com", "com"]
    assert tree_walk_targets("a.b.c.d.e.f.g.example") == [
        "a.b.c.d.e.f.g.example",
        *tree_walk_targets("b.c.d.e.f.g.example")[0:7],
    ]


# Results.


async def test_none_without_record(dns: DNSTestServer, resolver: Resolver) -> None:
    result = await evaluate(resolver, "example.com", spf("example.com"), [])
    assert (result.status, result.disposition, result.record) == ("none", "none", None)


async def test_pass_by_dkim_or_spf(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject; rua=mailto:d@example.com")
    by_dkim = await evaluate(resolver, "example.com", spf("other.example", "fail"), dkim("example.com"))
    assert (by_dkim.status, by_dkim.dkim_aligned, by_dkim.spf_aligned) == ("pass", True, False)
    assert (by_dkim.disposition, by_dkim.policy_domain, by_dkim.organizational_domain) == (
        "none",
        "example.com",
        "example.com",
    )
    by_spf = await evaluate(resolver, "example.com", spf("example.com"), dkim("other.example", "fail"))
    assert (by_spf.status, by_spf.dkim_aligned, by_spf.spf_aligned) == ("pass", False, True)


@pytest.mark.parametrize("policy", ["reject", "quarantine", "none"])
async def test_fail_applies_the_policy(dns: DNSTestServer, resolver: Resolver, policy: str) -> None:
    dns.txt("_dmarc.example.com", f"v=DMARC1; p={policy}")
    # Passing SPF and DKIM for a domain that does not align are not enough; failing ones never are.
    result = await evaluate(
        resolver, "example.com", spf("example.net"), dkim("example.com", "fail") + dkim("example.org")
    )
    assert (result.status, result.disposition, result.requested_disposition) == ("fail", policy, policy)
    assert not result.testing


async def test_relaxed_and_strict_alignment(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    relaxed = await evaluate(
        resolver, "news.example.com", spf("bounces.example.com"), dkim("mail.example.com")
    )
    assert (relaxed.status, relaxed.dkim_aligned, relaxed.spf_aligned) == ("pass", True, True)

    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject; adkim=s; aspf=s")
    strict = await evaluate(resolver, "news.example.org", spf("example.org"), dkim("example.org"))
    assert (strict.status, strict.disposition) == ("fail", "reject")
    exact = await evaluate(resolver, "news.example.org", spf("news.example.org"), dkim("NEWS.example.org"))
    assert (exact.status, exact.dkim_aligned, exact.spf_aligned) == ("pass", True, True)

    dns.txt("_dmarc.example.net", "v=DMARC1; p=reject; adkim=s")  # aspf stays relaxed
    mixed = await evaluate(resolver, "news.example.net", spf("example.net"), dkim("example.net"))
    assert (mixed.status, mixed.dkim_aligned, mixed.spf_aligned) == ("pass", False, True)


async def test_different_organizational_domains_do_not_align(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    dns.txt("_dmarc.example.net", "v=DMARC1; p=none")
    result = await evaluate(resolver, "example.com", spf("example.net"), dkim("mail.example.net"))
    assert (result.status, result.disposition) == ("fail", "reject")


async def test_multiple_signatures_one_aligned(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject; adkim=s")
    signatures = (
        dkim("esp.example.net") + dkim("example.com", "fail") + dkim("example.com") + dkim("x.example.com")
    )
    result = await evaluate(resolver, "example.com", NO_SPF, signatures)
    assert (result.status, result.dkim_aligned) == ("pass", True)


async def test_subdomain_policy(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=none; sp=reject")
    dns.add("news.example.com", "A", "192.0.2.1")
    sub = await evaluate(resolver, "news.example.com", NO_SPF, [])
    assert (sub.status, sub.policy_domain, sub.disposition, sub.requested_disposition) == (
        "fail",
        "example.com",
        "reject",
        "reject",
    )
    assert "sp=reject" in sub.reason
    top = await evaluate(resolver, "example.com", NO_SPF, [])
    assert (top.status, top.disposition) == ("fail", "none")
    # A subdomain with its own record uses that record's p.
    dns.txt("_dmarc.news.example.com", "v=DMARC1; p=quarantine; sp=none")
    own = await evaluate(resolver, "news.example.com", NO_SPF, [])
    assert (own.policy_domain, own.disposition) == ("news.example.com", "quarantine")


async def test_non_existent_subdomain_policy(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=none; sp=quarantine; np=reject")
    dns.add("www.example.com", "A", "192.0.2.1")
    dns.add("mx-only.example.com", "MX", "10 mx.example.com.")
    missing = await evaluate(resolver, "nx.example.com", NO_SPF, [])
    assert (missing.status, missing.disposition) == ("fail", "reject")
    assert "np=reject" in missing.reason
    for existing in ("www.example.com", "mx-only.example.com"):
        result = await evaluate(resolver, existing, NO_SPF, [])
        assert (result.status, result.disposition) == ("fail", "quarantine")
    # Without np, sp applies to non-existent subdomains too; without sp, p does.
    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject; sp=quarantine")
    assert (await evaluate(resolver, "nx.example.org", NO_SPF, [])).disposition == "quarantine"
    dns.txt("_dmarc.example.net", "v=DMARC1; p=reject")
    assert (await evaluate(resolver, "nx.example.net", NO_SPF, [])).disposition == "reject"


async def test_existence_is_only_checked_when_np_decides(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject; np=reject")
    await evaluate(resolver, "nx.example.com", NO_SPF, dkim("example.com"))  # passes
    await evaluate(resolver, "example.com", NO_SPF, [])  # fails, but p applies
    assert not [q for q in dns.queries if q[1] in ("A", "AAAA", "MX")]


@pytest.mark.parametrize(
    ("record", "disposition", "requested"),
    [
        ("v=DMARC1; p=reject; t=y", "quarantine", "reject"),
        ("v=DMARC1; p=quarantine; t=y", "none", "quarantine"),
        ("v=DMARC1; p=reject; pct=0", "quarantine", "reject"),
        ("v=DMARC1; p=reject; pct=25", "reject", "reject"),  # other pct values no longer sample
        ("v=DMARC1; p=reject; t=n", "reject", "reject"),
    ],
)
async def test_testing_mode(
    dns: DNSTestServer, resolver: Resolver, record: str, disposition: str, requested: str
) -> None:
    dns.txt("_dmarc.example.com", record)
    result = await evaluate(resolver, "example.com", NO_SPF, [])
    assert (result.status, result.disposition, result.requested_disposition) == (
        "fail",
        disposition,
        requested,
    )
    assert result.testing == (disposition != requested)
    assert result.record is not None and result.record.testing == result.testing


async def test_dns_failure_is_temperror(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.timeout("_dmarc.example.com")
    result = await evaluate(resolver, "example.com", spf("example.com"), [])
    assert result.status == "temperror"
    dns.servfail("_dmarc.example.org")
    assert (await evaluate(resolver, "mail.example.org", NO_SPF, [])).status == "temperror"


async def test_underlying_temperror_that_may_align_is_temperror(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    key_timeout = await evaluate(resolver, "example.com", NO_SPF, dkim("example.com", "temperror"))
    assert (key_timeout.status, key_timeout.disposition) == ("temperror", "none")
    spf_timeout = await evaluate(resolver, "example.com", spf("example.com", "temperror"), [])
    assert spf_timeout.status == "temperror"
    # A temporary error for a domain that could not align anyway does not hold the decision up.
    unrelated = await evaluate(
        resolver, "example.com", spf("example.net", "temperror"), dkim("example.net", "temperror")
    )
    assert (unrelated.status, unrelated.disposition) == ("fail", "reject")
    # A pass decides whatever else failed.
    passed = await evaluate(resolver, "example.com", spf("example.com", "temperror"), dkim("example.com"))
    assert passed.status == "pass"


async def test_unusable_policy(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=bogus")
    result = await evaluate(resolver, "example.com", NO_SPF, [])
    assert (result.status, result.disposition) == ("permerror", "none")
    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject; np=bogus")
    assert (await evaluate(resolver, "example.org", NO_SPF, [])).status == "permerror"
    # With a rua= the record acts as p=none (RFC 9989 4.10.1): evaluated and reported, never enforced.
    dns.txt("_dmarc.example.net", "v=DMARC1; p=reject; sp=bogus; rua=mailto:d@example.net")
    reported = await evaluate(resolver, "example.net", NO_SPF, [])
    assert (reported.status, reported.disposition) == ("fail", "none")
    dns.txt("_dmarc.example.info", "v=DMARC1; rua=mailto:d@example.info")
    assert (await evaluate(resolver, "example.info", NO_SPF, [])).disposition == "none"


async def test_no_author_domain_is_permerror(resolver: Resolver) -> None:
    for domain in ("", "not a domain"):
        result = await evaluate(resolver, domain, spf("example.com"), dkim("example.com"))
        assert result.status == "permerror"


async def test_several_records_or_foreign_text_are_not_a_record(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=none", "v=DMARC1; p=reject")  # both discarded
    dns.txt("_dmarc.mail.example.com", "some verification token")
    dns.txt("_dmarc.com", "v=DMARC1; p=quarantine; psd=y")
    result = await evaluate(resolver, "mail.example.com", NO_SPF, [])
    assert (result.policy_domain, result.disposition) == ("com", "quarantine")


# The DNS Tree Walk.


async def test_policy_from_organizational_domain(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject; sp=quarantine")
    dns.add("a.b.example.com", "A", "192.0.2.1")
    result = await evaluate(resolver, "a.b.example.com", NO_SPF, [])
    assert (result.policy_domain, result.organizational_domain, result.disposition) == (
        "example.com",
        "example.com",
        "quarantine",
    )
    assert dmarc_queries(dns) == [
        "_dmarc.a.b.example.com",
        "_dmarc.b.example.com",
        "_dmarc.example.com",
        "_dmarc.com",
    ]


async def test_intermediate_record_is_not_the_policy(dns: DNSTestServer, resolver: Resolver) -> None:
    # RFC 9989: the policy comes from the Author Domain, its Organizational Domain, or its PSD.
    dns.txt("_dmarc.mail.example.com", "v=DMARC1; p=none")
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    result = await evaluate(resolver, "a.mail.example.com", NO_SPF, [])
    assert (result.policy_domain, result.organizational_domain, result.disposition) == (
        "example.com",
        "example.com",
        "reject",
    )


async def test_public_suffix_domain_with_psd_y(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.bank", "v=DMARC1; p=reject; psd=y")
    dns.add("mail.example.bank", "A", "192.0.2.1")
    # The Organizational Domain is the label below the PSD, whose policy applies to it.
    aligned = await evaluate(resolver, "mail.example.bank", NO_SPF, dkim("news.example.bank"))
    assert (aligned.status, aligned.policy_domain, aligned.organizational_domain) == (
        "pass",
        "bank",
        "example.bank",
    )
    # A signature of another registrant under the same PSD does not align.
    other = await evaluate(resolver, "mail.example.bank", spf("other.bank"), dkim("other.bank"))
    assert (other.status, other.disposition) == ("fail", "reject")


async def test_without_psd_y_the_suffix_is_the_organizational_domain(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    # The same records without psd=y: "bank" becomes everyone's Organizational Domain (which is why
    # public suffix operators mark their records).
    dns.txt("_dmarc.bank", "v=DMARC1; p=reject")
    result = await evaluate(resolver, "mail.example.bank", NO_SPF, dkim("other.bank"))
    assert (result.status, result.organizational_domain) == ("pass", "bank")


async def test_psd_n_fixes_the_organizational_domain(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.mail.example.com", "v=DMARC1; p=reject; psd=n")
    dns.txt("_dmarc.example.com", "v=DMARC1; p=none")
    result = await evaluate(resolver, "a.mail.example.com", NO_SPF, dkim("example.com"))
    assert (result.status, result.organizational_domain, result.policy_domain) == (
        "fail",
        "mail.example.com",
        "mail.example.com",
    )
    assert "_dmarc.com" not in dmarc_queries(dns)  # the walk stopped at psd=n
    aligned = await evaluate(resolver, "a.mail.example.com", NO_SPF, dkim("b.mail.example.com"))
    assert aligned.status == "pass"


async def test_parent_without_record_does_not_align(dns: DNSTestServer, resolver: Resolver) -> None:
    # RFC 9989: a subdomain whose parents publish nothing is its own Organizational Domain.
    dns.txt("_dmarc.mail.example.com", "v=DMARC1; p=reject")
    result = await evaluate(resolver, "mail.example.com", spf("example.com"), dkim("example.com"))
    assert (result.status, result.organizational_domain) == ("fail", "mail.example.com")


async def test_long_author_domain_takes_at_most_eight_lookups(dns: DNSTestServer, resolver: Resolver) -> None:
    domain = "a.b.c.d.e.f.g.h.i.j.mail.example.com"
    result = await evaluate(resolver, domain, spf("example.com"), dkim("x.example.com"))
    assert result.status == "none"
    queries = dmarc_queries(dns)
    assert queries == [f"_dmarc.{name}" for name in tree_walk_targets(domain)]
    assert len(queries) == 8


async def test_each_name_is_looked_up_once(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_dmarc.mail.example.com", "v=DMARC1; p=reject")
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    result = await evaluate(
        resolver,
        "news.mail.example.com",
        spf("a.example.com"),
        dkim("b.example.com") + dkim("c.mail.example.com"),
    )
    assert result.status == "pass"
    queries = dmarc_queries(dns)
    assert len(queries) == len(set(queries))
