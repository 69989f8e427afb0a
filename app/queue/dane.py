"""DANE for SMTP (RFC 7672) with TLSA records (RFC 6698, RFC 7671).

`lookup_tlsa` finds the TLSA records of an MX host, trusting only DNSSEC-authenticated answers
(`Answer.authentic`: the AD bit from a resolver we are configured to trust). `verify_chain` checks a
certificate chain presented in the TLS handshake against those records. Whether DANE applies at all
also depends on the MX lookup being authenticated; app/queue/tlspolicy.py combines both.

Only DANE-TA(2) and DANE-EE(3) are used for SMTP (RFC 7672 §3.1.3); PKIX-TA(0)/PKIX-EE(1) records,
unknown selectors or matching types and digests of the wrong length are "unusable".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.dns import DNSTemporaryError, Resolver
from app.queue.mtasts import host_matches_pattern

# RFC 8460 §4.3 result types that DANE produces.
TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"
DANE_REQUIRED = "dane-required"
VALIDATION_FAILURE = "validation-failure"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"

USAGE_DANE_TA = 2
USAGE_DANE_EE = 3
SELECTOR_FULL_CERTIFICATE = 0
SELECTOR_SPKI = 1
MATCHING_FULL = 0
MATCHING_SHA256 = 1
MATCHING_SHA512 = 2
_DIGEST_SIZES = {MATCHING_SHA256: 32, MATCHING_SHA512: 64}
MAX_CNAME_CHAIN = 8


@dataclass(frozen=True)
class TLSARecord:
    usage: int
    selector: int
    matching_type: int
    data: bytes

    @classmethod
    def from_rdata(cls, rdata: Any) -> TLSARecord:
        """From a dnspython TLSA rdata."""
        return cls(rdata.usage, rdata.selector, rdata.mtype, bytes(rdata.cert))

    @property
    def usable(self) -> bool:
        """Usable for SMTP (RFC 7672 §3.1): DANE-TA/DANE-EE, known selector and matching type, and a
        digest of the right size (a malformed digest can never match)."""
        return (
            self.usage in (USAGE_DANE_TA, USAGE_DANE_EE)
            and self.selector in (SELECTOR_FULL_CERTIFICATE, SELECTOR_SPKI)
            and self.matching_type in (MATCHING_FULL, *_DIGEST_SIZES)
            and len(self.data) == _DIGEST_SIZES.get(self.matching_type, len(self.data))
            and bool(self.data)
        )

    def text(self) -> str:
        """Presentation form, as in RFC 8460 `policy-string` for tlsa policies."""
        return f"{self.usage} {self.selector} {self.matching_type} {self.data.hex().upper()}"

    def matches(self, certificate: x509.Certificate) -> bool:
        selected = _selected_data(certificate, self.selector)
        if selected is None:
            return False
        if self.matching_type == MATCHING_SHA256:
            selected = hashlib.sha256(selected).digest()
        elif self.matching_type == MATCHING_SHA512:
            selected = hashlib.sha512(selected).digest()
        return selected == self.data


def _selected_data(certificate: x509.Certificate, selector: int) -> bytes | None:
    if selector == SELECTOR_FULL_CERTIFICATE:
        return certificate.public_bytes(Encoding.DER)
    try:
        return certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (UnsupportedAlgorithm, ValueError):  # a key type we cannot load matches no SPKI record
        return None


class DANEStatus(StrEnum):
    # No DANE: the host's addresses or its TLSA answer are not DNSSEC-authenticated, or there are
    # securely no TLSA records. Opportunistic TLS (unless another policy says otherwise).
    NONE = "none"
    # Usable TLSA records: TLS is mandatory and the server is authenticated by them, not PKIX.
    DANE = "dane"
    # Authenticated TLSA records, none usable: TLS is still mandatory, without authentication
    # (RFC 7672 §2.2).
    UNUSABLE = "unusable"
    # The host is in a signed zone but its TLSA lookup failed (bogus answer, SERVFAIL, timeout):
    # do not deliver to this host now (RFC 7672 §2.2); record `dnssec-invalid`.
    DNSSEC_INVALID = "dnssec-invalid"


@dataclass(frozen=True)
class DANELookup:
    """The DANE state of one MX host.

    `base_domain` is the TLSA base domain: the MX host name, or its CNAME expansion when that is
    secure and has TLSA records; it is the SNI name to send. `records` is the whole authenticated
    RRset (for reporting), `hostnames` the names a DANE-TA certificate may carry (RFC 7672 §3.2.2).
    """

    status: DANEStatus
    mx_host: str
    base_domain: str
    records: tuple[TLSARecord, ...] = ()
    hostnames: tuple[str, ...] = ()
    detail: str = ""

    @property
    def usable_records(self) -> tuple[TLSARecord, ...]:
        return tuple(r for r in self.records if r.usable)

    @property
    def policy_strings(self) -> tuple[str, ...]:
        """RFC 8460 `policy-string` of the host's tlsa policy."""
        return tuple(r.text() for r in self.records)


