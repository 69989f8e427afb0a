"""Properties of the header fields we prepend to incoming messages, built from attacker text (HELO,
client address, envelope recipients, DNS-derived domains and reasons): the Received field
(app/smtpserver/headers.py) and Authentication-Results (app/auth/authresults.py).

Whatever the input: one field of the expected name, lines ending in CRLF and only there, every
continuation line starting with white space, no other control character, lines within RFC 5322's
998 octets; and a field that a standard parser (the stdlib's, authres for Authentication-Results)
reads back with the values we meant."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from email import message_from_bytes
from email import policy as email_policy
from typing import get_args

import authres
from hypothesis import example, given
from hypothesis import strategies as st

from app.auth.authresults import authentication_results
from app.auth.dmarc import parse_record
from app.auth.types import DKIMResult, DKIMStatus, DMARCResult, DMARCStatus, SPFResult, SPFStatus
from app.smtpserver.headers import received_header
from tests.property.strategies import address, domain, domain_or_junk, hostile_text, ip_address

MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


def check_field(field: bytes, name: str) -> list[str]:
    """The field's lines, after checking the properties in the module doc."""
    assert field.startswith(name.encode() + b": ") and field.endswith(b"\r\n")
    lines = field[:-2].split(b"\r\n")
    for number, line in enumerate(lines):
        assert b"\r" not in line and b"\n" not in line, line
        assert len(line) <= MAX_LINE, len(line)
        assert number == 0 or line[:1] in (b" ", b"\t"), line
    text = field.decode("utf-8")  # raises on a lone surrogate that slipped through
    unsafe = {
        c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in "\t\r\n"
    }
    assert not unsafe, unsafe
    parsed = message_from_bytes(field + b"\r\n", policy=email_policy.SMTP)
    assert parsed.keys() == [name] and not parsed.defects
    return [line.decode("utf-8") for line in lines]


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


QUOTED_PAIR = re.compile(r"\\(.)")


def kept_as_is(text: str) -> bool:
    """Values the builder writes unchanged: printable ASCII without edge spaces, at most 100 long."""
    return len(text) <= 100 and text == text.strip() and all(" " <= c <= "~" for c in text)


@given(domain, spf_results, spf_results, st.lists(dkim_results, max_size=3), dmarc_results)
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
    sent += [(f"header.{p}", v) for r in dkim for p, v in (("d", r.domain), ("s", r.selector))]
    sent.append(("header.from", dmarc.from_domain))
    # authres leaves quoted-pairs in the values it returns (`\\"` for `"`): undone here.
    read = [
        (f"{p.type}.{p.name}", QUOTED_PAIR.sub(r"\1", p.value)) for r in parsed.results for p in r.properties
    ]
    assert [(name, value) for name, value in read if name != "header.a"] == [
        (name, value) for name, value in sent if value.strip()
    ] or not all(kept_as_is(value) for _, value in sent)
