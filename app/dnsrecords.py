"""The DNS records a domain should publish for Postwarden (SPEC R7.1), and checks of what is published (R7.2).

The records are data (`DNSRecord`), so the CLI, the web DNS page and the check share one list.
Each check looks the record up through `app.dns.Resolver` and says ok, missing or wrong, with the fix.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from app.address import address_key
from app.auth.dkimkeys import DKIMKeyError, dns_txt_value
from app.config import Config, Listener
from app.dns import DNSError, Resolver

RecordKind = Literal[
    "mx", "spf", "host-spf", "dkim", "dmarc", "mta-sts", "tlsrpt", "host-tlsrpt", "tlsa", "srv"
]
CheckStatus = Literal["ok", "missing", "wrong", "error"]

# Senders cache an MTA-STS policy this long (RFC 8461 3.2 suggests weeks; one week here).
MTA_STS_MAX_AGE = 604800
# Remote MTAs connect to port 25 whatever port our listener binds (it may sit behind a forward).
SMTP_PORT = 25
# RFC 6186 / RFC 8314 services: (SRV service label, listener kind, well-known port, priority). Implicit
# TLS comes first (RFC 8314 3.3: clients should prefer it). No listener kind is submission over
# implicit TLS (465) yet, so _submissions is always published as not offered.
MAIL_CLIENT_SERVICES = (
    ("imaps", "imaps", 993, 0, "IMAP, TLS at once"),
    ("imap", "imap", 143, 10, "IMAP with STARTTLS"),
    ("submissions", "", 465, 0, "submission, TLS at once"),
    ("submission", "submission", 587, 10, "submission with STARTTLS"),
)


class DNSRecordsError(ValueError):
    """The records cannot be built: unknown domain, unreadable key or certificate."""


@dataclass(frozen=True)
class DNSRecord:
    kind: RecordKind
    name: str  # owner name, without the final dot
    rtype: str
    value: str  # presentation form; TXT values unquoted
    note: str = ""

    def zone_line(self, ttl: int = 3600) -> str:
        """The record as a zone-file line (TXT split into 255-octet character-strings)."""
        value = _quoted_txt(self.value) if self.rtype == "TXT" else self.value
        return f"{self.name}. {ttl} IN {self.rtype} {value}"


@dataclass(frozen=True)
class MTASTSPolicy:
    url: str
    text: str
    id: str


@dataclass(frozen=True)
class CheckResult:
    record: DNSRecord
    status: CheckStatus
    found: tuple[str, ...] = ()
    problem: str = ""
    fix: str = ""


def _quoted_txt(value: str) -> str:
    raw = value.encode()
    chunks = [raw[i : i + 255].decode() for i in range(0, len(raw), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


# Building the records.


def configured_domain(config: Config, domain: str) -> str:
    name = domain.lower().rstrip(".")
    if name not in config.domains:
        known = ", ".join(sorted(config.domains)) or "none"
        raise DNSRecordsError(f"domain {name!r} is not in [domains] of the config (configured: {known})")
    return name


def inbound_certificate(config: Config) -> Path | None:
    """The certificate of the first inbound listener that has one (the MX host's certificate)."""
    for listener in config.listeners:
        if listener.kind == "inbound" and listener.tls_cert is not None:
            return listener.tls_cert
    return None


def spki_sha256(cert_file: Path) -> str:
    """Hex SHA-256 of the certificate's SubjectPublicKeyInfo (TLSA selector 1, matching type 1)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as e:
        raise DNSRecordsError(f"cannot read certificate {str(cert_file)!r}: {e}") from None
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def mta_sts_policy(config: Config, domain: str) -> MTASTSPolicy:
    """The policy file to serve at https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 3.2)."""
    # Without a certificate senders could not deliver under `enforce`; `testing` only reports.
    mode = "enforce" if inbound_certificate(config) is not None else "testing"
    text = f"version: STSv1\r\nmode: {mode}\r\nmx: {config.hostname}\r\nmax_age: {MTA_STS_MAX_AGE}\r\n"
    # The id changes exactly when the policy text does, which is when senders must refetch it.
    policy_id = hashlib.sha256(text.encode()).hexdigest()[:20]
    url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    return MTASTSPolicy(url=url, text=text, id=policy_id)


def _dkim_records(config: Config, domain: str) -> list[DNSRecord]:
    records = []
    for selector in config.domains[domain].dkim:
        try:
            value = dns_txt_value(selector.private_key_file.read_bytes(), selector.algorithm)
        except (OSError, DKIMKeyError) as e:
            raise DNSRecordsError(
                f"domains.{domain}.dkim selector {selector.selector!r}: "
                f"cannot use key file {str(selector.private_key_file)!r}: {e}"
            ) from None
        note = f"DKIM public key for selector {selector.selector} ({selector.algorithm})"
        records.append(DNSRecord("dkim", f"{selector.selector}._domainkey.{domain}", "TXT", value, note))
    return records


def records_for_domain(config: Config, domain: str) -> list[DNSRecord]:
    """Every record to publish for `domain` and for the mail host serving it."""
    domain = configured_domain(config, domain)
    host = config.hostname
    settings = config.domains[domain]
    records = [
        DNSRecord("mx", domain, "MX", f"10 {host}.", f"mail for {domain} goes to {host}"),
        DNSRecord("spf", domain, "TXT", "v=spf1 mx ~all", f"{host}, as the MX, may send for {domain}"),
    ]
    if host != domain:
        records.append(DNSRecord("host-spf", host, "TXT", "v=spf1 a ~all", "SPF for the host's HELO name"))
    records += _dkim_records(config, domain)
    dmarc = "v=DMARC1; p=reject"
    if settings.dmarc_reports is not None:
        dmarc += f"; rua=mailto:{settings.dmarc_reports.localpart}@{domain}"
    records.append(DNSRecord("dmarc", f"_dmarc.{domain}", "TXT", dmarc, "DMARC policy and where reports go"))
    policy = mta_sts_policy(config, domain)
    records.append(
        DNSRecord(
            "mta-sts",
            f"_mta-sts.{domain}",
            "TXT",
            f"v=STSv1; id={policy.id}",
            f"MTA-STS: also serve the policy file at {policy.url}",
        )
    )
    if settings.tls_reports is not None:
        rua = f"mailto:{settings.tls_reports.localpart}@{domain}"
        records.append(
            DNSRecord("tlsrpt", f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua={rua}", "TLS reports")
        )
    if config.host_tlsrpt is not None:
        rua = f"mailto:{config.host_tlsrpt.localpart}@{host}"
        note = "TLS reports about the mail host (DANE)"
        records.append(DNSRecord("host-tlsrpt", f"_smtp._tls.{host}", "TXT", f"v=TLSRPTv1; rua={rua}", note))
    cert = inbound_certificate(config)
    if cert is not None:
        note = "DANE: publish only in a DNSSEC-signed zone; add the next key's record before renewing"
        records.append(
            DNSRecord("tlsa", f"_{SMTP_PORT}._tcp.{host}", "TLSA", f"3 1 1 {spki_sha256(cert)}", note)
        )
    return records + srv_records(config, domain)


def _client_listener(config: Config, kind: str) -> Listener | None:
    """The first listener of `kind` a mail client can use: IMAP always has TLS; submission only
    offers AUTH with a certificate."""
    return next((x for x in config.listeners if x.kind == kind and x.tls_cert is not None), None)


def srv_records(config: Config, domain: str) -> list[DNSRecord]:
    """RFC 6186 SRV records, so a mail client finds IMAP and submission from the address alone: the
    services we offer at the mail host and port, the others with target "." (not offered, RFC 6186
    3.4). None when no listener serves mail clients (an inbound-only host)."""
    if not any(_client_listener(config, service[1]) for service in MAIL_CLIENT_SERVICES):
        return []
    records = []
    for service, kind, port, priority, what in MAIL_CLIENT_SERVICES:
        name = f"_{service}._tcp.{domain}"
        listener = _client_listener(config, kind)
        if listener is None:
            records.append(DNSRecord("srv", name, "SRV", "0 0 0 .", f"{what}: not offered"))
            continue
        # The listener's port, unless the kernel picks it (port 0): then the service's own.
        value = f"{priority} 1 {listener.port or port} {config.hostname}."
        records.append(DNSRecord("srv", name, "SRV", value, f"mail clients find {what} here (RFC 6186)"))
    return records


# Checking what is published.


def tag_list(value: str) -> dict[str, str]:
    """`k=v; k=v` tags (DKIM, DMARC, MTA-STS, TLSRPT records); names lowercased, values stripped."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, eq, tag_value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), tag_value.strip())
    return tags


