"""DNS records to publish (R7.1) and their checks (R7.2), against the loopback DNS server."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from app.auth.dkimkeys import dns_txt_value, generate_private_key_pem
from app.cli import main
from app.config import Config, load_config
from app.dns import Resolver
from app.dnsrecords import (
    DNSRecord,
    DNSRecordsError,
    check_domain,
    mta_sts_policy,
    records_for_domain,
)
from tests.support.configs import REPORTING_ADDRESSES, dkim_keys, write_config
from tests.support.dnsserver import DNSTestServer

HOST = "mail.example.org"
HOST_IP = "192.0.2.10"

EXTRA = (
    REPORTING_ADDRESSES
    + """
[[listeners]]
kind = "inbound"
port = 0
tls_cert = "cert.pem"
tls_key = "key.pem"
"""
)


@pytest.fixture
def full_config_file(tmp_path: Path, dns: DNSTestServer) -> Path:
    """A config with DKIM keys of both kinds, report addresses, host_tlsrpt and an inbound certificate."""
    directory = tmp_path / "config"
    selectors = dkim_keys(directory)
    cert = trustme.CA().issue_cert(HOST)
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    return write_config(directory, EXTRA + selectors, dns_port=dns.port)


@pytest.fixture
def config(full_config_file: Path) -> Config:
    return load_config(full_config_file)


def publish(dns: DNSTestServer, records: list[DNSRecord], skip: str = "") -> None:
    """Serve the records (all but those of kind `skip`) and the host's address, in a DNSSEC-signed zone."""
    dns.add(HOST, "A", HOST_IP)
    dns.authentic("example.org")
    serve(dns, [r for r in records if r.kind != skip])


def serve(dns: DNSTestServer, records: list[DNSRecord]) -> None:
    for record in records:
        if record.rtype == "TXT":
            dns.txt(record.name, record.value)
        else:
            dns.add(record.name, record.rtype, record.value)


def by_kind(records: list[DNSRecord], kind: str) -> DNSRecord:
    return next(r for r in records if r.kind == kind)


LABELS = {
    "mx": "MX",
    "spf": "SPF",
    "host-spf": "SPF",
    "dkim": "DKIM key",
    "dmarc": "DMARC",
    "mta-sts": "MTA-STS",
    "tlsrpt": "TLSRPT",
    "host-tlsrpt": "TLSRPT",
    "tlsa": "TLSA",
}
ALL_KINDS = ["mx", "spf", "host-spf", "dkim", "dmarc", "mta-sts", "tlsrpt", "host-tlsrpt", "tlsa"]


def test_records_cover_every_kind_with_our_values(config: Config, full_config_file: Path) -> None:
    records = records_for_domain(config, "Example.ORG.")
    assert sorted({r.kind for r in records}) == sorted(ALL_KINDS)
    lines = {r.name + " " + r.rtype: r.value for r in records}
    assert lines["example.org MX"] == f"10 {HOST}."
    assert lines["example.org TXT"] == "v=spf1 mx ~all"
    assert lines[f"{HOST} TXT"] == "v=spf1 a ~all"
    assert lines["_dmarc.example.org TXT"] == "v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.org"
    assert lines["_smtp._tls.example.org TXT"] == "v=TLSRPTv1; rua=mailto:tls-reports@example.org"
    assert lines[f"_smtp._tls.{HOST} TXT"] == f"v=TLSRPTv1; rua=mailto:tlsrpt@{HOST}"
    directory = full_config_file.parent
    assert lines["ed1._domainkey.example.org TXT"] == dns_txt_value(
        (directory / "ed1.pem").read_bytes(), "ed25519"
    )
    assert lines["rsa1._domainkey.example.org TXT"].startswith("v=DKIM1; k=rsa; p=MII")
    cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert lines[f"_25._tcp.{HOST} TLSA"] == f"3 1 1 {hashlib.sha256(spki).hexdigest()}"
    policy = mta_sts_policy(config, "example.org")
    assert lines["_mta-sts.example.org TXT"] == f"v=STSv1; id={policy.id}"
    assert policy.url == "https://mta-sts.example.org/.well-known/mta-sts.txt"
    assert policy.text == f"version: STSv1\r\nmode: enforce\r\nmx: {HOST}\r\nmax_age: 604800\r\n"


