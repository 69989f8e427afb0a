"""The live TLS probe against real servers: loopback DNS, the HTTPS MTA-STS server, SMTP peers."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import trustme

from app.config import Config, load_config
from app.dns import Resolver
from app.migrate import upgrade_database
from app.queue import mtastscache
from app.queue import probe as probe_module
from app.queue.probe import MAX_HOSTS, ProbeResult, probe
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import LOOPBACK_NETWORKS, HTTPSTestServer
from tests.support.smtppeers import PeerHandler, smtp_peer, spki_sha256

DOMAIN = "example.net"
MX = "mx.example.net"
BACKUP = "backup.elsewhere.org"


def probe_config(
    tmp: Path, dns: DNSTestServer, https: HTTPSTestServer, ca_file: Path, smtp_port: int
) -> Path:
    """A config whose delivery reaches loopback peers and the HTTPS server, trusting the test CA;
    its database migrated (the probe reads the MTA-STS cache)."""
    toml = f"""
[delivery]
smtp_port = {smtp_port}
mtasts_https_port = {https.port}
https_allowed_networks = {json.dumps(LOOPBACK_NETWORKS)}
ca_bundle = "{ca_file}"
connect_timeout = 5
command_timeout = 5
"""
    path = write_config(tmp / "config", toml, dns_port=dns.port)
    upgrade_database(load_config(path).resolved_database_url)
    return path


def publish(dns: DNSTestServer, https: HTTPSTestServer, mode: str | None, *hosts: str) -> None:
    """MX records for DOMAIN (hosts on 127.0.0.1) and, with `mode`, an MTA-STS policy listing MX only."""
    for preference, host in enumerate(hosts, start=1):
        dns.add(DOMAIN, "MX", f"{preference * 10} {host}.")
        dns.add(host, "A", "127.0.0.1")
    if mode is not None:
        dns.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=20261202")
        dns.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.1")
        https.serve(f"mta-sts.{DOMAIN}", f"version: STSv1\nmode: {mode}\nmx: {MX}\nmax_age: 86400\n")


def config(tmp: Path, dns: DNSTestServer, https: HTTPSTestServer, ca_file: Path, port: int = 25) -> Config:
    return load_config(probe_config(tmp, dns, https, ca_file, port))


def strings(value: object) -> list[str]:
    """Every string in a result (dataclasses as dicts), to check none carries a control character."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings(v)]
    return []


def has_control(result: ProbeResult) -> bool:
    return any(ord(c) < 0x20 or c == "\x7f" for s in strings(asdict(result)) for c in s)


async def test_enforce_policy_decides_per_host(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, resolver: Resolver
) -> None:
    publish(dns, https_server, "enforce", MX, BACKUP)
    result = await probe(config(tmp_path, dns, https_server, https_ca_file), resolver, DOMAIN, connect=False)
    assert result.error is None and not result.implicit_mx and not result.mx_authentic
    assert result.mtasts is not None
    assert (result.mtasts.record_id, result.mtasts.mode, result.mtasts.mx) == ("20261202", "enforce", (MX,))
    used, backup = result.hosts
    assert (used.host, used.use_host, used.addresses) == (MX, True, ("127.0.0.1",))
    assert used.tls_mode == f"TLS required, certificate checked by PKIX for {MX}"
    assert used.basis == "MTA-STS enforce" and used.failures == ()
    assert "insecure" in used.dane and used.connection is None
    assert (backup.host, backup.use_host, backup.tls_mode) == (BACKUP, False, "not used")
    assert backup.failures[0].startswith(f"validation-failure: MX host {BACKUP} does not match")
    # Fetched fresh every time: the HTTPS server saw the request.
    await probe(config(tmp_path, dns, https_server, https_ca_file), resolver, DOMAIN, connect=False)
    assert len([r for r in https_server.requests if r[0] == f"mta-sts.{DOMAIN}"]) == 2


async def test_cached_policy_is_shown_beside_the_fresh_one(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, resolver: Resolver
) -> None:
    publish(dns, https_server, "enforce", MX)
    settings = config(tmp_path, dns, https_server, https_ca_file)
    result = await probe(settings, resolver, DOMAIN, connect=False)
    assert result.mtasts is not None and result.mtasts.cached is None
    assert mtastscache.cached_policy(settings.resolved_database_url, DOMAIN) is None, (
        "the probe writes no cache"
    )
    # Same id, older policy: a delivery would apply the cached `testing` one; the probe shows both.
    mtastscache.save_policy(settings.resolved_database_url, DOMAIN, "20261202", "testing", 86400, (MX,))
    result = await probe(settings, resolver, DOMAIN, connect=False)
    assert result.mtasts is not None and result.mtasts.mode == "enforce"
    assert result.mtasts.cached is not None
    assert result.mtasts.cached.startswith(f"id 20261202, mode testing, mx {MX}, expires ")


async def test_implicit_mx_and_no_policy(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, resolver: Resolver
) -> None:
    dns.add(DOMAIN, "A", "127.0.0.1")
    result = await probe(config(tmp_path, dns, https_server, https_ca_file), resolver, DOMAIN, connect=False)
    assert result.error is None and result.implicit_mx
    assert result.mtasts is not None and result.mtasts.mode is None and result.mtasts.error is None
    (host,) = result.hosts
    assert (host.host, host.use_host, host.basis) == (DOMAIN, True, "no MTA-STS policy")
    assert host.tls_mode == "TLS if offered, certificate not checked"


