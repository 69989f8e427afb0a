"""The per-host TLS decision: a table of the cases the RFCs name, invariants over every combination,
and one pass through the real lookups (loopback DNS, HTTPS policy server)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from app.dns import Resolver
from app.queue.dane import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    DNSSEC_INVALID,
    TLSA_INVALID,
    VALIDATION_FAILURE,
    DANELookup,
    DANEStatus,
    TLSARecord,
    dane_for_mx,
)
from app.queue.mtasts import Mode, MTASTSResult, Policy, policy_for_domain
from app.queue.mtastsfetch import STS_POLICY_FETCH_ERROR, MTASTSSettings
from app.queue.tlspolicy import (
    CERTIFICATE_NOT_TRUSTED,
    NO_POLICY_FOUND,
    POLICY_STS,
    POLICY_TLSA,
    STARTTLS_NOT_SUPPORTED,
    ReportPolicy,
    TLSDecision,
    TLSFailure,
    decide_tls,
)
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import LOOPBACK_NETWORKS, HTTPSTestServer

DOMAIN = "example.org"
MX = "mx1.example.org"
STRANGER = "mx.elsewhere.net"
EE = TLSARecord(3, 1, 1, b"\xaa" * 32)
PKIX_EE = TLSARecord(1, 1, 1, b"\xbb" * 32)


def sts(mode: Mode) -> MTASTSResult:
    return MTASTSResult(DOMAIN, Policy(mode, 86400, (MX, "*.backup.example.net")), "1")


NO_STS = MTASTSResult(DOMAIN, None)
FETCH_FAILED = MTASTSResult(
    DOMAIN, None, "1", failure=STS_POLICY_FETCH_ERROR, error="mta-sts.example.org: HTTP 500"
)
STS_RESULTS = {
    "none": None,
    "no-record": NO_STS,
    "fetch-failed": FETCH_FAILED,
    "mode-none": MTASTSResult(DOMAIN, Policy(Mode.NONE, 86400, ()), "1"),
    "testing": sts(Mode.TESTING),
    "enforce": sts(Mode.ENFORCE),
}


def dane(status: DANEStatus, host: str = MX) -> DANELookup:
    records = {DANEStatus.DANE: (EE, PKIX_EE), DANEStatus.UNUSABLE: (PKIX_EE,)}.get(status, ())
    return DANELookup(status, host, host, records, (host,), detail=f"{status} for {host}")


# "not-looked-up" (None) apart from DANEStatus.NONE ("none"): one key for both made 192 combinations, not 240.
DANE_RESULTS = {"not-looked-up": None, **{status.value: dane(status) for status in DANEStatus}}

# (use_host, starttls_required, verify_pkix, verify_dane, ignore_errors, domain policy type,
#  host policy type, domain failure type, host failure type, STARTTLS-missing result type)
Expected = tuple[bool, bool, bool, bool, bool, str, str, str | None, str | None, str]


def summary(decision: TLSDecision) -> Expected:
    s = decision.settings
    return (
        decision.use_host,
        s.starttls_required,
        s.verify_pkix,
        s.verify_dane,
        s.ignore_verification_errors,
        decision.domain_policy.policy_type,
        decision.host_policy.policy_type,
        decision.domain_failure.result_type if decision.domain_failure else None,
        decision.host_failure.result_type if decision.host_failure else None,
        s.starttls_missing_result,
    )


NPF, SNS, VF = NO_POLICY_FOUND, STARTTLS_NOT_SUPPORTED, VALIDATION_FAILURE


@pytest.mark.parametrize(
    ("sts_key", "dane_key", "host", "mx_authentic", "tls_required_no", "expected"),
    [
        # No policies: opportunistic TLS, nothing verified.
        (
            "no-record",
            "none",
            MX,
            False,
            False,
            (True, False, False, False, False, NPF, NPF, None, None, SNS),
        ),
        (
            "mode-none",
            "none",
            MX,
            False,
            False,
            (True, False, False, False, False, NPF, NPF, None, None, SNS),
        ),
        # A failed discovery fails open but is recorded under the domain's sts policy.
        (
            "fetch-failed",
            "none",
            MX,
            False,
            False,
            (True, False, False, False, False, POLICY_STS, NPF, STS_POLICY_FETCH_ERROR, None, SNS),
        ),
        # MTA-STS enforce and testing.
        (
            "enforce",
            "none",
            MX,
            False,
            False,
            (True, True, True, False, False, POLICY_STS, NPF, None, None, SNS),
        ),
        (
            "enforce",
            "none",
            STRANGER,
            False,
            False,
            (False, True, True, False, False, POLICY_STS, NPF, VF, None, SNS),
        ),
        (
            "testing",
            "none",
            MX,
            False,
            False,
            (True, False, True, False, True, POLICY_STS, NPF, None, None, SNS),
        ),
        (
            "testing",
            "none",
            STRANGER,
            False,
            False,
            (True, False, True, False, True, POLICY_STS, NPF, VF, None, SNS),
        ),
        # DANE wins over MTA-STS, even for a host the policy does not list.
        (
            "no-record",
            "dane",
            MX,
            True,
            False,
            (True, True, False, True, False, NPF, POLICY_TLSA, None, None, SNS),
        ),
        (
            "enforce",
            "dane",
            STRANGER,
            True,
            False,
            (True, True, False, True, False, POLICY_STS, POLICY_TLSA, None, None, SNS),
        ),
        # Without an authenticated MX lookup, TLSA records do not count.
        (
            "enforce",
            "dane",
            MX,
            False,
            False,
            (True, True, True, False, False, POLICY_STS, NPF, None, None, SNS),
        ),
        (
            "no-record",
            "dane",
            MX,
            False,
            False,
            (True, False, False, False, False, NPF, NPF, None, None, SNS),
        ),
        # Unusable TLSA: TLS mandatory without authentication; MTA-STS still applies.
        (
            "no-record",
            "unusable",
            MX,
            True,
            False,
            (True, True, False, False, False, NPF, POLICY_TLSA, None, None, SNS),
        ),
        (
            "testing",
            "unusable",
            MX,
            True,
            False,
            (True, True, True, False, True, POLICY_STS, POLICY_TLSA, None, None, SNS),
        ),
        (
            "enforce",
            "unusable",
            STRANGER,
            True,
            False,
            (False, True, True, False, False, POLICY_STS, POLICY_TLSA, VF, None, SNS),
        ),
        # A TLSA lookup that failed in a signed zone: do not use the host now.
        (
            "no-record",
            "dnssec-invalid",
            MX,
            True,
            False,
            (False, False, False, False, False, NPF, POLICY_TLSA, None, DNSSEC_INVALID, SNS),
        ),
        # TLS-Required: No uses every host, TLS opportunistic, failures recorded but ignored.
        (
            "enforce",
            "none",
            STRANGER,
            False,
            True,
            (True, False, True, False, True, POLICY_STS, NPF, VF, None, SNS),
        ),
        (
            "no-record",
            "dane",
            MX,
            True,
            True,
            (True, False, False, True, True, NPF, POLICY_TLSA, None, None, SNS),
        ),
        (
            "no-record",
            "dnssec-invalid",
            MX,
            True,
            True,
            (True, False, False, False, True, NPF, POLICY_TLSA, None, DNSSEC_INVALID, SNS),
        ),
    ],
)
def test_decision_table(
    sts_key: str, dane_key: str, host: str, mx_authentic: bool, tls_required_no: bool, expected: Expected
) -> None:
    lookup = DANE_RESULTS[dane_key]
    if lookup is not None and host != MX:
        lookup = dane(lookup.status, host)
    decision = decide_tls(DOMAIN, host, mx_authentic, STS_RESULTS[sts_key], lookup, tls_required_no)
    assert summary(decision) == expected


def test_dane_settings_carry_usable_records_base_domain_and_names() -> None:
    expanded = DANELookup(DANEStatus.DANE, MX, "mx.provider.net", (EE, PKIX_EE), ("mx.provider.net", MX))
    decision = decide_tls(DOMAIN, MX, True, sts(Mode.ENFORCE), expanded)
    assert decision.settings.tlsa_records == (EE,)
    assert decision.settings.server_name == "mx.provider.net"
    assert decision.settings.dane_hostnames == ("mx.provider.net", MX)
    assert decision.basis == "DANE"


def test_report_policies_name_the_policies_as_rfc_8460_does() -> None:
    decision = decide_tls("Example.ORG.", "MX1.example.org.", True, sts(Mode.ENFORCE), dane(DANEStatus.DANE))
    assert decision.domain_policy == ReportPolicy(
        POLICY_STS,
        DOMAIN,
        ("version: STSv1", "mode: enforce", f"mx: {MX}", "mx: *.backup.example.net", "max_age: 86400"),
        (MX,),  # mx-host: the policy's pattern this host matched, one entry per MX host
    )
    assert decision.host_policy == ReportPolicy(POLICY_TLSA, MX, (EE.text(), PKIX_EE.text()), (MX,))
    backup = decide_tls(DOMAIN, "b1.backup.example.net", False, sts(Mode.TESTING), None)
    assert backup.domain_policy.mx_host == ("*.backup.example.net",)
    # RFC 8460 §1.3 / RFC 7672 §2.2.3: a tlsa policy's domain is the TLSA base domain, the MX host
    # after secure CNAME expansion; mx-host stays the MX host.
    expanded = DANELookup(DANEStatus.DANE, MX, "mx.provider.net", (EE,), ("mx.provider.net", MX))
    assert decide_tls(DOMAIN, MX, True, NO_STS, expanded).host_policy == ReportPolicy(
        POLICY_TLSA, "mx.provider.net", (EE.text(),), (MX,)
    )
    plain = decide_tls(DOMAIN, MX, False, NO_STS, None)
    assert plain.domain_policy == ReportPolicy(NO_POLICY_FOUND, DOMAIN)
    assert plain.host_policy == ReportPolicy(NO_POLICY_FOUND, MX, (), (MX,))
    assert plain.settings.server_name == MX


def test_failures_explain_themselves() -> None:
    mismatch = decide_tls(DOMAIN, STRANGER, False, sts(Mode.ENFORCE), None)
    assert mismatch.domain_failure == TLSFailure(
        VALIDATION_FAILURE,
        f"MX host {STRANGER} does not match the MTA-STS policy of {DOMAIN} ({MX}, *.backup.example.net)",
    )
    assert mismatch.basis == "MTA-STS enforce: MX host not in the policy"
    fetch = decide_tls(DOMAIN, MX, False, FETCH_FAILED, None)
    assert fetch.domain_failure == TLSFailure(STS_POLICY_FETCH_ERROR, "mta-sts.example.org: HTTP 500")
    invalid = decide_tls(DOMAIN, MX, True, NO_STS, dane(DANEStatus.DNSSEC_INVALID))
    assert invalid.host_failure == TLSFailure(DNSSEC_INVALID, f"dnssec-invalid for {MX}")


def test_wildcard_pattern_admits_one_label_only() -> None:
    policy = sts(Mode.ENFORCE)
    assert decide_tls(DOMAIN, "b1.backup.example.net", False, policy, None).use_host
    assert not decide_tls(DOMAIN, "x.b1.backup.example.net", False, policy, None).use_host
    assert not decide_tls(DOMAIN, "backup.example.net", False, policy, None).use_host


def every_combination() -> list[tuple[str, str, str, bool, bool]]:
    return list(itertools.product(STS_RESULTS, DANE_RESULTS, (MX, STRANGER), (False, True), (False, True)))


def test_every_combination_is_240() -> None:
    assert len(every_combination()) == len(STS_RESULTS) * len(DANE_RESULTS) * 2 * 2 * 2 == 240


@pytest.mark.parametrize(
    ("sts_key", "dane_key", "host", "mx_authentic", "tls_required_no"), every_combination()
)
def test_invariants_hold_for_every_combination(
    sts_key: str, dane_key: str, host: str, mx_authentic: bool, tls_required_no: bool
) -> None:
    result, lookup = STS_RESULTS[sts_key], DANE_RESULTS[dane_key]
    decision = decide_tls(DOMAIN, host, mx_authentic, result, lookup, tls_required_no)
    s = decision.settings
    status = lookup.status if lookup is not None and mx_authentic else DANEStatus.NONE
    mode = result.policy.mode if result is not None and result.policy is not None else None
    enforced_mismatch = mode == Mode.ENFORCE and host == STRANGER and status != DANEStatus.DANE

    assert s.verify_dane == (status == DANEStatus.DANE)
    assert not (s.verify_dane and s.verify_pkix)
    assert s.verify_pkix == (mode in (Mode.ENFORCE, Mode.TESTING) and status != DANEStatus.DANE)
    assert (decision.host_policy.policy_type == POLICY_TLSA) == (status != DANEStatus.NONE)
    assert (decision.domain_policy.policy_type == POLICY_STS) == (
        mode in (Mode.ENFORCE, Mode.TESTING) or sts_key == "fetch-failed"
    )
    # RFC 8460 §4.3.1: a host without STARTTLS is starttls-not-supported, DANE or not; dane-required
    # is for DANE required by configuration, which has no setting here.
    assert s.starttls_missing_result == STARTTLS_NOT_SUPPORTED
    if decision.host_policy.policy_type == POLICY_TLSA:
        assert lookup is not None and decision.host_policy.policy_domain == lookup.base_domain
    else:
        assert decision.host_policy.policy_domain == host
    assert decision.host_policy.mx_host == (host,), "mx-host is one string: the MX host"
    assert len(decision.domain_policy.mx_host) <= 1
    # Which policy a session's failure belongs to (R4.7).
    for checked in (CERTIFICATE_HOST_MISMATCH, CERTIFICATE_EXPIRED, CERTIFICATE_NOT_TRUSTED, TLSA_INVALID):
        owner = decision.failure_owner(TLSFailure(checked, "x"))
        assert owner == ("host" if s.verify_dane else "domain" if s.verify_pkix else None)
        assert not (owner == "domain" and decision.domain_policy.policy_type != POLICY_STS)
        assert not (owner == "host" and decision.host_policy.policy_type != POLICY_TLSA)
    for unnegotiated in (STARTTLS_NOT_SUPPORTED, VALIDATION_FAILURE):
        assert decision.failure_owner(TLSFailure(unnegotiated, "x")) is None, "no TLS: both policies"
    if tls_required_no:
        assert decision.use_host and not s.starttls_required and s.ignore_verification_errors
    else:
        assert decision.use_host == (not enforced_mismatch and status != DANEStatus.DNSSEC_INVALID)
        assert s.starttls_required == (
            status in (DANEStatus.DANE, DANEStatus.UNUSABLE) or mode == Mode.ENFORCE
        )
        assert s.ignore_verification_errors == (mode == Mode.TESTING and status != DANEStatus.DANE)
    if not decision.use_host:
        assert decision.domain_failure is not None or decision.host_failure is not None


# With the real lookups.


async def test_real_lookups_feed_the_decision(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    https_ca_file: Path,
    resolver: Resolver,
    sqlite_url: str,
) -> None:
    dns.add(DOMAIN, "MX", f"10 {MX}.", f"20 {STRANGER}.")
    dns.add(MX, "A", "127.0.0.1")
    dns.add(STRANGER, "A", "127.0.0.2")
    dns.add(f"_25._tcp.{STRANGER}", "TLSA", "3 1 1 " + "aa" * 32)
    dns.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1")
    dns.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.1")
    https_server.serve(f"mta-sts.{DOMAIN}", f"version: STSv1\nmode: enforce\nmx: {MX}\nmax_age: 86400\n")
    settings = MTASTSSettings(
        ca_bundle=str(https_ca_file),
        https_port=https_server.port,
        timeout=2,
        allowed_networks=LOOPBACK_NETWORKS,
    )

    sts_result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    mx = await resolver.mx(DOMAIN)
    assert not mx.authentic
    decisions = {}
    for record in mx.records:
        lookup = await dane_for_mx(resolver, record.host, mx.authentic)
        decisions[record.host] = decide_tls(DOMAIN, record.host, mx.authentic, sts_result, lookup)
    assert not any(qtype == "TLSA" for _, qtype in dns.queries)  # no DANE without an authenticated MX
    assert decisions[MX].use_host and decisions[MX].settings.verify_pkix
    assert not decisions[STRANGER].use_host

    dns.authentic("example.org")
    dns.authentic("elsewhere.net")
    mx = await resolver.mx(DOMAIN)
    assert mx.authentic
    lookup = await dane_for_mx(resolver, STRANGER, mx.authentic)
    assert lookup is not None and lookup.status == DANEStatus.DANE
    decision = decide_tls(DOMAIN, STRANGER, mx.authentic, sts_result, lookup)
    assert decision.use_host and decision.settings.verify_dane and decision.basis == "DANE"

    untrusting = Resolver(
        nameservers=["127.0.0.1"], port=dns.port, timeout=1, trust_dnssec=False, cache=False
    )
    assert await dane_for_mx(untrusting, STRANGER, True) is None