async def lookup_tlsa(resolver: Resolver, mx_host: str, port: int = 25) -> DANELookup:
    """Look up `_<port>._tcp.<mx_host>` TLSA (RFC 7672 §2.2), following a secure CNAME chain.

    Raises DNSTemporaryError when the host's own addresses cannot be looked up (the caller cannot
    connect to it either). The caller decides separately whether the MX lookup was authenticated.
    """
    mx_host = mx_host.lower().rstrip(".")
    if not await _addresses_authentic(resolver, mx_host):
        return DANELookup(
            DANEStatus.NONE, mx_host, mx_host, detail=f"addresses of {mx_host} are not DNSSEC-signed"
        )
    expanded = await _secure_cname_target(resolver, mx_host)
    candidates = [expanded, mx_host] if expanded != mx_host else [mx_host]
    hostnames = tuple(candidates)
    for base in candidates:
        qname = f"_{port}._tcp.{base}"
        try:
            answer = await resolver.tlsa(qname)
        except DNSTemporaryError as e:
            return DANELookup(DANEStatus.DNSSEC_INVALID, mx_host, base, hostnames=hostnames, detail=str(e))
        if not answer.authentic or not answer.records:
            continue
        records = tuple(TLSARecord.from_rdata(r) for r in answer.records)
        status = DANEStatus.DANE if any(r.usable for r in records) else DANEStatus.UNUSABLE
        return DANELookup(status, mx_host, base, records, hostnames, detail=f"TLSA at {qname}")
    return DANELookup(
        DANEStatus.NONE, mx_host, mx_host, hostnames=hostnames, detail=f"no authenticated TLSA for {mx_host}"
    )


async def dane_for_mx(
    resolver: Resolver, mx_host: str, mx_authentic: bool, port: int = 25
) -> DANELookup | None:
    """`lookup_tlsa` when DANE can apply at all: the MX lookup was DNSSEC-authenticated and the
    resolver is trusted for DNSSEC (config dns.trust_dnssec); None otherwise (no DANE, no queries)."""
    if not (mx_authentic and resolver.trust_dnssec):
        return None
    return await lookup_tlsa(resolver, mx_host, port)


async def _addresses_authentic(resolver: Resolver, host: str) -> bool:
    """DANE applies only to a host whose address records are DNSSEC-authenticated (RFC 7672 §2.2.2)."""
    answers = [await resolver.a(host), await resolver.aaaa(host)]
    with_records = [a for a in answers if a.records]
    return bool(with_records) and all(a.authentic for a in with_records)


async def _secure_cname_target(resolver: Resolver, host: str) -> str:
    """The end of `host`'s CNAME chain if every link is authenticated, else `host` itself."""
    name = host
    for _ in range(MAX_CNAME_CHAIN):
        answer = await resolver.query(name, "CNAME")
        if not answer.records:
            return name
        if not answer.authentic:
            return host
        name = answer.records[0].target.to_text(omit_final_dot=True).lower()
    return host


