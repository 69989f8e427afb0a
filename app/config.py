"""Load and validate the TOML configuration.

Every error names the file, the key and what was expected, so an operator can fix it without reading
code. Relative paths in the file are relative to the directory that holds the file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from app.address import normalize_address
from app.auth.dkimkeys import DKIMKeyError, load_private_key

DEFAULT_CONFIG_PATH = Path("config/postwarden.toml")

# A path given as a TOML string (strict mode would demand a Path object).
FilePath = Annotated[Path, Field(strict=False)]
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(*parts: str | int) -> str:
    """A key path as it is written in TOML, e.g. `domains."example.org".dkim[0]` (dotted names quoted)."""
    key = ""
    for part in parts:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            name = part if _BARE_KEY.match(part) else json.dumps(part)
            key += f".{name}" if key else name
    return key


class ConfigError(Exception):
    """A configuration problem; the message is meant for the operator, as is."""


def _network_text(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or network") from None
    return value


# An IP address or network as written (e.g. "10.0.0.0/8"), checked to parse.
NetworkText = Annotated[str, AfterValidator(_network_text)]


class Strict(BaseModel):
    # strict: `port = "25"` or `trust_dnssec = 1` is an error, not silently converted.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MailboxTarget(Strict):
    """Where mail to a special address goes: `<localpart>@<domain>` into `mailbox` of `account`."""

    account: str
    localpart: str
    mailbox: str


class Postmaster(Strict):
    """The account and mailbox that receive postmaster@ mail, DSNs of our reports (in sub-mailboxes)."""

    account: str
    mailbox: str = "Postmaster"


class DKIMSelector(Strict):
    selector: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    algorithm: Literal["ed25519", "rsa"]
    private_key_file: FilePath


class Domain(Strict):
    dkim: list[DKIMSelector] = []
    dmarc_reports: MailboxTarget | None = None
    tls_reports: MailboxTarget | None = None


def _regexp(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return value


# A regular expression (Python `re` syntax), checked to compile when the configuration is loaded.
Regexp = Annotated[str, AfterValidator(_regexp)]


class Ruleset(Strict):
    """Store matching mail into `mailbox`; options as in SPEC R3.5. A ruleset matches when its MAIL
    FROM regexp and every header regexp (header names case-insensitive) are found; see
    app/verdict/rulesets.py."""

    mailbox: str
    smtp_mail_from_regexp: Regexp | None = None
    header_regexps: dict[str, Regexp] = {}
    mailing_list_domain: str | None = None
    is_forward: bool = False
    accept_rejects_to_mailbox: str | None = None

    @cached_property
    def mail_from_pattern(self) -> re.Pattern[str] | None:
        return None if self.smtp_mail_from_regexp is None else re.compile(self.smtp_mail_from_regexp)

    @cached_property
    def header_patterns(self) -> dict[str, re.Pattern[str]]:
        """Header name (lower-case) -> its compiled regexp."""
        return {name.lower(): re.compile(value) for name, value in self.header_regexps.items()}


class Account(Strict):
    addresses: Annotated[list[str], Field(min_length=1)]
    inbox: str = "Inbox"
    junk_mailbox: str = "Junk"
    rejects_mailbox: str = "Rejects"
    rulesets: list[Ruleset] = []

    @field_validator("addresses")
    @classmethod
    def _addresses_have_domain(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            local, at, domain = address.rpartition("@")
            if not at or not local or not domain:
                raise ValueError(f"{address!r} is not an address of the form localpart@domain")
        return [normalize_address(a) for a in addresses]


SMTP_KINDS = ("inbound", "submission")
IMAP_KINDS = ("imap", "imaps")


class Listener(Strict):
    """A socket to listen on. `postwarden smtp` binds the inbound and submission listeners,
    `postwarden imap` the imap (STARTTLS, port 143) and imaps (TLS from the first octet, 993) ones."""

    kind: Literal["inbound", "submission", "imap", "imaps"]
    address: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)]
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Listener:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.kind in IMAP_KINDS and self.tls_cert is None:
            # SPEC R8.1: IMAP takes passwords only over TLS, so without a certificate it is useless.
            raise ValueError(
                f"a listener of kind {self.kind!r} needs tls_cert and tls_key (IMAP takes passwords "
                "only over TLS)"
            )
        return self


class Imap(Strict):
    """The bounds of `postwarden imap`'s sessions (its listeners are [[listeners]] of kind imap/imaps)."""

    # Seconds a client may stay silent before logging in, and after (RFC 9051 5.4: at least 30 min).
    login_timeout: Annotated[float, Field(gt=0)] = 60.0
    idle_timeout: Annotated[float, Field(ge=1800)] = 1800.0
    max_sessions: Annotated[int, Field(gt=0)] = 1000
    max_sessions_per_ip: Annotated[int, Field(gt=0)] = 20
    max_errors: Annotated[int, Field(gt=0)] = 10

    @model_validator(mode="before")
    @classmethod
    def _listeners_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "listeners" in data:
            raise ValueError(
                '[[imap.listeners]] is now [[listeners]] with kind = "imap" or "imaps" (move the tables)'
            )
        return data


