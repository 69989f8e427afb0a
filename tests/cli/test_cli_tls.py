"""`postwarden tls probe`: the probe's text and JSON output, its exit status, escaping of DNS text."""

from __future__ import annotations

import json
from pathlib import Path

import trustme
from click.testing import CliRunner, Result

from app.cli import main
from tests.queue.test_probe import DOMAIN, MX, probe_config, publish
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import HTTPSTestServer
from tests.support.smtppeers import PeerHandler, smtp_peer


def run(config_file: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config_file), "tls", "probe", *args])


def test_probe_text_with_connection(
    tmp_path: Path,
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    https_ca: trustme.CA,
    https_ca_file: Path,
) -> None:
    publish(dns, https_server, "enforce", MX)
    with smtp_peer(https_ca.issue_cert(MX)) as peer:
        result = run(probe_config(tmp_path, dns, https_server, https_ca_file, peer.port), DOMAIN, "--connect")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == [
        f"Domain: {DOMAIN}",
        "Hosts: MX records, not DNSSEC-authenticated",
        f"MTA-STS: id 20261202, mode enforce, mx {MX}, max_age 86400",
        "MTA-STS cache (delivery applies it while the id is unchanged): empty",
    ]
    assert f"Host {MX} port {peer.port}: used" in lines
    assert "  TLSA: not looked up (MX answer not DNSSEC-authenticated: insecure)" in lines
    assert f"  TLS: TLS required, certificate checked by PKIX for {MX}" in lines
    assert f"  connection to 127.0.0.1 port {peer.port}: session opened" in lines
    assert any(line.startswith("    STARTTLS: negotiated (TLSv1.") for line in lines)
    assert any(line.startswith("    certificate issuer: ") and "trustme" in line for line in lines)
    assert f"    verification: ok: PKIX, valid for {MX}" in lines


def test_probe_json_without_starttls(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path
) -> None:
    publish(dns, https_server, None, MX)
    with smtp_peer(handler=PeerHandler(starttls=False)) as peer:
        config_file = probe_config(tmp_path, dns, https_server, https_ca_file, peer.port)
        result = run(config_file, DOMAIN, "--connect", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["domain"] == DOMAIN and data["error"] is None
    (host,) = data["hosts"]
    assert host["host"] == MX and host["use_host"] is True
    assert host["connection"]["starttls"] == "not offered" and host["connection"]["opened"] is True


def test_dns_failure_exits_1_without_traceback(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path
) -> None:
    dns.servfail(DOMAIN)
    result = run(probe_config(tmp_path, dns, https_server, https_ca_file, 25), DOMAIN)
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"Error: MX lookup for {DOMAIN}: ")
    assert "Traceback" not in result.output


def test_hostile_dns_text_is_escaped(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path
) -> None:
    dns.add(DOMAIN, "MX", "10 mx\\027[31m.example.net.")
    dns.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=\\027[2J"')
    result = run(probe_config(tmp_path, dns, https_server, https_ca_file, 25), DOMAIN)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "Host mx\\027[31m.example.net port 25: used" in result.output
    assert "invalid id '\\x1b[2J'" in result.output
