"""Test configurations: a valid base config written to a temp dir, extended per test with TOML text."""

from __future__ import annotations

from pathlib import Path

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