class Limits(Strict):
    max_message_size: Annotated[int, Field(gt=0)] = 50 * 1024 * 1024
    max_recipients: Annotated[int, Field(gt=0)] = 100
    max_line_length: Annotated[int, Field(ge=1000)] = 8192
    idle_timeout: Annotated[float, Field(gt=0)] = 300.0
    max_errors: Annotated[int, Field(gt=0)] = 10
    # Concurrent SMTP sessions, over all listeners and worker processes, and per client address
    # (IPv6: per /64); beyond them a connection gets 421 4.7.0 and is closed.
    max_sessions: Annotated[int, Field(gt=0)] = 1000
    max_sessions_per_ip: Annotated[int, Field(gt=0)] = 20
    # Connections the kernel queues before we accept them (capped by net.core.somaxconn).
    listen_backlog: Annotated[int, Field(ge=1, le=65535)] = 1024
    # DATA: seconds without any incoming data, and for the whole message data.
    data_timeout: Annotated[float, Field(gt=0)] = 300.0
    data_total_timeout: Annotated[float, Field(gt=0)] = 3600.0
    # Bytes of message data a worker process holds in memory at once, over all its sessions.
    data_memory_budget: Annotated[int, Field(gt=0)] = 256 * 1024 * 1024

    @model_validator(mode="after")
    def _budget_fits_a_message(self) -> Limits:
        if self.data_memory_budget < self.max_message_size:
            raise ValueError(
                f"data_memory_budget ({self.data_memory_budget}) must be at least max_message_size "
                f"({self.max_message_size}), or no message of the largest size could be received"
            )
        return self


class DNS(Strict):
    """Empty `nameservers` means the system resolver configuration (/etc/resolv.conf)."""

    nameservers: list[str] = []
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    timeout: Annotated[float, Field(gt=0)] = 5.0
    trust_dnssec: bool = False


class Route(Strict):
    """Mail for `domains` (every domain when empty) goes to a smarthost instead of the MX hosts."""

    domains: list[str] = []
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    starttls: Literal["required", "opportunistic"] = "required"
    verify_pkix: bool = True

    @field_validator("domains")
    @classmethod
    def _domains_lower(cls, domains: list[str]) -> list[str]:
        return [d.lower().rstrip(".") for d in domains]


class Delivery(Strict):
    """Outgoing delivery (SPEC §4); the two ports are settings so tests reach peers on loopback."""

    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    mtasts_https_port: Annotated[int, Field(ge=1, le=65535)] = 443
    # PEM file of trusted CAs for PKIX verification; none: the system's default CAs.
    ca_bundle: FilePath | None = None
    connect_timeout: Annotated[float, Field(gt=0)] = 30.0
    command_timeout: Annotated[float, Field(gt=0)] = 300.0
    # Most one SMTP step may take as a whole: connecting (through STARTTLS and any fallback), one
    # message's transaction, however the server paces its replies.
    transaction_timeout: Annotated[float, Field(gt=0)] = 540.0
    # Networks that MTA-STS fetches and TLS report POSTs may reach although not public (app/ssrf.py).
    https_allowed_networks: list[NetworkText] = []
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 8
    # How long a claimed queue row stays held unless renewed; a run renews it every third of it while
    # it works (app/queue/lease.py), so it bounds how long a crashed worker's mail waits, not a step.
    lease_seconds: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # Most queue rows one delivery run takes for one destination (one connection).
    batch_size: Annotated[int, Field(ge=1, le=10000)] = 500
    # Days each delivery attempt (time, relay, TLS, reply) stays visible to `queue show`.
    history_days: Annotated[float, Field(gt=0, le=3650)] = 14.0
    routes: list[Route] = []


class Rejects(Strict):
    """How long each account's Rejects mailbox keeps messages (SPEC R3.1): an hourly job removes those
    older than `keep_days` and, per account, the oldest beyond the newest `keep_max`."""

    keep_days: Annotated[float, Field(gt=0, le=3650)] = 14.0
    keep_max: Annotated[int, Field(ge=1)] = 10000