async def test_dns_failure_is_the_error(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, resolver: Resolver
) -> None:
    dns.servfail(DOMAIN)
    result = await probe(config(tmp_path, dns, https_server, https_ca_file), resolver, DOMAIN, connect=True)
    assert result.error is not None and result.error.startswith(f"MX lookup for {DOMAIN}:")
    assert result.hosts == ()


async def test_null_mx_is_the_error(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, resolver: Resolver
) -> None:
    dns.add(DOMAIN, "MX", "0 .")
    result = await probe(config(tmp_path, dns, https_server, https_ca_file), resolver, DOMAIN, connect=False)
    assert result.error == f"{DOMAIN} accepts no mail (null MX, RFC 7505)"


async def test_hostile_dns_text_stays_data(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, resolver: Resolver
) -> None:
    # An ESC and a bell in the MX name, an ESC sequence as the MTA-STS record id (decimal escapes).
    dns.add(DOMAIN, "MX", "10 mx\\027[31m\\007." + "x" * 60 + ".example.net.")
    dns.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=\\027[2J\\013"')
    result = await probe(config(tmp_path, dns, https_server, https_ca_file), resolver, DOMAIN, connect=True)
    assert not has_control(result)
    assert result.hosts[0].host.startswith("mx\\027[31m\\007.")
    assert result.mtasts is not None and result.mtasts.error is not None
    assert "invalid id" in result.mtasts.error and "\\x1b[2J" in result.mtasts.error
    assert all(len(h.host) <= 255 for h in result.hosts)


async def test_connect_shows_starttls_certificate_and_pkix(
    tmp_path: Path,
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    https_ca: trustme.CA,
    https_ca_file: Path,
    resolver: Resolver,
) -> None:
    publish(dns, https_server, "enforce", MX)
    with smtp_peer(https_ca.issue_cert(MX)) as peer:
        settings = config(tmp_path, dns, https_server, https_ca_file, peer.port)
        result = await probe(settings, resolver, DOMAIN, connect=True)
    connection = result.hosts[0].connection
    assert connection is not None and connection.opened and connection.error is None
    assert (connection.address, connection.port) == ("127.0.0.1", peer.port)
    assert connection.starttls == "negotiated" and connection.tls_version in ("TLSv1.2", "TLSv1.3")
    assert connection.verification == f"ok: PKIX, valid for {MX}"
    assert connection.certificate is not None and connection.certificate.names == (MX,)
    assert "O=trustme" in connection.certificate.issuer
    assert peer.received == []  # no mail sent


async def test_connect_without_starttls(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, resolver: Resolver
) -> None:
    publish(dns, https_server, None, MX)
    with smtp_peer(handler=PeerHandler(starttls=False)) as peer:
        settings = config(tmp_path, dns, https_server, https_ca_file, peer.port)
        result = await probe(settings, resolver, DOMAIN, connect=True)
    connection = result.hosts[0].connection
    assert connection is not None and connection.opened
    assert (connection.starttls, connection.verification, connection.certificate) == (
        "not offered",
        "no TLS",
        None,
    )
    assert connection.tls_failure == "starttls-not-supported: STARTTLS not offered by the server"


async def test_connect_fails_when_enforce_meets_an_untrusted_certificate(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, resolver: Resolver
) -> None:
    publish(dns, https_server, "enforce", MX)
    with smtp_peer(trustme.CA().issue_cert(MX)) as peer:
        settings = config(tmp_path, dns, https_server, https_ca_file, peer.port)
        result = await probe(settings, resolver, DOMAIN, connect=True)
    connection = result.hosts[0].connection
    assert connection is not None and not connection.opened
    assert connection.starttls == "failed"
    assert connection.verification.startswith("failed: certificate-not-trusted:")


async def test_dane_host_and_tlsa_match(
    tmp_path: Path,
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    https_ca: trustme.CA,
    https_ca_file: Path,
    resolver: Resolver,
) -> None:
    publish(dns, https_server, None, MX)
    cert = https_ca.issue_cert(MX)
    dns.add(f"_25._tcp.{MX}", "TLSA", f"3 1 1 {spki_sha256(cert)}")
    dns.authentic(DOMAIN)
    with smtp_peer(cert) as peer:
        settings = config(tmp_path, dns, https_server, https_ca_file, peer.port)
        result = await probe(settings, resolver, DOMAIN, connect=True)
    assert result.mx_authentic
    (host,) = result.hosts
    assert host.dane == f"dane: TLSA at _25._tcp.{MX}" and host.tlsa == (
        f"3 1 1 {spki_sha256(cert).upper()}",
    )
    assert host.tls_mode == f"TLS required, certificate checked against TLSA ({MX})" and host.basis == "DANE"
    assert (
        host.connection is not None and host.connection.verification == "ok: matches the TLSA records (DANE)"
    )


async def test_bounds_hosts_and_time(
    tmp_path: Path,
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    https_ca_file: Path,
    resolver: Resolver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish(dns, https_server, None, *(f"mx{n}.example.net" for n in range(MAX_HOSTS + 2)))
    settings = config(tmp_path, dns, https_server, https_ca_file)
    result = await probe(settings, resolver, DOMAIN, connect=False)
    assert (len(result.hosts), result.hosts_left_out) == (MAX_HOSTS, 2)
    # A name server that never answers: the probe's own deadline ends it, with a clear error.
    monkeypatch.setattr(probe_module, "PROBE_TIMEOUT", 0.3)
    dns.timeout(DOMAIN)
    result = await probe(settings, resolver, DOMAIN, connect=False)
    assert result.error == "probe not finished within 0.3 s" and result.hosts == ()