def test_optional_records_left_out_when_not_configured(config_file: Path) -> None:
    """No DKIM selectors, report addresses or certificate: no such records; no host_tlsrpt: no host record."""
    text = config_file.read_text().replace(
        '[host_tlsrpt]\naccount = "admin"\nlocalpart = "tlsrpt"\nmailbox = "TLSRPT"\n', ""
    )
    config_file.write_text(text)
    config = load_config(config_file)
    records = records_for_domain(config, "example.org")
    assert [r.kind for r in records] == ["mx", "spf", "host-spf", "dmarc", "mta-sts"]
    assert by_kind(records, "dmarc").value == "v=DMARC1; p=reject"
    # Without a certificate, enforce would make senders fail; the policy only asks for reports.
    assert "mode: testing" in mta_sts_policy(config, "example.org").text


def test_long_txt_zone_line_is_split_into_character_strings(config: Config) -> None:
    line = by_kind(records_for_domain(config, "example.org"), "dkim").zone_line()
    rsa_line = next(r for r in records_for_domain(config, "example.org") if "rsa1" in r.name).zone_line()
    assert line.startswith('ed1._domainkey.example.org. 3600 IN TXT "v=DKIM1; k=ed25519; p=')
    strings = rsa_line.split(" TXT ", 1)[1]
    assert strings.count('"') == 4 and len(strings.split('" "')[0]) == 256


def test_unknown_domain_is_a_clear_error(config: Config) -> None:
    with pytest.raises(DNSRecordsError, match=r"domain 'other\.example' is not in \[domains\].*example\.org"):
        records_for_domain(config, "other.example")


def test_unreadable_dkim_key_is_a_clear_error(config: Config, full_config_file: Path) -> None:
    (full_config_file.parent / "rsa1.pem").write_text("not a key")
    with pytest.raises(DNSRecordsError, match=r"selector 'rsa1': cannot use key file .*rsa1\.pem"):
        records_for_domain(config, "example.org")


async def test_check_all_ok(dns: DNSTestServer, resolver: Resolver, config: Config) -> None:
    publish(dns, records_for_domain(config, "example.org"))
    results = await check_domain(config, "example.org", resolver)
    assert [(r.record.kind, r.status, r.problem) for r in results] == [
        (k, "ok", "")
        for k in [
            "mx",
            "spf",
            "host-spf",
            "dkim",
            "dkim",
            "dmarc",
            "mta-sts",
            "tlsrpt",
            "host-tlsrpt",
            "tlsa",
        ]
    ]
    assert all(r.found for r in results)


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_check_each_missing(dns: DNSTestServer, resolver: Resolver, config: Config, kind: str) -> None:
    publish(dns, records_for_domain(config, "example.org"), skip=kind)
    results = await check_domain(config, "example.org", resolver)
    bad = [r for r in results if r.status != "ok"]
    assert {r.record.kind for r in bad} == {kind}
    for result in bad:
        assert result.status == "missing"
        assert result.found == ()
        assert result.problem == f"{result.record.name} has no {LABELS[kind]} record"
        assert result.fix == f"publish: {result.record.zone_line()}"