class Storage(Strict):
    """Where message content is kept, the outgoing queue's (app/queue/content.py) and stored mail's
    (app/store/content.py) alike (SPEC R9.1): files under the data dir (one machine) or the database
    (any number of nodes sharing it). One setting for both: a node that needs no other node's disk
    needs neither in files."""

    content: Literal["files", "database"] = "files"


class Web(Strict):
    address: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    secret_key_file: FilePath | None = None
    # "auto": cookies are Secure when the request came over HTTPS (as a trusted proxy says).
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    # Peers whose X-Forwarded-Proto/-For are believed (a TLS reverse proxy): addresses or networks.
    trusted_proxies: list[NetworkText] = ["127.0.0.1", "::1"]


class LoginThrottle(Strict):
    """Failed logins (SMTP AUTH and web), counted per account and per client address range."""

    window: Annotated[float, Field(gt=0)] = 900.0
    delay_after: Annotated[int, Field(ge=0)] = 3
    first_delay: Annotated[float, Field(ge=0)] = 1.0
    max_delay: Annotated[float, Field(ge=0, le=60)] = 10.0
    account_limit: Annotated[int, Field(ge=1)] = 10
    network_limit: Annotated[int, Field(ge=1)] = 50
    ipv4_prefix: Annotated[int, Field(ge=8, le=32)] = 24
    ipv6_prefix: Annotated[int, Field(ge=16, le=128)] = 64


class RangeRateLimits(Strict):
    """Deliveries from one client address range (SPEC R3.1): at most so many messages and bytes per
    minute and per UTC day. 0 turns a limit off."""

    messages_per_minute: Annotated[int, Field(ge=0)]
    messages_per_day: Annotated[int, Field(ge=0)]
    bytes_per_minute: Annotated[int, Field(ge=0)]
    bytes_per_day: Annotated[int, Field(ge=0)]


def _range_rate_limits(scale: int) -> RangeRateLimits:
    """The default limits of a range: those of one address times `scale` (wider ranges hold more
    senders, e.g. a provider's outgoing pool)."""
    return RangeRateLimits(
        messages_per_minute=100 * scale,
        messages_per_day=10_000 * scale,
        bytes_per_minute=500 * 1024**2 * scale,
        bytes_per_day=5 * 1024**3 * scale,
    )


class RateLimits(Strict):
    """Inbound (MX) delivery rate limits per client address range (SPEC R3.1; app/smtpserver/ratelimit.py):
    each IPv4 /32, /26 and /21 and each IPv6 /64, /48 and /32 has limits of its own. A range's table
    names only the limits it changes; the others keep that range's defaults. Clients in
    `exempt_networks` are not limited (loopback: a local relay or proxy speaks for many senders)."""

    ipv4_32: RangeRateLimits = _range_rate_limits(1)
    ipv4_26: RangeRateLimits = _range_rate_limits(3)
    ipv4_21: RangeRateLimits = _range_rate_limits(9)
    ipv6_64: RangeRateLimits = _range_rate_limits(1)
    ipv6_48: RangeRateLimits = _range_rate_limits(3)
    ipv6_32: RangeRateLimits = _range_rate_limits(9)
    exempt_networks: list[NetworkText] = ["127.0.0.0/8", "::1"]

    @model_validator(mode="before")
    @classmethod
    def _range_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {key: _over_default(cls.model_fields.get(key), value) for key, value in data.items()}


def _over_default(field: FieldInfo | None, value: Any) -> Any:
    """A range's table merged over that range's default limits."""
    default = None if field is None else field.default
    if isinstance(default, RangeRateLimits) and isinstance(value, dict):
        return {**default.model_dump(), **value}
    return value


