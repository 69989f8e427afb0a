"""DANE (RFC 7672): TLSA lookups over the loopback DNS server and a real validating resolver
(unbound over an nsd-served zone signed with ldns tools), and chain checks with real certificates."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.flags
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.dns import DNSTemporaryError, Resolver
from app.queue.dane import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    TLSA_INVALID,
    VALIDATION_FAILURE,
    DANELookup,
    DANEStatus,
    TLSARecord,
    check_chain,
    lookup_tlsa,
    verify_chain,
)
from app.queue.tlspolicy import decide_tls
from tests.support.dnssec import DNSSECTestbed, Zone, missing_tools, stub_resolver
from tests.support.dnsserver import DNSTestServer

MX = "mx.example.org"
TLSA_NAME = f"_25._tcp.{MX}"


# Certificates.


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def der_chain(leaf: trustme.LeafCert, *extra: trustme.CA) -> list[bytes]:
    """The chain a server presents: leaf, intermediates, then any extra CA certificates."""
    pems = [blob.bytes() for blob in leaf.cert_chain_pems] + [ca.cert_pem.bytes() for ca in extra]
    return [x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER) for pem in pems]


def record(usage: int, selector: int, matching: int, certificate_der: bytes) -> TLSARecord:
    """A TLSA record computed here from first principles (not with the code under test)."""
    certificate = x509.load_der_x509_certificate(certificate_der)
    if selector == 0:
        selected = certificate_der
    else:
        selected = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = {
        0: lambda b: b,
        1: lambda b: hashlib.sha256(b).digest(),
        2: lambda b: hashlib.sha512(b).digest(),
    }
    return TLSARecord(usage, selector, matching, digest[matching](selected))


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_certificate(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool | None = None,
    dns_names: tuple[str, ...] = (),
    expired: bool = False,
) -> bytes:
    """A certificate for `key`, self-signed unless `issuer` (common name, key) is given; with a
    BasicConstraints extension when `ca` is given; valid now unless `expired`."""
    issuer_name, issuer_key = issuer or (common_name, key)
    start = datetime.now(UTC) - timedelta(days=10 if expired else 1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=2))
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), False
        )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(Encoding.DER)


# TLSA records.


@pytest.mark.parametrize(
    ("usage", "selector", "matching", "size", "usable"),
    [
        (3, 1, 1, 32, True),
        (3, 0, 2, 64, True),
        (2, 0, 0, 300, True),
        (2, 1, 1, 32, True),
        (0, 0, 1, 32, False),  # PKIX-TA is not for SMTP
        (1, 1, 1, 32, False),  # PKIX-EE is not for SMTP
        (4, 1, 1, 32, False),
        (3, 2, 1, 32, False),
        (3, 1, 3, 32, False),
        (3, 1, 1, 31, False),  # a SHA-256 digest of the wrong size can never match
        (3, 1, 2, 32, False),
        (3, 1, 0, 0, False),
    ],
)
def test_usable_records(usage: int, selector: int, matching: int, size: int, usable: bool) -> None:
    assert TLSARecord(usage, selector, matching, b"\x01" * size).usable is usable


def test_record_text_is_presentation_form() -> None:
    assert TLSARecord(3, 1, 1, bytes.fromhex("0a1b")).text() == "3 1 1 0A1B"


# DANE-EE.


@pytest.mark.parametrize(("selector", "matching"), [(s, m) for s in (0, 1) for m in (0, 1, 2)])
def test_dane_ee_matches_leaf_by_every_selector_and_matching_type(
    ca: trustme.CA, selector: int, matching: int
) -> None:
    chain = der_chain(ca.issue_cert(MX))
    assert verify_chain(chain, [record(3, selector, matching, chain[0])], [MX]) == (True, "")
    other = der_chain(ca.issue_cert(MX))
    assert verify_chain(other, [record(3, selector, matching, chain[0])], [MX]) == (False, TLSA_INVALID)


def test_dane_ee_ignores_names_expiry_and_issuer() -> None:
    expired = make_certificate("somewhere.else.example", new_key(), expired=True)
    assert verify_chain([expired], [record(3, 1, 1, expired)], [MX]) == (True, "")


def test_dane_ee_needs_the_leaf_not_another_chain_member(ca: trustme.CA) -> None:
    chain = der_chain(ca.issue_cert(MX), ca)
    assert verify_chain(chain, [record(3, 1, 1, chain[1])], [MX]) == (False, TLSA_INVALID)


def test_one_matching_record_among_several_is_enough(ca: trustme.CA) -> None:
    chain = der_chain(ca.issue_cert(MX))
    records = [
        TLSARecord(3, 1, 1, b"\x00" * 32),
        TLSARecord(1, 1, 1, b"\x00" * 32),
        record(3, 0, 1, chain[0]),
    ]
    assert verify_chain(chain, records, [MX]) == (True, "")


def test_unusable_records_never_verify(ca: trustme.CA) -> None:
    chain = der_chain(ca.issue_cert(MX), ca)
    pkix = [record(1, 1, 1, chain[0]), record(0, 0, 1, chain[1])]
    assert verify_chain(chain, pkix, [MX]) == (False, TLSA_INVALID)


# DANE-TA.


def test_dane_ta_root_in_chain_with_host_name(ca: trustme.CA) -> None:
    chain = der_chain(ca.issue_cert(MX), ca)
    assert verify_chain(chain, [record(2, 0, 1, chain[-1])], [MX]) == (True, "")
    assert verify_chain(chain, [record(2, 1, 2, chain[-1])], ["MX.Example.Org."]) == (True, "")


def test_dane_ta_intermediate_anchor(ca: trustme.CA) -> None:
    intermediate = ca.create_child_ca()
    chain = der_chain(intermediate.issue_cert(MX))
    assert len(chain) == 2
    assert verify_chain(chain, [record(2, 1, 1, chain[1])], [MX]) == (True, "")


def test_dane_ta_wrong_name_is_host_mismatch(ca: trustme.CA) -> None:
    chain = der_chain(ca.issue_cert("other.example.org"), ca)
    check = check_chain(chain, [record(2, 0, 1, chain[-1])], [MX])
    assert (check.ok, check.result_type) == (False, CERTIFICATE_HOST_MISMATCH)
    assert "other.example.org" in check.detail


def test_dane_ta_accepts_the_cname_expanded_name_and_one_label_wildcards(ca: trustme.CA) -> None:
    chain = der_chain(ca.issue_cert("mx.provider.net"), ca)
    anchor = [record(2, 0, 1, chain[-1])]
    assert verify_chain(chain, anchor, ["mx.provider.net", MX]) == (True, "")
    wildcard = der_chain(ca.issue_cert("*.example.org"), ca)
    anchor = [record(2, 0, 1, wildcard[-1])]
    assert verify_chain(wildcard, anchor, [MX]) == (True, "")
    assert verify_chain(wildcard, anchor, ["a.mx.example.org"]) == (False, CERTIFICATE_HOST_MISMATCH)


def test_dane_ta_common_name_only_without_dns_names() -> None:
    certificate = make_certificate(MX, new_key(), ca=True)
    assert verify_chain([certificate], [record(2, 1, 1, certificate)], [MX]) == (True, "")
    assert verify_chain([certificate], [record(2, 1, 1, certificate)], ["mx2.example.org"]) == (
        False,
        CERTIFICATE_HOST_MISMATCH,
    )


def test_dane_ta_checks_dates_below_the_anchor(ca: trustme.CA) -> None:
    expired = ca.issue_cert(MX, not_after=datetime.now(UTC) - timedelta(hours=1))
    chain = der_chain(expired, ca)
    assert verify_chain(chain, [record(2, 0, 1, chain[-1])], [MX]) == (False, CERTIFICATE_EXPIRED)
    future = ca.issue_cert(MX, not_before=datetime.now(UTC) + timedelta(hours=1))
    chain = der_chain(future, ca)
    assert verify_chain(chain, [record(2, 0, 1, chain[-1])], [MX]) == (False, CERTIFICATE_EXPIRED)


def test_dane_ta_anchor_must_be_presented(ca: trustme.CA) -> None:
    chain = der_chain(ca.issue_cert(MX))  # the root is not sent
    root = der_chain(ca.issue_cert(MX), ca)[-1]
    assert verify_chain(chain, [record(2, 0, 1, root)], [MX]) == (False, TLSA_INVALID)


def test_dane_ta_anchor_that_did_not_sign_the_leaf_is_a_validation_failure(ca: trustme.CA) -> None:
    stranger = trustme.CA().issue_cert(MX)
    chain = der_chain(stranger, ca)  # our CA appended, but it did not issue the leaf
    check = check_chain(chain, [record(2, 0, 1, chain[-1])], [MX])
    assert (check.ok, check.result_type) == (False, VALIDATION_FAILURE)


def test_dane_ta_issuer_must_be_a_ca() -> None:
    """A leaf really signed by the key of a certificate that is not a CA is not a chain."""
    issuer_key = new_key()
    leaf = make_certificate(MX, new_key(), ("issuer.example", issuer_key), ca=False, dns_names=(MX,))
    for issuer_is_ca, expected in ((False, (False, VALIDATION_FAILURE)), (True, (True, ""))):
        issuer = make_certificate("issuer.example", issuer_key, ca=issuer_is_ca)
        assert verify_chain([leaf, issuer], [record(2, 0, 1, issuer)], [MX]) == expected


def test_garbage_or_empty_chain_is_a_validation_failure(ca: trustme.CA) -> None:
    good = der_chain(ca.issue_cert(MX))
    assert verify_chain([b"not a certificate"], [record(3, 1, 1, good[0])], [MX]) == (
        False,
        VALIDATION_FAILURE,
    )
    assert verify_chain([], [record(3, 1, 1, good[0])], [MX]) == (False, VALIDATION_FAILURE)


async def test_chain_taken_from_a_real_handshake_verifies(ca: trustme.CA) -> None:
    """The chain as an SMTP client gets it from an unverified TLS 1.3 handshake."""
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert(MX)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_context)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context, server_hostname=MX)
    ssl_object = writer.get_extra_info("ssl_object")
    # Python 3.13 has SSLObject.get_unverified_chain(); 3.11/3.12 only the internal object.
    presented = getattr(ssl_object, "get_unverified_chain", None) or ssl_object._sslobj.get_unverified_chain
    chain = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in presented()]
    writer.close()
    server.close()
    await server.wait_closed()
    assert chain == der_chain(leaf)
    assert verify_chain(chain, [record(2, 1, 1, chain[1])], [MX]) == (True, "")
    assert verify_chain(chain, [record(3, 1, 1, chain[0])], ["anything"]) == (True, "")


# Lookups over the loopback DNS server (AD bit set per zone by the test server).


def publish_mx_host(dns: DNSTestServer, *tlsa: str) -> None:
    dns.add(MX, "A", "127.0.0.1")
    if tlsa:
        dns.add(TLSA_NAME, "TLSA", *tlsa)


async def test_authentic_usable_tlsa_means_dane(dns: DNSTestServer, resolver: Resolver) -> None:
    publish_mx_host(dns, "3 1 1 " + "ab" * 32, "1 1 1 " + "cd" * 32)
    dns.authentic("example.org")
    lookup = await lookup_tlsa(resolver, "MX.example.org.")
    assert lookup.status == DANEStatus.DANE
    assert (lookup.mx_host, lookup.base_domain, lookup.hostnames) == (MX, MX, (MX,))
    assert lookup.usable_records == (TLSARecord(3, 1, 1, b"\xab" * 32),)
    assert sorted(lookup.policy_strings) == ["1 1 1 " + "CD" * 32, "3 1 1 " + "AB" * 32]


async def test_tlsa_on_another_port(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.add(MX, "A", "127.0.0.1")
    dns.add(f"_2525._tcp.{MX}", "TLSA", "3 1 1 " + "ab" * 32)
    dns.authentic("example.org")
    assert (await lookup_tlsa(resolver, MX, port=2525)).status == DANEStatus.DANE
    assert (await lookup_tlsa(resolver, MX)).status == DANEStatus.NONE


async def test_tlsa_without_ad_bit_is_no_dane(dns: DNSTestServer, resolver: Resolver) -> None:
    publish_mx_host(dns, "3 1 1 " + "ab" * 32)
    lookup = await lookup_tlsa(resolver, MX)
    assert lookup.status == DANEStatus.NONE and lookup.records == ()


async def test_authentic_tlsa_of_an_insecure_host_is_no_dane(dns: DNSTestServer, resolver: Resolver) -> None:
    publish_mx_host(dns, "3 1 1 " + "ab" * 32)
    dns.authentic(TLSA_NAME)  # only the TLSA answer is signed, the host's address is not
    lookup = await lookup_tlsa(resolver, MX)
    assert lookup.status == DANEStatus.NONE
    assert "not DNSSEC-signed" in lookup.detail


async def test_secure_absence_of_tlsa_is_no_dane(dns: DNSTestServer, resolver: Resolver) -> None:
    publish_mx_host(dns)
    dns.authentic("example.org")
    assert await lookup_tlsa(resolver, MX) == DANELookup(
        DANEStatus.NONE, MX, MX, hostnames=(MX,), detail=f"no authenticated TLSA for {MX}"
    )


async def test_only_unusable_records_mean_tls_without_authentication(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    publish_mx_host(dns, "1 1 1 " + "ab" * 32, "3 4 1 " + "ab" * 32)
    dns.authentic("example.org")
    lookup = await lookup_tlsa(resolver, MX)
    assert lookup.status == DANEStatus.UNUSABLE
    assert len(lookup.records) == 2 and lookup.usable_records == ()


@pytest.mark.parametrize("failure", ["servfail", "timeout"])
async def test_failed_tlsa_lookup_in_signed_zone_is_dnssec_invalid(
    failure: str, dns: DNSTestServer, resolver: Resolver
) -> None:
    publish_mx_host(dns, "3 1 1 " + "ab" * 32)
    dns.authentic("example.org")
    getattr(dns, failure)(TLSA_NAME)
    lookup = await lookup_tlsa(resolver, MX)
    assert lookup.status == DANEStatus.DNSSEC_INVALID
    assert TLSA_NAME in lookup.detail


async def test_failed_address_lookup_is_a_temporary_error(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.servfail(MX)
    with pytest.raises(DNSTemporaryError):
        await lookup_tlsa(resolver, MX)


async def test_secure_cname_expansion_is_tried_first_then_the_mx_name(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.add(MX, "CNAME", "mx.provider.net.")
    dns.add("mx.provider.net", "A", "127.0.0.1")
    dns.add("_25._tcp.mx.provider.net", "TLSA", "3 1 1 " + "11" * 32)
    dns.add(TLSA_NAME, "TLSA", "3 1 1 " + "22" * 32)
    dns.authentic("example.org")
    dns.authentic("provider.net")
    expanded = await lookup_tlsa(resolver, MX)
    assert (expanded.base_domain, expanded.hostnames) == ("mx.provider.net", ("mx.provider.net", MX))
    assert expanded.records == (TLSARecord(3, 1, 1, b"\x11" * 32),)
    # RFC 8460 §1.3, RFC 7672 §2.2.3: the tlsa policy reported is the TLSA base domain's, for this MX.
    host_policy = decide_tls("example.org", MX, True, None, expanded).host_policy
    assert (host_policy.policy_type, host_policy.policy_domain, host_policy.mx_host) == (
        "tlsa",
        "mx.provider.net",
        (MX,),
    )

    dns.authentic_zones.discard("provider.net.")  # the target's TLSA is no longer authenticated
    fallback = await lookup_tlsa(resolver, MX)
    assert fallback.base_domain == MX and fallback.records == (TLSARecord(3, 1, 1, b"\x22" * 32),)
    assert decide_tls("example.org", MX, True, None, fallback).host_policy.policy_domain == MX


async def test_cname_chain_through_an_unauthenticated_link_is_not_expanded(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.add(MX, "CNAME", "mx.provider.net.")
    dns.add("mx.provider.net", "CNAME", "mx.third.net.")
    dns.add("mx.third.net", "A", "127.0.0.1")
    dns.add("_25._tcp.mx.third.net", "TLSA", "3 1 1 " + "11" * 32)
    dns.add(TLSA_NAME, "TLSA", "3 1 1 " + "22" * 32)
    dns.authentic("example.org")
    dns.authentic("third.net")  # provider.net, in the middle, is not signed
    lookup = await lookup_tlsa(resolver, MX)
    assert (lookup.base_domain, lookup.hostnames) == (MX, (MX,))
    assert lookup.records == (TLSARecord(3, 1, 1, b"\x22" * 32),)


# End to end against a real validating resolver.


@pytest.fixture(scope="module")
def leaf_pem(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Path:
    path = tmp_path_factory.mktemp("dane-cert") / "leaf.pem"
    ca.issue_cert("mx.example.test").cert_chain_pems[0].write_to_path(str(path))
    return path


def ldns_dane_tlsa(leaf: Path, host: str) -> str:
    """The TLSA record for a certificate as ldns-dane (a peer implementation) computes it."""
    done = subprocess.run(
        ["ldns-dane", "-c", str(leaf), "create", host, "25", "3", "1", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.split("TLSA", 1)[1].strip()


def break_tlsa_signature(signed: str) -> str:
    """Change the TLSA data of the signed zone without re-signing it."""
    lines = signed.splitlines()
    for i, line in enumerate(lines):
        if "\tTLSA\t" in line:
            lines[i] = line[:-4] + ("0000" if not line.endswith("0000") else "1111")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory, leaf_pem: Path) -> Iterator[DNSSECTestbed]:
    if missing_tools():
        pytest.skip(f"DNSSEC test bed needs {', '.join(missing_tools())} (Debian: unbound nsd ldnsutils)")
    bed = DNSSECTestbed(tmp_path_factory.mktemp("dnssec"))
    tlsa = ldns_dane_tlsa(leaf_pem, "mx.example.test")
    host = ["@ IN MX 10 mx", "mx IN A 127.0.0.1", f"_25._tcp.mx IN TLSA {tlsa}"]
    bed.add_zone(Zone("example.test", host))
    bed.add_zone(Zone("bogus.test", host, tamper=break_tlsa_signature))
    bed.add_zone(Zone("unsigned.test", host, signed=False))
    bed.start()
    yield bed
    bed.stop()


@pytest.mark.peer
async def test_real_resolver_authenticates_tlsa_and_the_leaf_verifies(
    testbed: DNSSECTestbed, leaf_pem: Path
) -> None:
    raw = await stub_resolver(testbed.port).resolve("_25._tcp.mx.example.test", "TLSA")
    assert raw.response.flags & dns.flags.AD

    resolver = Resolver(
        nameservers=["127.0.0.1"], port=testbed.port, timeout=3, trust_dnssec=True, cache=False
    )
    mx = await resolver.mx("example.test")
    assert mx.authentic and [m.host for m in mx.records] == ["mx.example.test"]
    lookup = await lookup_tlsa(resolver, "mx.example.test")
    assert lookup.status == DANEStatus.DANE
    chain = [x509.load_pem_x509_certificate(leaf_pem.read_bytes()).public_bytes(Encoding.DER)]
    assert verify_chain(chain, lookup.usable_records, lookup.hostnames) == (True, "")


@pytest.mark.peer
async def test_real_resolver_without_trust_in_dnssec_gives_no_dane(testbed: DNSSECTestbed) -> None:
    untrusting = Resolver(
        nameservers=["127.0.0.1"], port=testbed.port, timeout=3, trust_dnssec=False, cache=False
    )
    assert (await lookup_tlsa(untrusting, "mx.example.test")).status == DANEStatus.NONE


@pytest.mark.peer
async def test_real_resolver_refuses_tampered_tlsa(testbed: DNSSECTestbed) -> None:
    resolver = Resolver(
        nameservers=["127.0.0.1"], port=testbed.port, timeout=3, trust_dnssec=True, cache=False
    )
    assert (await resolver.a("mx.bogus.test")).authentic  # the rest of the zone still validates
    lookup = await lookup_tlsa(resolver, "mx.bogus.test")
    assert lookup.status == DANEStatus.DNSSEC_INVALID
    assert "_25._tcp.mx.bogus.test" in lookup.detail


@pytest.mark.peer
async def test_real_resolver_unsigned_zone_gives_no_dane(testbed: DNSSECTestbed) -> None:
    resolver = Resolver(
        nameservers=["127.0.0.1"], port=testbed.port, timeout=3, trust_dnssec=True, cache=False
    )
    address = await resolver.a("mx.unsigned.test")
    assert address.records == ["127.0.0.1"] and not address.authentic
    assert (await lookup_tlsa(resolver, "mx.unsigned.test")).status == DANEStatus.NONE
