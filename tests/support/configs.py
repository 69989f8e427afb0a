"""Test configurations: a valid base config written to a temp dir, extended per test with TOML text."""

from __future__ import annotations

from pathlib import Path

from app.auth.dkimkeys import DKIMAlgorithm, dns_txt_value, generate_private_key_pem
from tests.support.dnsserver import DNSTestServer

DKIM_SELECTORS: tuple[tuple[str, DKIMAlgorithm], ...] = (("ed1", "ed25519"), ("rsa1", "rsa"))

BASE_CONFIG = """\
hostname = "mail.example.org"
data_dir = "data"
database_url = "{database_url}"
broker_url = "{broker_url}"

[postmaster]
account = "admin"
mailbox = "Postmaster"

[host_tlsrpt]
account = "admin"
localpart = "tlsrpt"
mailbox = "TLSRPT"

[dns]
nameservers = ["127.0.0.1"]
port = {dns_port}
timeout = 1.0
trust_dnssec = true

[domains."example.org"]

[accounts.admin]
addresses = ["admin@example.org", "info@example.org"]
"""

# The domain's DMARC and TLS reporting addresses (the host TLSRPT address is in BASE_CONFIG).
REPORTING_ADDRESSES = """
[domains."example.org".dmarc_reports]
account = "admin"
localpart = "dmarc-reports"
mailbox = "DMARC"

[domains."example.org".tls_reports]
account = "admin"
localpart = "tls-reports"
mailbox = "TLSRPT"
"""


def write_config(
    directory: Path,
    extra: str = "",
    *,
    database_url: str | None = None,
    broker_url: str = "filesystem://",
    dns_port: int = 53,
) -> Path:
    """Write `directory/postwarden.toml`: the base config plus `extra` TOML appended."""
    directory.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{directory / 'data' / 'postwarden.db'}"
    (directory / "data").mkdir(exist_ok=True)
    path = directory / "postwarden.toml"
    path.write_text(BASE_CONFIG.format(database_url=url, broker_url=broker_url, dns_port=dns_port) + extra)
    return path


def dkim_keys(directory: Path, dns: DNSTestServer | None = None, domain: str = "example.org") -> str:
    """Write an ed25519 and an RSA key (selectors ed1, rsa1) for `domain` into `directory`, publish
    them in `dns` when given, and return the TOML that configures them (paths relative to `directory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    toml = ""
    for selector, algorithm in DKIM_SELECTORS:
        pem = generate_private_key_pem(algorithm)
        (directory / f"{selector}.pem").write_bytes(pem)
        if dns is not None:
            dns.txt(f"{selector}._domainkey.{domain}", dns_txt_value(pem, algorithm))
        toml += (
            f'\n[[domains."{domain}".dkim]]\nselector = "{selector}"\nalgorithm = "{algorithm}"\n'
            f'private_key_file = "{selector}.pem"\n'
        )
    return toml
