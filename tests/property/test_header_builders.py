"""Properties of the header fields we prepend to incoming messages, built from attacker text (HELO,
client address, envelope recipients, DNS-derived domains and reasons): the Received field
(app/smtpserver/headers.py) and Authentication-Results (app/auth/authresults.py). Whatever the input,
each is one safe field (tests/property/fields.py); from well-formed input, a parser reads back the
values we meant (authres, a parser we did not write, for Authentication-Results)."""

from __future__ import annotations

import ipaddress
from typing import get_args

import authres
from hypothesis import example, given
from hypothesis import strategies as st

from app.auth.authresults import authentication_results
from app.auth.dmarc import parse_record
from app.auth.types import DKIMResult, DKIMStatus, DMARCResult, DMARCStatus, SPFResult, SPFStatus
from app.smtpserver.headers import received_header
from tests.property.fields import check_field
from tests.property.strategies import address, domain, domain_or_junk, hostile_text, ip_address

# Received.

recipients = st.lists(st.one_of(address, hostile_text), max_size=3)


@given(
    hostile_text, ip_address, domain_or_junk, hostile_text, hostile_text, recipients, st.none() | hostile_text
)
@example("a\r\nX-Injected: 1", "192.0.2.1", "mx.example", "ESMTP", "id1", ["a\u2028b@example.org"], None)
@example("helo.example", "fe80::1%\r\nX-Injected: 1", "mx.example", "ESMTP", "id1", [], None)
@example("helo.example", "192.0.2.1", "mx.example", "ESMTP", "id1", ["\udcff@example.org"], "(x)\r\n")
@example("helo.example", "192.0.2.1", "mx.example", "ESMTP", "id1", ["a" * 2000 + "@example.org"], None)
def test_received_field_is_one_safe_field(
    helo: str,
    remote_ip: str,
    hostname: str,
    protocol: str,
    transaction_id: str,
    rcpts: list[str],
    tls: str | None,
) -> None:
    field = received_header(
        helo=helo,
        remote_ip=remote_ip,
        hostname=hostname,
        protocol=protocol,
        transaction_id=transaction_id,
        recipients=rcpts,
        tls=tls,
    )
    check_field(field, "Received")


@given(domain, st.ip_addresses(), domain, address, st.booleans())
def test_received_field_names_a_well_formed_client_and_recipient(
    helo: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, hostname: str, rcpt: str, tls: bool
) -> None:
    field = received_header(
        helo=helo,
        remote_ip=str(ip),
        hostname=hostname,
        protocol="ESMTPS" if tls else "ESMTP",
        transaction_id="t1",
        recipients=[rcpt],
        tls="using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256" if tls else None,
    )
    lines = check_field(field, "Received")
    literal = f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"  # RFC 5321 4.1.3 address literals
    assert lines[0] == f"Received: from {helo} ({literal})"
    assert lines[1].startswith(f"\tby {hostname} with {'ESMTPS' if tls else 'ESMTP'} id t1")
    assert f"\tfor <{rcpt}>; " in field.decode()


# Authentication-Results.

reason_text = st.one_of(st.just(""), hostile_text)
spf_results = st.builds(
    SPFResult,
    st.sampled_from(get_args(SPFStatus)),
    domain_or_junk,
    st.sampled_from(("mfrom", "helo")),
    reason=reason_text,
)
dkim_results = st.builds(
    DKIMResult,
    st.sampled_from(get_args(DKIMStatus)),
    domain_or_junk,
    hostile_text,
    algorithm=st.one_of(st.sampled_from(("rsa-sha256", "ed25519-sha256")), hostile_text),
    reason=reason_text,
)
dmarc_results = st.builds(
    DMARCResult,
    st.sampled_from(get_args(DMARCStatus)),
    domain_or_junk,
    record=st.none() | st.just(parse_record("v=DMARC1; p=reject")),
    disposition=st.sampled_from(("none", "quarantine", "reject")),
    reason=reason_text,
    testing=st.booleans(),
)


def header(
    authserv_id: str, spf: SPFResult, helo: SPFResult, dkim: list[DKIMResult], dmarc: DMARCResult
) -> str:
    return authentication_results(authserv_id, spf_mailfrom=spf, spf_helo=helo, dkim=dkim, dmarc=dmarc)


@given(domain_or_junk, spf_results, spf_results, st.lists(dkim_results, max_size=3), dmarc_results)
@example(
    "mx\r\n.example",
    SPFResult("none", "a", "mfrom"),
    SPFResult("none", "b", "helo"),
    [],
    DMARCResult("none", "c"),
)
def test_authentication_results_is_one_safe_field(
    authserv_id: str, spf: SPFResult, helo: SPFResult, dkim: list[DKIMResult], dmarc: DMARCResult
) -> None:
    check_field(header(authserv_id, spf, helo, dkim, dmarc).encode("utf-8"), "Authentication-Results")


# Well-formed results: domains, token selectors and algorithms, printable reasons.
token = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)
printable_reason = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
well_formed_spf = st.builds(
    SPFResult, st.sampled_from(get_args(SPFStatus)), domain, st.just("mfrom"), reason=printable_reason
)
well_formed_dkim = st.builds(
    DKIMResult, st.sampled_from(get_args(DKIMStatus)), domain, token, algorithm=token, reason=printable_reason
)
well_formed_dmarc = st.builds(
    DMARCResult, st.sampled_from(get_args(DMARCStatus)), domain, reason=printable_reason
)


@given(domain, well_formed_spf, well_formed_spf, st.lists(well_formed_dkim, max_size=3), well_formed_dmarc)
@example(
    "mx.example",
    SPFResult("none", "a.example", "mfrom"),
    SPFResult("none", " ", "helo", reason="\r\n"),  # nothing printable: neither smtp.helo="" nor reason=""
    [],
    DMARCResult("none", "c.example"),
)
def test_authentication_results_reads_back_with_a_peer_parser(
    authserv_id: str, spf: SPFResult, helo: SPFResult, dkim: list[DKIMResult], dmarc: DMARCResult
) -> None:
    """authres (a parser we did not write) finds our server, and each method's result in order."""
    text = header(authserv_id, spf, helo, dkim, dmarc)
    parsed = authres.AuthenticationResultsHeader.parse(text.rstrip("\r\n").replace("\r\n", "\n"))
    assert parsed.authserv_id == authserv_id
    expected = [("spf", spf.status), ("spf", helo.status)]
    expected += [("dkim", r.status) for r in dkim] or [("dkim", "none")]
    expected.append(("dmarc", dmarc.status))
    assert [(r.method, r.result) for r in parsed.results] == expected
    sent = [("smtp.mailfrom", spf.domain), ("smtp.helo", helo.domain)]
    sent += [
        (f"header.{p}", v) for r in dkim for p, v in (("d", r.domain), ("s", r.selector), ("a", r.algorithm))
    ]
    sent.append(("header.from", dmarc.from_domain))
    read = [(f"{p.type}.{p.name}", p.value) for r in parsed.results for p in r.properties]
    assert read == [(name, value) for name, value in sent if value.strip()]