def _starting_with(values: list[str], prefix: str) -> list[str]:
    return [v for v in values if v.strip().lower().startswith(prefix.lower())]


def _result(record: DNSRecord, found: list[str], problem: str = "", fix: str = "") -> CheckResult:
    if not problem:
        return CheckResult(record, "ok", tuple(found))
    status: CheckStatus = "wrong" if found else "missing"
    return CheckResult(record, status, tuple(found), problem, fix or _publish(record))


def _publish(record: DNSRecord) -> str:
    return f"publish: {record.zone_line()}"


async def _check_mx(record: DNSRecord, resolver: Resolver) -> CheckResult:
    answer = await resolver.mx(record.name)
    host = record.value.split()[1].rstrip(".")
    found = [f"{mx.preference} {mx.host}." for mx in answer.records]
    if not found:
        return _result(record, found, f"{record.name} has no MX record")
    if host not in [mx.host for mx in answer.records]:
        return _result(record, found, f"no MX of {record.name} points to {host}")
    if not await resolver.ips(host):
        return _result(record, found, f"{host} has no A or AAAA record", f"publish the address(es) of {host}")
    return _result(record, found)


async def _spf_covers_host(terms: list[str], host: str, domain: str, resolver: Resolver) -> bool:
    """Whether a mechanism of the record names our host directly: mx, a:<host>, or ip4/ip6 of it."""
    names = {t.lstrip("+").lower() for t in terms}
    if "mx" in names or f"mx:{domain}" in names or f"a:{host}" in names or (domain == host and "a" in names):
        return True
    networks = []
    for term in names:
        kind, _, spec = term.partition(":")
        if kind in ("ip4", "ip6"):
            try:
                networks.append(ipaddress.ip_network(spec, strict=False))
            except ValueError:
                continue
    addresses = [ipaddress.ip_address(ip) for ip in await resolver.ips(host)]
    return bool(addresses) and all(any(a in n for n in networks) for a in addresses)


