"""`postwarden quickstart`: a complete, valid config, keys, database and account; and its refusals."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from sqlalchemy import select

from app.accounts import verify_password
from app.cli import main
from app.config import load_config
from app.db import session_scope
from app.dns import resolver_from_config
from app.dnsrecords import check_domain, records_for_domain
from app.models import Account, Mailbox
from tests.support.dkimpeers import dkimpy_private_key
from tests.support.dnsserver import DNSTestServer

PASSWORD_RE = re.compile(r"password: (\S+)")


def run(config_file: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config_file), "quickstart", *args])


def test_dev_quickstart_writes_a_complete_working_setup(tmp_path: Path) -> None:
    config_file = tmp_path / "config" / "postwarden.toml"
    result = run(config_file, "admin@postwarden.localhost", "--dev")
    assert result.exit_code == 0, result.output

    config = load_config(config_file)
    assert config.hostname == "mail.postwarden.localhost"
    # In config/, the data goes beside it, in data/ (the checkout layout `make run` uses).
    assert config.data_dir == tmp_path / "data"
    assert config.postmaster.account == "admin"
    assert config.host_tlsrpt is not None
    assert (config.host_tlsrpt.account, config.host_tlsrpt.localpart) == ("admin", "tls-reports")
    # A self-signed certificate, so STARTTLS (and AUTH after it) work on the dev listeners.
    tls_dir = config_file.parent / "tls"
    # IMAP too (`postwarden imap`): implicit TLS and STARTTLS on unprivileged loopback ports.
    tls = (tls_dir / "mail.postwarden.localhost.crt", tls_dir / "mail.postwarden.localhost.key")
    assert [(x.kind, x.address, x.port, x.tls_cert, x.tls_key) for x in config.listeners] == [
        ("inbound", "127.0.0.1", 2525, *tls),
        ("submission", "127.0.0.1", 2587, *tls),
        ("imaps", "127.0.0.1", 1993, *tls),
        ("imap", "127.0.0.1", 1143, *tls),
    ]
    certificate = x509.load_pem_x509_certificate((tls_dir / "mail.postwarden.localhost.crt").read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.postwarden.localhost"]
    assert (config.web.address, config.web.port) == ("127.0.0.1", 8080)
    assert (config.dns.nameservers, config.dns.timeout) == ([], 1.0)
    assert config.accounts["admin"].addresses == ["admin@postwarden.localhost"]
    domain = config.domains["postwarden.localhost"]
    assert domain.dmarc_reports is not None and domain.dmarc_reports.localpart == "dmarc-reports"
    assert domain.tls_reports is not None and domain.tls_reports.localpart == "tls-reports"
    assert config.account_for_address("dmarc-reports@postwarden.localhost") == ("admin", "DMARC")
    assert config.account_for_address("tls-reports@mail.postwarden.localhost") == ("admin", "TLSRPT")

    assert [s.algorithm for s in domain.dkim] == ["ed25519", "rsa"]
    secret_files = [s.private_key_file for s in domain.dkim]
    assert config.web.secret_key_file is not None
    secret_files += [config.web.secret_key_file, tls_dir / "mail.postwarden.localhost.key"]
    for path in secret_files:
        assert path.is_relative_to(config_file.parent)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    password = PASSWORD_RE.findall(result.output)
    assert len(password) == 1, "the password is printed exactly once"
    with session_scope(config.resolved_database_url) as session:
        assert verify_password(session, "admin", password[0])
        assert not verify_password(session, "admin", password[0] + "x")
        mailboxes = session.scalars(select(Mailbox.name).join(Account).where(Account.name == "admin")).all()
    assert {"Inbox", "Junk", "Rejects", "Postmaster", "DMARC", "TLSRPT"} <= set(mailboxes)

    records = records_for_domain(config, "postwarden.localhost")
    assert "tlsa" in {r.kind for r in records}
    for record in records:
        assert record.zone_line() in result.output
    assert "mta-sts.postwarden.localhost/.well-known/mta-sts.txt" in result.output

    check = CliRunner().invoke(main, ["--config", str(config_file), "check-config"])
    assert check.exit_code == 0, check.output


async def test_production_quickstart_keys_sign_and_records_check(tmp_path: Path, dns: DNSTestServer) -> None:
    config_file = tmp_path / "etc" / "postwarden.toml"
    result = run(config_file, "Ann@Example.ORG", "--hostname", "MX1.example.org.")
    assert result.exit_code == 0, result.output
    # Point the resolver at the loopback server; the generated file has no [dns] table without --dev.
    with config_file.open("a") as f:
        f.write(f'\n[dns]\nnameservers = ["127.0.0.1"]\nport = {dns.port}\n')
    config = load_config(config_file)
    assert config.hostname == "mx1.example.org"
    assert config.data_dir == tmp_path / "etc" / "data"
    assert config.accounts["Ann"].addresses == ["Ann@example.org"]
    assert [(x.kind, x.address, x.port) for x in config.listeners] == [
        ("inbound", "0.0.0.0", 25),
        ("submission", "0.0.0.0", 587),
    ]  # the IMAP listeners wait, commented out, for a certificate
    assert config.dns.timeout == 5.0

    records = records_for_domain(config, "example.org")
    dns.add("mx1.example.org", "A", "192.0.2.25")
    for record in records:
        if record.rtype == "TXT":
            dns.txt(record.name, record.value)
        else:
            dns.add(record.name, record.rtype, record.value)
    results = await check_domain(config, "example.org", resolver_from_config(config.dns))
    assert [(r.record.kind, r.status) for r in results if r.status != "ok"] == []

    # The generated keys sign mail that verifies against the published records (dkimpy both ways).
    message = b"From: Ann@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"
    for selector in config.domains["example.org"].dkim:
        signature = dkim.sign(
            message,
            selector.selector.encode(),
            b"example.org",
            dkimpy_private_key(selector.private_key_file.read_bytes(), selector.algorithm),
            signature_algorithm=b"ed25519-sha256" if selector.algorithm == "ed25519" else b"rsa-sha256",
        )
        published = dict((r.name, r.value) for r in records)

        def lookup(name: bytes, timeout: int = 5, _published: dict[str, str] = published) -> bytes:
            return _published[name.decode().rstrip(".")].encode()

        assert dkim.verify(signature + message, dnsfunc=lookup), selector.selector


def test_refuses_to_overwrite_an_existing_config(tmp_path: Path) -> None:
    config_file = tmp_path / "postwarden.toml"
    config_file.write_text("# mine\n")
    result = run(config_file, "admin@example.org")
    assert result.exit_code == 2
    assert (
        f"postwarden: {config_file} already exists; quickstart never overwrites a configuration"
        in result.output
    )
    assert config_file.read_text() == "# mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["postwarden.toml"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["admin"], "'admin' is not an email address like you@example.org"),
        (["admin@"], "'admin@' is not an email address like you@example.org"),
        (["a b@example.org"], "'a b@example.org' is not an email address"),
        (["admin@exa_mple.org"], "'admin@exa_mple.org' is not an email address"),
        (
            ["admin@example.org", "--hostname", "-mail.example.org"],
            "--hostname '-mail.example.org' is not a host name",
        ),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    config_file = tmp_path / "config" / "postwarden.toml"
    result = run(config_file, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "config").exists()


def test_failure_leaves_nothing_behind_and_can_be_retried(tmp_path: Path) -> None:
    config_file = tmp_path / "config" / "postwarden.toml"
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    result = run(config_file, "admin@example.org", "--dev")
    assert result.exit_code == 2
    assert f"postwarden: cannot write {blocker}" in result.output
    assert "Traceback" not in result.output
    assert not config_file.exists()
    assert [p for p in (tmp_path / "config").rglob("*") if p.is_file()] == []

    blocker.unlink()
    again = run(config_file, "admin@example.org", "--dev")
    assert again.exit_code == 0, again.output
    assert load_config(config_file).accounts["admin"].addresses == ["admin@example.org"]


def test_production_imap_listeners_serve_once_uncommented_with_a_certificate(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """Without --dev the IMAP listeners are written commented out (there is no certificate yet);
    uncommented, with the certificate's paths, they are the imaps 993 and imap 143 listeners."""
    config_file = tmp_path / "etc" / "postwarden.toml"
    assert run(config_file, "ann@example.org").exit_code == 0
    text = config_file.read_text()
    commented = text[text.index("# [[listeners]]") : text.index("[domains.")]
    live = "/etc/letsencrypt/live/mail.example.org"
    uncommented = commented.replace("# ", "").replace(f"{live}/fullchain.pem", str(tls_files[0]))
    config_file.write_text(
        text.replace(commented, uncommented.replace(f"{live}/privkey.pem", str(tls_files[1])))
    )
    config = load_config(config_file)
    assert [(x.kind, x.address, x.port, x.tls_cert) for x in config.imap_listeners] == [
        ("imaps", "0.0.0.0", 993, tls_files[0]),
        ("imap", "0.0.0.0", 143, tls_files[0]),
    ]
