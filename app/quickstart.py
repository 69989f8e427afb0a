"""`postwarden quickstart`: a complete first configuration, DKIM keys, the database and the first account.

Everything is written next to the config file; relative paths in the config are relative to its
directory. The config file is written last and never overwritten, so a failed run leaves no config
behind and can be run again.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.exc import SQLAlchemyError

from app.accounts import set_password, sync_from_config
from app.auth.dkimkeys import DKIMAlgorithm, generate_private_key_pem
from app.config import Config, ConfigError, load_config
from app.db import session_scope
from app.migrate import upgrade_database

# A hostname or domain: dot-separated LDH labels (RFC 1035 2.3.1, RFC 1123 2.1).
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
_LOCALPART_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")

DMARC_REPORTS_LOCALPART = "dmarc-reports"
TLS_REPORTS_LOCALPART = "tls-reports"
# --dev: unprivileged ports on loopback, and a short DNS timeout since a laptop may be offline.
DEV_PORTS = {"inbound": 2525, "submission": 2587, "imaps": 1993, "imap": 1143, "web": 8080}
PRODUCTION_PORTS = {"inbound": 25, "submission": 587, "imaps": 993, "imap": 143, "web": 8080}
DEV_DNS_TIMEOUT = 1.0
DEV_CERTIFICATE_DAYS = 365


class QuickstartError(Exception):
    """Quickstart cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class QuickstartResult:
    config_file: Path
    config: Config
    address: str
    domain: str
    account: str
    password: str


@dataclass(frozen=True)
class _Plan:
    address: str
    account: str
    domain: str
    hostname: str
    dev: bool
    config_file: Path
    selectors: dict[DKIMAlgorithm, str]