# Verifying the presented chain (RFC 7672 §3.1, RFC 7671 §5).


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    # RFC 8460 result type when not ok, else "".
    result_type: str
    detail: str


def verify_chain(
    chain_der: list[bytes], tlsa_records: Iterable[TLSARecord], hostnames: Iterable[str]
) -> tuple[bool, str]:
    """Whether the chain (leaf first, DER) is valid under the TLSA records: (True, "") or
    (False, RFC 8460 result type). `check_chain` gives the reason too."""
    check = check_chain(chain_der, tlsa_records, hostnames)
    return check.ok, check.result_type


def check_chain(
    chain_der: list[bytes],
    tlsa_records: Iterable[TLSARecord],
    hostnames: Iterable[str],
    now: datetime | None = None,
) -> ChainCheck:
    """DANE-EE(3): the leaf matches, names and dates are ignored. DANE-TA(2): a certificate of the
    chain matches, the leaf chains up to it by signatures, certificates below it are within their
    validity, and the leaf carries one of `hostnames` (wildcards for one whole left label)."""
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as e:
        return ChainCheck(False, VALIDATION_FAILURE, f"unparsable certificate: {e}")
    if not chain:
        return ChainCheck(False, VALIDATION_FAILURE, "no certificate presented")
    usable = [r for r in tlsa_records if r.usable]
    if any(r.usage == USAGE_DANE_EE and r.matches(chain[0]) for r in usable):
        return ChainCheck(True, "", "DANE-EE record matches the server certificate")
    anchors = [r for r in usable if r.usage == USAGE_DANE_TA]
    if not any(r.matches(c) for r in anchors for c in chain):
        return ChainCheck(False, TLSA_INVALID, "no TLSA record matches the presented certificates")
    path = _path_to_anchor(chain, anchors)
    if path is None:
        return ChainCheck(
            False, VALIDATION_FAILURE, "the certificate chain does not lead to the DANE-TA anchor"
        )
    return _check_anchored_path(path, list(hostnames), now or datetime.now(UTC))


def _path_to_anchor(
    chain: list[x509.Certificate], anchors: list[TLSARecord]
) -> list[x509.Certificate] | None:
    """Leaf, then each issuer (found among the presented certificates by name and signature) up to
    the first certificate that matches a DANE-TA record; None if there is no such path."""
    path = [chain[0]]
    pool = chain[1:]
    while True:
        current = path[-1]
        if any(r.matches(current) for r in anchors):
            return path
        issuer = next((c for c in pool if _issued(current, c)), None)
        if issuer is None:
            return None
        pool.remove(issuer)
        path.append(issuer)


def _issued(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` is a CA certificate whose key signed `certificate`."""
    try:
        if not issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
        certificate.verify_directly_issued_by(issuer)
    except (x509.ExtensionNotFound, InvalidSignature, ValueError, TypeError):
        return False
    return True


def _check_anchored_path(path: list[x509.Certificate], hostnames: list[str], now: datetime) -> ChainCheck:
    # The anchor's own dates are not checked: it is trusted as published in DNS (as a PKIX trust
    # anchor is), but everything it vouches for must be current.
    for certificate in path[:-1] or path:
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            return ChainCheck(
                False, CERTIFICATE_EXPIRED, f"{certificate.subject.rfc4514_string()} is not valid now"
            )
    names = certificate_names(path[0])
    if not any(host_matches_pattern(host, name) for host in hostnames for name in names):
        return ChainCheck(
            False, CERTIFICATE_HOST_MISMATCH, f"certificate names {sorted(names)} match none of {hostnames}"
        )
    return ChainCheck(True, "", "chain leads to a DANE-TA anchor and names the host")


def certificate_names(certificate: x509.Certificate) -> set[str]:
    """DNS names of a certificate: its subjectAltName DNS names, or without any, its common name."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        names = set()
    if names:
        return names
    return {
        str(a.value).lower() for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    }