OTHER_KEY = dns_txt_value(generate_private_key_pem("ed25519"), "ed25519")
WRONG = {
    "mx": ("10 mx.elsewhere.example.", "no MX of example.org points to mail.example.org"),
    "spf": (
        "v=spf1 ip4:198.51.100.0/24 include:_spf.elsewhere.example -all",
        "does not name mail.example.org",
    ),
    "host-spf": ("v=spf1 -all", "does not name mail.example.org"),
    "dkim": (OTHER_KEY, "the published public key (p=) is not the key of this selector"),
    "dmarc": (
        "v=DMARC1; p=none; rua=mailto:reports@elsewhere.example",
        "rua does not include mailto:dmarc-reports@example.org",
    ),
    "mta-sts": ("v=STSv1; id=20240101", "id is '20240101'"),
    "tlsrpt": (
        "v=TLSRPTv1; rua=https://reports.elsewhere.example/tlsrpt",
        "rua does not include mailto:tls-reports@example.org",
    ),
    "host-tlsrpt": (
        "v=TLSRPTv1; rua=mailto:postmaster@example.org",
        f"rua does not include mailto:tlsrpt@{HOST}",
    ),
    "tlsa": ("3 1 1 " + "00" * 32, "no TLSA record matches the inbound listener's certificate"),
}


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_check_each_wrong(dns: DNSTestServer, resolver: Resolver, config: Config, kind: str) -> None:
    records = records_for_domain(config, "example.org")
    target = by_kind(records, kind)
    publish(dns, [r for r in records if r != target])
    value, problem = WRONG[kind]
    serve(dns, [DNSRecord(kind, target.name, target.rtype, value)])  # type: ignore[arg-type]
    results = await check_domain(config, "example.org", resolver)
    wrong = [r for r in results if r.record == target]
    assert len(wrong) == 1 and wrong[0].status == "wrong", wrong
    assert problem in wrong[0].problem
    assert wrong[0].fix
    assert [r.status for r in results if r.record != target] == ["ok"] * (len(results) - 1)


@pytest.mark.parametrize(
    ("kind", "extra", "status", "problem"),
    [
        ("spf", "v=spf1 a -all", "wrong", "more than one SPF record"),
        ("dmarc", "v=DMARC1; p=none", "wrong", "more than one DMARC record"),
        ("mta-sts", "v=STSv1; id=other", "wrong", "more than one MTA-STS record"),
    ],
)
async def test_check_duplicate_records_are_wrong(
    dns: DNSTestServer, resolver: Resolver, config: Config, kind: str, extra: str, status: str, problem: str
) -> None:
    records = records_for_domain(config, "example.org")
    publish(dns, records)
    dns.txt(by_kind(records, kind).name, extra)
    result = next(r for r in await check_domain(config, "example.org", resolver) if r.record.kind == kind)
    assert (result.status, len(result.found)) == (status, 2)
    assert problem in result.problem


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("spf", f"v=spf1 ip4:{HOST_IP}/32 -all"),
        ("spf", "v=spf1 +mx -all"),
        ("spf", f"v=spf1 a:{HOST} ~all"),
        ("dmarc", "v=DMARC1;p=quarantine;rua=mailto:other@example.net,mailto:DMARC-Reports@example.org!10m"),
        ("tlsrpt", "v=TLSRPTv1;rua=https://r.example.net/x,mailto:tls-reports@example.org"),
    ],
)
async def test_check_accepts_equivalent_records(
    dns: DNSTestServer, resolver: Resolver, config: Config, kind: str, value: str
) -> None:
    publish(dns, records_for_domain(config, "example.org"), skip=kind)
    dns.txt(by_kind(records_for_domain(config, "example.org"), kind).name, value)
    result = next(r for r in await check_domain(config, "example.org", resolver) if r.record.kind == kind)
    assert result.status == "ok", result.problem


async def test_check_mx_host_without_address(dns: DNSTestServer, resolver: Resolver, config: Config) -> None:
    serve(dns, records_for_domain(config, "example.org"))
    result = next(r for r in await check_domain(config, "example.org", resolver) if r.record.kind == "mx")
    assert (result.status, result.problem) == ("wrong", f"{HOST} has no A or AAAA record")


async def test_check_tlsa_outside_dnssec_is_wrong(
    dns: DNSTestServer, resolver: Resolver, config: Config
) -> None:
    publish(dns, records_for_domain(config, "example.org"))
    dns.authentic_zones.clear()
    result = next(r for r in await check_domain(config, "example.org", resolver) if r.record.kind == "tlsa")
    assert (result.status, result.problem) == ("wrong", "the TLSA record is not DNSSEC-authenticated")