class Config(Strict):
    hostname: Annotated[str, Field(min_length=1)]
    data_dir: FilePath = Path("data")
    metrics_dir: FilePath | None = None  # the processes' Prometheus counts (app/metrics.py); data_dir/metrics
    database_url: str | None = None
    broker_url: str | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    no_outgoing_dmarc_reports: bool = False
    no_outgoing_tls_reports: bool = False
    outgoing_tls_reports_for_all_success: bool = False
    postmaster: Postmaster
    host_tlsrpt: MailboxTarget | None = None
    listeners: list[Listener] = []
    limits: Limits = Limits()
    imap: Imap = Imap()
    dns: DNS = DNS()
    web: Web = Web()
    login_throttle: LoginThrottle = LoginThrottle()
    ratelimits: RateLimits = RateLimits()
    delivery: Delivery = Delivery()
    rejects: Rejects = Rejects()
    storage: Storage = Storage()
    domains: dict[str, Domain] = {}
    accounts: dict[str, Account] = {}

    @field_validator("hostname")
    @classmethod
    def _hostname_lower(cls, hostname: str) -> str:
        return hostname.lower().rstrip(".")

    @field_validator("domains")
    @classmethod
    def _domains_lower(cls, domains: dict[str, Domain]) -> dict[str, Domain]:
        return {name.lower().rstrip("."): d for name, d in domains.items()}

    @model_validator(mode="after")
    def _references_exist(self) -> Config:
        for name, account in self.accounts.items():
            for address in account.addresses:
                domain = address.rpartition("@")[2]
                if domain not in self.domains:
                    raise ValueError(
                        f"key {toml_key('accounts', name, 'addresses')!r}: {address!r} is in domain "
                        f"{domain!r}, which is not in [domains] (add [domains.{json.dumps(domain)}])"
                    )
        targets: dict[str, MailboxTarget | Postmaster | None] = {
            "postmaster": self.postmaster,
            "host_tlsrpt": self.host_tlsrpt,
        }
        for dname, settings in self.domains.items():
            targets[toml_key("domains", dname, "dmarc_reports")] = settings.dmarc_reports
            targets[toml_key("domains", dname, "tls_reports")] = settings.tls_reports
        for key, target in targets.items():
            if target is not None and target.account not in self.accounts:
                known = ", ".join(sorted(self.accounts)) or "none"
                raise ValueError(
                    f"key '{key}.account': account {target.account!r} is not in [accounts] "
                    f"(configured: {known})"
                )
        return self

    @model_validator(mode="after")
    def _one_listener_per_port(self) -> Config:
        """Two sockets on one port (the same address, or a wildcard one) make the second process or
        listener exit at start with "address in use"; say so when the config is read."""
        endpoints = [(toml_key("listeners", i), x.address, x.port) for i, x in enumerate(self.listeners)]
        endpoints.append(("web", self.web.address, self.web.port))
        for i, (key, address, port) in enumerate(endpoints):
            for other, other_address, other_port in endpoints[:i]:
                if port != 0 and port == other_port and _addresses_overlap(address, other_address):
                    raise ValueError(
                        f"keys {other!r} and {key!r} both listen on port {port} "
                        f"({other_address} and {address}): give each its own address or port"
                    )
        return self

    # Derived settings; kept here so every process agrees on them.

    @property
    def smtp_listeners(self) -> list[Listener]:
        """The [[listeners]] `postwarden smtp` binds."""
        return [x for x in self.listeners if x.kind in SMTP_KINDS]

    @property
    def imap_listeners(self) -> list[Listener]:
        """The [[listeners]] `postwarden imap` binds."""
        return [x for x in self.listeners if x.kind in IMAP_KINDS]

    @property
    def resolved_database_url(self) -> str:
        return (
            os.environ.get("POSTWARDEN_DATABASE_URL")
            or self.database_url
            or f"sqlite:///{self.data_dir / 'postwarden.db'}"
        )

    @property
    def resolved_metrics_dir(self) -> Path:
        return self.metrics_dir or self.data_dir / "metrics"

    @property
    def resolved_broker_url(self) -> str:
        return os.environ.get("POSTWARDEN_BROKER_URL") or self.broker_url or "filesystem://"

    def account_for_address(self, address: str) -> tuple[str, str] | None:
        """(account name, mailbox) for a local address, including the special reporting addresses."""
        return self.address_index.get(normalize_address(address))

    @cached_property
    def address_index(self) -> dict[str, tuple[str, str]]:
        index: dict[str, tuple[str, str]] = {}
        for name, account in self.accounts.items():
            for address in account.addresses:
                index[address] = (name, account.inbox)
        # RFC 5321 4.5.1: postmaster must be accepted for every domain we receive for.
        postmaster = MailboxTarget(
            account=self.postmaster.account, localpart="postmaster", mailbox=self.postmaster.mailbox
        )
        specials: list[tuple[str, MailboxTarget | None]] = [
            (self.hostname, self.host_tlsrpt),
            (self.hostname, postmaster),
        ]
        for dname, d in self.domains.items():
            specials += [(dname, d.dmarc_reports), (dname, d.tls_reports), (dname, postmaster)]
        for domain, target in specials:
            if target is not None:
                index.setdefault(f"{target.localpart}@{domain}", (target.account, target.mailbox))
        return index