# The version tag of each kind of versioned TXT record. With two records of a kind, receivers use
# neither (SPF: RFC 7208 4.5, MTA-STS: RFC 8461 3.1, TLSRPT: RFC 8460 3, and DMARC policy discovery).
TXT_VERSIONS = {"SPF": "v=spf1", "DMARC": "v=DMARC1", "MTA-STS": "v=STSv1", "TLSRPT": "v=TLSRPTv1"}


async def _single_txt(
    record: DNSRecord, resolver: Resolver, label: str
) -> tuple[list[str], CheckResult | None]:
    """The published values of the record's version; a failed result unless there is exactly one."""
    found = _starting_with((await resolver.txt(record.name)).records, TXT_VERSIONS[label])
    if not found:
        return found, _result(record, found, f"{record.name} has no {label} record")
    if len(found) > 1:
        problem = f"more than one {label} record (receivers then ignore them all)"
        return found, _result(record, found, problem, "keep one: " + record.value)
    return found, None


async def _check_spf(record: DNSRecord, resolver: Resolver, host: str) -> CheckResult:
    found, failed = await _single_txt(record, resolver, "SPF")
    if failed:
        return failed
    terms = found[0].split()[1:]
    if not await _spf_covers_host(terms, host, record.name, resolver):
        return _result(
            record,
            found,
            f"the SPF record does not name {host} directly (mx, a:{host}, or its ip4/ip6 addresses; "
            "include: and redirect= are not followed by this check)",
            f"add `{'a' if record.kind == 'host-spf' else 'mx'}` before the all term, e.g. {record.value}",
        )
    return _result(record, found)


async def _check_dkim(record: DNSRecord, resolver: Resolver) -> CheckResult:
    found = (await resolver.txt(record.name)).records
    if not found:
        return _result(record, found, f"{record.name} has no DKIM key record")
    expected = tag_list(record.value)
    published = tag_list(found[0])
    if "".join(published.get("p", "").split()) != expected["p"]:
        return _result(record, found, "the published public key (p=) is not the key of this selector")
    if published.get("k", "rsa").lower() != expected["k"]:
        return _result(record, found, f"the key type (k=) is not {expected['k']}")
    return _result(record, found)


def _mailto_addresses(rua: str) -> set[str]:
    """The mailto: addresses of a DMARC/TLSRPT rua tag (size suffixes like `!10m` dropped)."""
    uris = [u.strip() for u in rua.split(",")]
    return {address_key(u[len("mailto:") :].split("!")[0]) for u in uris if u.lower().startswith("mailto:")}