async def test_check_lookup_failures_are_errors(
    dns: DNSTestServer, resolver: Resolver, config: Config
) -> None:
    publish(dns, records_for_domain(config, "example.org"))
    dns.servfail("_dmarc.example.org")
    dns.timeout("_mta-sts.example.org")
    results = {r.record.kind: r for r in await check_domain(config, "example.org", resolver)}
    for kind in ("dmarc", "mta-sts"):
        assert results[kind].status == "error"
        assert results[kind].problem.startswith("lookup failed: TXT _")
    assert results["mx"].status == "ok"


# The CLI.


def test_cli_dns_records(full_config_file: Path, config: Config) -> None:
    result = CliRunner().invoke(main, ["--config", str(full_config_file), "dns", "records", "example.org"])
    assert result.exit_code == 0, result.output
    for record in records_for_domain(config, "example.org"):
        assert record.zone_line() in result.output
    assert "https://mta-sts.example.org/.well-known/mta-sts.txt" in result.output
    assert ";   mode: enforce" in result.output


def test_cli_dns_records_json(full_config_file: Path) -> None:
    result = CliRunner().invoke(
        main, ["--config", str(full_config_file), "dns", "records", "example.org", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["domain"] == "example.org"
    assert {r["kind"] for r in data["records"]} == set(ALL_KINDS)
    assert data["mta_sts_policy"]["text"].startswith("version: STSv1\r\n")


def test_cli_dns_unknown_domain_exits_2(full_config_file: Path) -> None:
    for command in ("records", "check"):
        result = CliRunner().invoke(main, ["--config", str(full_config_file), "dns", command, "nope.example"])
        assert result.exit_code == 2
        assert "domain 'nope.example' is not in [domains]" in result.output
        assert "Traceback" not in result.output


def test_cli_dns_check_ok_and_wrong(dns: DNSTestServer, full_config_file: Path, config: Config) -> None:
    records = records_for_domain(config, "example.org")
    publish(dns, records)
    ok = CliRunner().invoke(main, ["--config", str(full_config_file), "dns", "check", "example.org"])
    assert ok.exit_code == 0, ok.output
    assert "10 of 10 records ok" in ok.output

    dns.clear()
    publish(dns, records, skip="dmarc")
    dns.txt("_dmarc.example.org", "v=DMARC1; p=none")
    bad = CliRunner().invoke(main, ["--config", str(full_config_file), "dns", "check", "example.org"])
    assert bad.exit_code == 1
    assert "wrong    dmarc        TXT   _dmarc.example.org" in bad.output
    assert "problem: rua does not include mailto:dmarc-reports@example.org" in bad.output
    assert "9 of 10 records ok" in bad.output

    as_json = CliRunner().invoke(
        main, ["--config", str(full_config_file), "dns", "check", "example.org", "--json"]
    )
    assert as_json.exit_code == 1
    statuses = {(r["record"]["kind"], r["status"]) for r in json.loads(as_json.output)["results"]}
    assert ("dmarc", "wrong") in statuses and ("mx", "ok") in statuses


# RFC 6186 SRV records: where mail clients find IMAP and submission.

CLIENTS = """
[[listeners]]
kind = "imaps"
address = "0.0.0.0"
port = 993
tls_cert = "cert.pem"
tls_key = "key.pem"

[[listeners]]
kind = "submission"
address = "0.0.0.0"
port = 587
tls_cert = "cert.pem"
tls_key = "key.pem"
"""


@pytest.fixture
def client_config(full_config_file: Path) -> Config:
    """The full config, with an imaps and a submission listener (no imap, no submissions)."""
    full_config_file.write_text(full_config_file.read_text() + CLIENTS)
    return load_config(full_config_file)


def srv_lines(records: list[DNSRecord]) -> list[str]:
    return [f"{r.name} {r.value}" for r in records if r.kind == "srv"]


def test_srv_records_name_the_offered_services_and_mark_the_others_not_offered(client_config: Config) -> None:
    assert srv_lines(records_for_domain(client_config, "example.org")) == [
        f"_imaps._tcp.example.org 0 1 993 {HOST}.",
        "_imap._tcp.example.org 0 0 0 .",
        "_submissions._tcp.example.org 0 0 0 .",
        f"_submission._tcp.example.org 10 1 587 {HOST}.",
    ]


def test_srv_records_follow_the_configured_ports(full_config_file: Path) -> None:
    cert = 'tls_cert = "cert.pem"\ntls_key = "key.pem"\n'
    extra = (
        f'\n[[listeners]]\nkind = "imap"\nport = 1143\n{cert}'
        '\n[[listeners]]\nkind = "submission"\nport = 2587\n'  # no certificate: no AUTH, not offered
    )
    full_config_file.write_text(full_config_file.read_text() + extra)
    assert srv_lines(records_for_domain(load_config(full_config_file), "example.org")) == [
        "_imaps._tcp.example.org 0 0 0 .",
        f"_imap._tcp.example.org 10 1 1143 {HOST}.",
        "_submissions._tcp.example.org 0 0 0 .",
        "_submission._tcp.example.org 0 0 0 .",
    ]


def test_no_srv_records_for_a_host_without_mail_client_listeners(config: Config) -> None:
    assert srv_lines(records_for_domain(config, "example.org")) == []


async def test_srv_check_ok_missing_and_wrong(
    dns: DNSTestServer, resolver: Resolver, client_config: Config
) -> None:
    records = records_for_domain(client_config, "example.org")
    srv = [r for r in records if r.kind == "srv"]
    publish(dns, [r for r in records if r.name not in ("_imaps._tcp.example.org", "_imap._tcp.example.org")])
    dns.add("_imaps._tcp.example.org", "SRV", f"5 0 10993 {HOST}.")  # another port
    checked = await check_domain(client_config, "example.org", resolver)
    results = {r.record.name: r for r in checked if r.record.kind == "srv"}
    imaps, imap = results["_imaps._tcp.example.org"], results["_imap._tcp.example.org"]
    assert (imaps.status, imaps.found) == ("wrong", (f"5 0 10993 {HOST}.",))
    assert imaps.problem == f"no SRV record of _imaps._tcp.example.org points to {HOST}.:993"
    assert imaps.fix == f"publish: _imaps._tcp.example.org. 3600 IN SRV 0 1 993 {HOST}."
    assert (imap.status, imap.problem) == ("missing", "_imap._tcp.example.org has no SRV record")
    assert [results[r.name].status for r in srv[2:]] == ["ok", "ok"]
    assert [r.status for r in checked if r.record.kind != "srv"] == ["ok"] * (len(records) - 4)


async def test_srv_check_accepts_other_priorities_and_refuses_a_host_for_a_service_not_offered(
    dns: DNSTestServer, resolver: Resolver, client_config: Config
) -> None:
    records = records_for_domain(client_config, "example.org")
    publish(dns, [r for r in records if r.kind != "srv"])
    dns.add("_imaps._tcp.example.org", "SRV", f"20 5 993 {HOST.upper()}.", "30 5 993 backup.example.org.")
    dns.add("_imap._tcp.example.org", "SRV", f"10 1 143 {HOST}.")  # we do not offer STARTTLS IMAP
    dns.add("_submissions._tcp.example.org", "SRV", "0 0 0 .")
    dns.add("_submission._tcp.example.org", "SRV", f"0 0 587 {HOST}.")
    results = {r.record.name: r for r in await check_domain(client_config, "example.org", resolver)}
    assert results["_imaps._tcp.example.org"].status == "ok"
    assert results["_submission._tcp.example.org"].status == "ok"
    assert results["_submissions._tcp.example.org"].status == "ok"
    imap = results["_imap._tcp.example.org"]
    assert imap.status == "wrong"
    assert imap.problem == "the service is not offered here, but the record points mail clients to a host"
    assert imap.fix == "replace it with: _imap._tcp.example.org. 3600 IN SRV 0 0 0 ."


def test_cli_dns_check_counts_the_srv_records(
    dns: DNSTestServer, full_config_file: Path, client_config: Config
) -> None:
    publish(dns, records_for_domain(client_config, "example.org"))
    ok = CliRunner().invoke(main, ["--config", str(full_config_file), "dns", "check", "example.org"])
    assert ok.exit_code == 0, ok.output
    assert "14 of 14 records ok" in ok.output
    assert "ok       srv          SRV   _imaps._tcp.example.org" in ok.output