def _addresses_overlap(first: str, second: str) -> bool:
    """Whether two listening addresses on one port collide: equal, or one a wildcard that covers the
    other ("0.0.0.0" every IPv4 address; "::" every address, IPv4 mapped as Linux does by default)."""
    if first == second:
        return True
    for wildcard, other in ((first, second), (second, first)):
        if wildcard == "::" or (wildcard == "0.0.0.0" and ":" not in other):
            return True
    return False


def _describe_error(error: ErrorDetails) -> str:
    key = toml_key(*error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"key {key!r} is required but missing"
    if kind == "extra_forbidden":
        return f"key {key!r} is not a known option (check its spelling; see config/postwarden.example.toml)"
    value = error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    if key:
        return f"key {key!r}: {message}{shown}"
    return message


def _resolve_paths(config: Config, base: Path) -> Config:
    """Make relative paths absolute against the config file's directory, and check files exist."""

    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    problems: list[str] = []

    def existing(p: Path, key: str) -> Path | None:
        full = resolve(p)
        if not full.exists():
            problems.append(f"key {key!r}: file {str(full)!r} does not exist")
        elif not full.is_file():
            problems.append(f"key {key!r}: {str(full)!r} is not a file")
        else:
            return full
        return None

    listeners = []
    for i, listener in enumerate(config.listeners):
        update: dict[str, Any] = {}
        if listener.tls_cert is not None and listener.tls_key is not None:
            cert = existing(listener.tls_cert, toml_key("listeners", i, "tls_cert"))
            key = existing(listener.tls_key, toml_key("listeners", i, "tls_key"))
            if cert and key:
                problems += _tls_pair_problems(cert, key, toml_key("listeners", i))
            update = {"tls_cert": resolve(listener.tls_cert), "tls_key": resolve(listener.tls_key)}
        listeners.append(listener.model_copy(update=update))
    domains = {}
    for dname, domain in config.domains.items():
        selectors = []
        for i, selector in enumerate(domain.dkim):
            key_name = toml_key("domains", dname, "dkim", i, "private_key_file")
            file = existing(selector.private_key_file, key_name)
            if file:
                problems += _dkim_key_problems(file, selector.algorithm, key_name)
            resolved = resolve(selector.private_key_file)
            selectors.append(selector.model_copy(update={"private_key_file": resolved}))
        domains[dname] = domain.model_copy(update={"dkim": selectors})
    web = config.web
    if web.secret_key_file is not None:
        web = web.model_copy(update={"secret_key_file": resolve(web.secret_key_file)})
    delivery = config.delivery
    if delivery.ca_bundle is not None:
        bundle = existing(delivery.ca_bundle, toml_key("delivery", "ca_bundle"))
        delivery = delivery.model_copy(update={"ca_bundle": bundle})
    if problems:
        raise ConfigError("\n".join(problems))
    return config.model_copy(
        update={
            "data_dir": resolve(config.data_dir),
            "metrics_dir": config.metrics_dir and resolve(config.metrics_dir),
            "listeners": listeners,
            "domains": domains,
            "web": web,
            "delivery": delivery,
        }
    )


def _tls_pair_problems(cert: Path, key: Path, listener_key: str) -> list[str]:
    """Both files parse and the key belongs to the certificate, as the listener will need at start."""
    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
    except (ValueError, OSError):
        return [f"key '{listener_key}.tls_cert': {str(cert)!r} is not a PEM certificate (chain)"]
    try:
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        return [f"key '{listener_key}.tls_key': {str(key)!r} is not an unencrypted PEM private key"]
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as e:
        return [
            f"key '{listener_key}.tls_key': {str(key)!r} is not the private key of tls_cert "
            f"{str(cert)!r} ({e.reason or e})"
        ]
    return []


def _dkim_key_problems(file: Path, algorithm: Literal["ed25519", "rsa"], key_name: str) -> list[str]:
    try:
        load_private_key(file.read_bytes(), algorithm)
    except (DKIMKeyError, OSError) as e:
        return [f"key {key_name!r}: {str(file)!r}: {e}"]
    return []


def config_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("POSTWARDEN_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: str | Path | None = None) -> Config:
    """Read, validate and return the configuration; raise ConfigError with every problem found."""
    file = config_path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: configuration file not found (create one with `postwarden quickstart you@example.org`)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: not valid TOML: {e}") from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        lines = [f"{file}: {_describe_error(err)}" for err in e.errors()]
        raise ConfigError("\n".join(lines)) from None
    try:
        return _resolve_paths(config, file.resolve().parent)
    except ConfigError as e:
        raise ConfigError("\n".join(f"{file}: {line}" for line in str(e).splitlines())) from None