async def _check_reporting(record: DNSRecord, resolver: Resolver, label: str) -> CheckResult:
    """DMARC and TLSRPT records: exactly one, whose rua has our address."""
    found, failed = await _single_txt(record, resolver, label)
    if failed:
        return failed
    ours = _mailto_addresses(tag_list(record.value).get("rua", ""))
    missing = ours - _mailto_addresses(tag_list(found[0]).get("rua", ""))
    if missing:
        return _result(
            record,
            found,
            f"rua does not include mailto:{', mailto:'.join(sorted(missing))}",
            f"add it to rua, e.g. {record.value}",
        )
    return _result(record, found)


async def _check_mta_sts(record: DNSRecord, resolver: Resolver) -> CheckResult:
    found, failed = await _single_txt(record, resolver, "MTA-STS")
    if failed:
        return failed
    expected = tag_list(record.value)["id"]
    published = tag_list(found[0]).get("id", "")
    if published != expected:
        return _result(
            record,
            found,
            f"id is {published!r}, the suggested policy's id is {expected!r}",
            f"serve the suggested policy file and {_publish(record)}",
        )
    return _result(record, found)


async def _check_tlsa(record: DNSRecord, resolver: Resolver) -> CheckResult:
    answer = await resolver.tlsa(record.name)
    found = [r.to_text() for r in answer.records]
    if not found:
        return _result(record, found, f"{record.name} has no TLSA record")
    ours = record.value.lower()
    if ours not in (f"{r.usage} {r.selector} {r.mtype} {r.cert.hex()}" for r in answer.records):
        return _result(record, found, "no TLSA record matches the inbound listener's certificate")
    if resolver.trust_dnssec and not answer.authentic:
        return _result(
            record, found, "the TLSA record is not DNSSEC-authenticated", "sign the zone with DNSSEC"
        )
    return _result(record, found)


async def _check_srv(record: DNSRecord, resolver: Resolver) -> CheckResult:
    """Ours is published when one record has our port and target (priority and weight are the
    operator's to choose); a service not offered needs the "." record and no other."""
    answer = await resolver.srv(record.name)
    found = [r.to_text() for r in answer.records]
    if not found:
        return _result(record, found, f"{record.name} has no SRV record")
    port, target = record.value.split()[2:]
    published = {(r.port, r.target.to_text().lower()) for r in answer.records}
    if target == ".":
        if published != {(0, ".")}:
            problem = "the service is not offered here, but the record points mail clients to a host"
            return _result(record, found, problem, f"replace it with: {record.zone_line()}")
        return _result(record, found)
    if (int(port), target) not in published:
        return _result(record, found, f"no SRV record of {record.name} points to {target}:{port}")
    return _result(record, found)


Check = Callable[[DNSRecord, Resolver, Config], Awaitable[CheckResult]]

CHECKS: dict[RecordKind, Check] = {
    "mx": lambda record, resolver, _: _check_mx(record, resolver),
    "spf": lambda record, resolver, config: _check_spf(record, resolver, config.hostname),
    "host-spf": lambda record, resolver, config: _check_spf(record, resolver, config.hostname),
    "dkim": lambda record, resolver, _: _check_dkim(record, resolver),
    "dmarc": lambda record, resolver, _: _check_reporting(record, resolver, "DMARC"),
    "mta-sts": lambda record, resolver, _: _check_mta_sts(record, resolver),
    "tlsrpt": lambda record, resolver, _: _check_reporting(record, resolver, "TLSRPT"),
    "host-tlsrpt": lambda record, resolver, _: _check_reporting(record, resolver, "TLSRPT"),
    "tlsa": lambda record, resolver, _: _check_tlsa(record, resolver),
    "srv": lambda record, resolver, _: _check_srv(record, resolver),
}


async def check_record(record: DNSRecord, config: Config, resolver: Resolver) -> CheckResult:
    try:
        return await CHECKS[record.kind](record, resolver, config)
    except DNSError as e:
        return CheckResult(record, "error", (), f"lookup failed: {e}", "check again later")


async def check_domain(config: Config, domain: str, resolver: Resolver) -> list[CheckResult]:
    """Look up every record `records_for_domain` suggests, in the same order."""
    records = records_for_domain(config, domain)
    return list(await asyncio.gather(*(check_record(r, config, resolver) for r in records)))