def _plan(config_file: Path, address: str, hostname: str | None, dev: bool) -> _Plan:
    localpart, at, domain = address.rpartition("@")
    domain = domain.lower().rstrip(".")
    if not at or not _LOCALPART_RE.match(localpart) or not _DOMAIN_RE.match(domain):
        raise QuickstartError(f"{address!r} is not an email address like you@example.org")
    host = (hostname or f"mail.{domain}").lower().rstrip(".")
    if not _DOMAIN_RE.match(host):
        raise QuickstartError(f"--hostname {hostname!r} is not a host name like mail.example.org")
    if config_file.exists():
        raise QuickstartError(
            f"{config_file} already exists; quickstart never overwrites a configuration "
            "(edit it, or move it away to start over)"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return _Plan(
        address=f"{localpart}@{domain}",
        account=localpart,
        domain=domain,
        hostname=host,
        dev=dev,
        config_file=config_file,
        selectors={"ed25519": f"ed{stamp}", "rsa": f"rsa{stamp}"},
    )


def _write_private(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only; refuse to replace an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise QuickstartError(f"{path} already exists; move it away and run quickstart again") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _dkim_key_file(plan: _Plan, algorithm: DKIMAlgorithm) -> str:
    """Relative to the config directory."""
    return f"dkim/{plan.domain}/{plan.selectors[algorithm]}.pem"


def _data_dir(config_file: Path) -> str:
    # In a checkout the config lives in config/ and the data beside it, in data/ (gitignored).
    return "../data" if config_file.resolve().parent.name == "config" else "data"


def _q(value: str | Path) -> str:
    """A TOML basic string (JSON string escapes are valid TOML)."""
    return json.dumps(str(value))


def _dev_tls_files(plan: _Plan) -> tuple[str, str]:
    """The self-signed certificate and key --dev writes, relative to the config directory."""
    return f"tls/{plan.hostname}.crt", f"tls/{plan.hostname}.key"


def _listener_head(kind: str, plan: _Plan) -> str:
    address = "127.0.0.1" if plan.dev else "0.0.0.0"
    port = (DEV_PORTS if plan.dev else PRODUCTION_PORTS)[kind]
    return f'[[listeners]]\nkind = "{kind}"\naddress = {_q(address)}\nport = {port}\n'


def _tls_toml(plan: _Plan, prefix: str = "") -> str:
    """tls_cert and tls_key: --dev's self-signed files, else where Let's Encrypt puts the host's."""
    if plan.dev:
        cert, key = _dev_tls_files(plan)
    else:
        live = f"/etc/letsencrypt/live/{plan.hostname}"
        cert, key = f"{live}/fullchain.pem", f"{live}/privkey.pem"
    return f"{prefix}tls_cert = {_q(cert)}\n{prefix}tls_key = {_q(key)}\n"


def _listener_toml(kind: str, plan: _Plan) -> str:
    offers = "STARTTLS, and AUTH after it" if kind == "submission" else "STARTTLS"
    if plan.dev:
        comment = f"# --dev: a self-signed certificate, so the listener offers {offers}.\n"
        return _listener_head(kind, plan) + comment + _tls_toml(plan)
    comment = f"# With a certificate for {plan.hostname} the listener offers {offers}:\n"
    return _listener_head(kind, plan) + comment + _tls_toml(plan, "# ")


def _imap_listeners_toml(plan: _Plan) -> str:
    """The IMAP listeners; without --dev commented out, as they need a certificate and quickstart has
    none to name (`postwarden imap` idles without listeners)."""
    blocks = [_listener_head(kind, plan) + _tls_toml(plan) for kind in ("imaps", "imap")]
    if plan.dev:
        head = "# IMAP for mail clients (`postwarden imap`): imaps is TLS at once, imap offers STARTTLS.\n"
        return head + "\n".join(blocks)
    head = (
        "# IMAP for mail clients (`postwarden imap`): imaps (993) is TLS at once, imap (143) offers\n"
        f"# STARTTLS. Both need a certificate for {plan.hostname}: uncomment them once you have it.\n"
    )
    return head + "\n".join("".join(f"# {line}\n" for line in b.splitlines()) for b in blocks)


def config_text(plan: _Plan) -> str:
    """The configuration file quickstart writes."""
    account, domain = _q(plan.account), _q(plan.domain)
    dns = (
        "\n[dns]\n# --dev: the system resolver, with a short timeout (the machine may be offline).\n"
        f"timeout = {DEV_DNS_TIMEOUT}\n"
    )
    selectors = "".join(
        f'\n[[domains.{domain}.dkim]]\nselector = {_q(plan.selectors[alg])}\nalgorithm = "{alg}"\n'
        f"private_key_file = {_q(_dkim_key_file(plan, alg))}\n"
        for alg in ("ed25519", "rsa")
    )
    return f"""\
# Postwarden configuration, written by `postwarden quickstart` on {datetime.now(UTC):%Y-%m-%d}.
# config/postwarden.example.toml documents every option. Relative paths are relative to this file.

hostname = {_q(plan.hostname)}
data_dir = {_q(_data_dir(plan.config_file))}
# Defaults: SQLite in data_dir and kombu's filesystem broker under data_dir/queue. For production:
# database_url = "postgresql+psycopg://postwarden@127.0.0.1/postwarden"
# broker_url = "redis://127.0.0.1:6379/0"
# and, for processes on several machines, message content (queued and stored) in the database:
# [storage]
# content = "database"

[postmaster]
account = {account}
mailbox = "Postmaster"

# TLS reports about this mail host (DANE) arrive at {TLS_REPORTS_LOCALPART}@{plan.hostname}.
[host_tlsrpt]
account = {account}
localpart = "{TLS_REPORTS_LOCALPART}"
mailbox = "TLSRPT"
{dns if plan.dev else ""}
[web]
address = "127.0.0.1"
port = {(DEV_PORTS if plan.dev else PRODUCTION_PORTS)["web"]}
secret_key_file = "web-secret.key"

{_listener_toml("inbound", plan)}
{_listener_toml("submission", plan)}
{_imap_listeners_toml(plan)}
[domains.{domain}]
dmarc_reports = {{ account = {account}, localpart = "{DMARC_REPORTS_LOCALPART}", mailbox = "DMARC" }}
tls_reports = {{ account = {account}, localpart = "{TLS_REPORTS_LOCALPART}", mailbox = "TLSRPT" }}
{selectors}
[accounts.{account}]
addresses = [{_q(plan.address)}]
"""


def self_signed_certificate(hostname: str) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#8 key PEM) for `hostname`, valid for a year: for development only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=DEV_CERTIFICATE_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _write_keys(plan: _Plan, directory: Path, created: list[Path]) -> None:
    """DKIM keys, the web session secret and (--dev) a TLS certificate; each file is added to `created`."""
    secrets_to_write: list[tuple[Path, bytes]] = [
        (directory / _dkim_key_file(plan, alg), generate_private_key_pem(alg)) for alg in ("ed25519", "rsa")
    ]
    secrets_to_write.append((directory / "web-secret.key", secrets.token_urlsafe(48).encode()))
    if plan.dev:
        cert_pem, key_pem = self_signed_certificate(plan.hostname)
        cert_file, key_file = _dev_tls_files(plan)
        secrets_to_write += [(directory / cert_file, cert_pem), (directory / key_file, key_pem)]
    for path, data in secrets_to_write:
        _write_private(path, data)
        created.append(path)


def _install(plan: _Plan, staged: Path) -> QuickstartResult:
    """Validate the staged config, create the database and the account, then put the config in place."""
    try:
        config = load_config(staged)
    except ConfigError as e:
        raise QuickstartError(f"the generated configuration is invalid (a bug): {e}") from None
    config.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(config.resolved_database_url)
    password = secrets.token_urlsafe(18)
    with session_scope(config.resolved_database_url) as session:
        sync_from_config(session, config)
        set_password(session, plan.account, password)
    try:
        # A hard link fails if the name exists, so a config created meanwhile is never replaced.
        os.link(staged, plan.config_file)
    except FileExistsError:
        raise QuickstartError(f"{plan.config_file} appeared while quickstart ran; not replaced") from None
    return QuickstartResult(
        plan.config_file, load_config(plan.config_file), plan.address, plan.domain, plan.account, password
    )


def quickstart(
    config_file: Path, address: str, hostname: str | None = None, dev: bool = False
) -> QuickstartResult:
    """Write keys and config for `address`, create the database and its account with a new password."""
    plan = _plan(config_file, address, hostname, dev)
    directory = config_file.parent
    staged = directory / f".{config_file.name}.quickstart"
    created: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_keys(plan, directory, created)
        staged.write_text(config_text(plan), encoding="utf-8")
        return _install(plan, staged)
    except BaseException as e:
        # Without a config the keys are unused; removing them lets a second run start clean.
        for path in created:
            path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise QuickstartError(f"cannot write {e.filename or 'a file'}: {e.strerror or e}") from None
        if isinstance(e, SQLAlchemyError):
            raise QuickstartError(f"cannot create the database: {e}") from None
        raise
    finally:
        staged.unlink(missing_ok=True)
