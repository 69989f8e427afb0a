"""A live TLS policy probe: what delivery to a domain would do right now, without sending mail.

`probe` walks the path of a delivery with the functions delivery itself calls, so it cannot say
something delivery would not do: the hosts (`routes.resolve_destination`), the domain's MTA-STS
policy, each host's DANE TLSA lookup (`dane.dane_for_mx`), the TLS decision per host
(`tlspolicy.decide_tls`) and, with `connect`, the session opening of the SMTP client
(`smtpclient.open_session`: EHLO, STARTTLS, certificate checks, EHLO again), then QUIT.

Differences from a delivery, on purpose: the MTA-STS policy is fetched fresh and decided on as
`mtasts.policy_for_domain` does with an empty cache, and the cache is not written: the probe shows
what the domain publishes now. A delivery applies the cached policy instead while the record's id is
unchanged (or when the fetch fails), so the cached policy is shown beside it (`MTASTSProbe.cached`)
for the operator to compare. Address lookups are made for every host, also those a
delivery would skip, so the output shows them; no TLS result is recorded for reports.

Everything from DNS or the network is data: cut to TEXT_MAX characters (a reason to ERROR_MAX) and
only ever put into fields of the result; escaping is the job of whoever shows it (the CLI's `echo`,
JSON, the web page's templates). Bounds: at most MAX_HOSTS MX hosts, at most MAX_CONNECTIONS
connection attempts, each session opening within the delivery's connect, command and transaction
timeouts (capped at CONNECTION_TIMEOUT), and the whole probe within PROBE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC

from cryptography import x509
from sqlalchemy.exc import SQLAlchemyError

from app.config import Config
from app.dns import DNSTemporaryError, Resolver
from app.queue import mtastscache
from app.queue.dane import DANELookup, dane_for_mx
from app.queue.mtasts import MTASTSResult, fetch_policy
from app.queue.mtastsfetch import MTASTSSettings, PolicyError, lookup_record
from app.queue.routes import Destination, Hop, host_addresses, resolve_destination
from app.queue.smtpclient import ClientOptions, DeliveryError, Session, Target, open_session
from app.queue.tlspolicy import TLSDecision, TLSSettings, decide_tls

MAX_HOSTS = 10
MAX_CONNECTIONS = 10
MAX_ADDRESSES = 8  # shown per host; a connection tries them in order, as delivery does
TEXT_MAX = 255  # a host name, a record, a certificate name
ERROR_MAX = 500  # an error message (which quotes names and replies)
CONNECTION_TIMEOUT = 60.0  # seconds at most for one session opening, whatever the config allows
PROBE_TIMEOUT = 300.0
# TLSA records are published for port 25 (RFC 7672 §2.2), whatever port we connect to (as delivery).
DANE_PORT = 25


def _text(value: object, limit: int = TEXT_MAX) -> str:
    """Outside text as a field value: a string, at most `limit` characters."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class MTASTSProbe:
    """The domain's MTA-STS state as fetched now. `failure` is the RFC 8460 result type of a failed
    discovery (delivery then fails open), `error` what went wrong, for either."""

    record_id: str | None
    mode: str | None
    mx: tuple[str, ...]
    max_age: int | None
    failure: str | None
    error: str | None
    # The cached policy a delivery may apply instead, in words; None: nothing cached.
    cached: str | None = None


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    not_after: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class ConnectionProbe:
    """One test session. `starttls`: "negotiated", "not offered" (or refused: see `tls_failure`),
    "failed" (handshake or verification), "not tried"; `verification` says what was checked."""

    address: str
    port: int
    opened: bool
    server_name: str | None
    starttls: str
    tls_version: str | None
    verification: str
    certificate: CertificateInfo | None
    tls_failure: str | None
    error: str | None


@dataclass(frozen=True)
class HostProbe:
    """One MX host: its addresses, DANE state, and the TLS decision delivery would make for it."""

    host: str
    port: int
    addresses: tuple[str, ...]
    dane: str
    tlsa: tuple[str, ...]
    use_host: bool
    tls_mode: str
    basis: str
    failures: tuple[str, ...]
    error: str | None
    connection: ConnectionProbe | None = None


@dataclass(frozen=True)
class ProbeResult:
    """`error` set: delivery has nowhere to go (or the probe ran out of time); the rest is partial."""

    domain: str
    error: str | None
    route: str | None
    mx_authentic: bool
    implicit_mx: bool
    mtasts: MTASTSProbe | None
    hosts: tuple[HostProbe, ...]
    hosts_left_out: int = 0


async def probe(config: Config, resolver: Resolver, domain: str, *, connect: bool) -> ProbeResult:
    """What delivery to `domain` would do now; with `connect`, a test session with each used host."""
    domain = domain.lower().rstrip(".")
    partial: list[HostProbe] = []
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            return await _probe(config, resolver, domain, connect, partial)
    except TimeoutError:
        error = f"probe not finished within {PROBE_TIMEOUT:g} s"
        return ProbeResult(domain, error, None, False, False, None, tuple(partial))


async def _probe(
    config: Config, resolver: Resolver, domain: str, connect: bool, hosts: list[HostProbe]
) -> ProbeResult:
    try:
        destination = await resolve_destination(config.delivery, resolver, domain)
    except DeliveryError as e:
        return ProbeResult(domain, _text(e, ERROR_MAX), None, False, False, None, ())
    route = _route(destination)
    settings = MTASTSSettings.from_config(config.delivery)
    sts = None if route else await _fresh_mtasts(domain, resolver, settings)
    cached = None if route else await asyncio.to_thread(_cached_text, config.resolved_database_url, domain)
    options = _client_options(config)
    connections = _Budget(MAX_CONNECTIONS if connect else 0)
    for hop in destination.hops[:MAX_HOSTS]:
        hosts.append(await _probe_host(resolver, destination, hop, sts, options, connections))
    return ProbeResult(
        domain,
        None,
        route,
        destination.mx_authentic,
        destination.implicit_mx,
        _mtasts_probe(sts, cached),
        tuple(hosts),
        max(0, len(destination.hops) - MAX_HOSTS),
    )


def _route(destination: Destination) -> str | None:
    """The configured smarthost route, if delivery uses one (the domain's policies then do not apply)."""
    hop = destination.hops[0]
    return f"{hop.host}:{hop.port}" if hop.tls is not None else None


async def _fresh_mtasts(domain: str, resolver: Resolver, settings: MTASTSSettings) -> MTASTSResult:
    """`mtasts.policy_for_domain` without its cache: the record, then the policy fetched over HTTPS."""
    record = await lookup_record(resolver, domain)
    if record.record_id is None:
        return MTASTSResult(domain, None, error=record.error)
    try:
        policy = await fetch_policy(domain, resolver, settings)
    except PolicyError as e:
        return MTASTSResult(domain, None, record.record_id, failure=e.result_type, error=str(e))
    return MTASTSResult(domain, policy, record.record_id)


def _cached_text(db_url: str, domain: str) -> str | None:
    """The domain's cached policy in words (None: none cached); a cache that cannot be read says so."""
    try:
        cached = mtastscache.cached_policy(db_url, domain)
    except SQLAlchemyError as e:
        return _text(f"the cache cannot be read: {type(e).__name__}", ERROR_MAX)
    if cached is None:
        return None
    state = "expires" if cached.usable else "expired"
    mx = ", ".join(cached.mx) or "-"
    return _text(
        f"id {cached.record_id}, mode {cached.mode}, mx {mx}, {state} {cached.expires:%Y-%m-%d %H:%M} UTC"
    )


def _mtasts_probe(sts: MTASTSResult | None, cached: str | None) -> MTASTSProbe | None:
    if sts is None:
        return None
    policy = sts.policy
    return MTASTSProbe(
        record_id=sts.record_id,
        mode=policy.mode.value if policy else None,
        mx=policy.mx if policy else (),
        max_age=policy.max_age if policy else None,
        failure=sts.failure,
        error=_text(sts.error, ERROR_MAX) if sts.error else None,
        cached=cached,
    )


def _client_options(config: Config) -> ClientOptions:
    delivery = config.delivery
    return ClientOptions(
        helo=config.hostname,
        connect_timeout=min(delivery.connect_timeout, CONNECTION_TIMEOUT),
        command_timeout=min(delivery.command_timeout, CONNECTION_TIMEOUT),
        transaction_timeout=min(delivery.transaction_timeout, CONNECTION_TIMEOUT),
        ca_bundle=delivery.ca_bundle,
    )


class _Budget:
    """Connection attempts left for the whole probe."""

    def __init__(self, attempts: int) -> None:
        self.left = attempts

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def _probe_host(
    resolver: Resolver,
    destination: Destination,
    hop: Hop,
    sts: MTASTSResult | None,
    options: ClientOptions,
    connections: _Budget,
) -> HostProbe:
    host = _text(hop.host)
    address_error: str | None = None
    try:
        addresses = tuple(_text(a) for a in (await host_addresses(resolver, hop.host))[:MAX_ADDRESSES])
    except DeliveryError as e:
        addresses, address_error = (), _text(e, ERROR_MAX)
    if not addresses and address_error is None:
        address_error = f"{host} has no address"
    if hop.tls is not None:
        probe = HostProbe(
            host,
            hop.port,
            addresses,
            error=address_error,
            dane="not looked up (smarthost route)",
            tlsa=(),
            use_host=True,
            tls_mode=tls_mode(hop.tls),
            basis="configured route",
            failures=(),
        )
        return await _with_connection(probe, hop.tls, options, connections)
    try:
        dane = await dane_for_mx(resolver, hop.host, destination.mx_authentic, DANE_PORT)
    except DNSTemporaryError as e:
        # Delivery skips the host in this attempt (a temporary failure), as here.
        return HostProbe(
            host,
            hop.port,
            addresses,
            error=_text(f"TLSA lookup for {hop.host}: {e}", ERROR_MAX),
            dane="lookup failed",
            tlsa=(),
            use_host=False,
            tls_mode="not used",
            basis="TLSA lookup failed: the host is skipped for now",
            failures=(),
        )
    decision = decide_tls(destination.domain, hop.host, destination.mx_authentic, sts, dane)
    probe = HostProbe(
        host,
        hop.port,
        addresses,
        error=address_error,
        dane=_dane_text(dane, destination.mx_authentic, resolver.trust_dnssec),
        tlsa=tuple(_text(r.text()) for r in dane.records) if dane else (),
        use_host=decision.use_host,
        tls_mode=tls_mode(decision.settings) if decision.use_host else "not used",
        basis=_text(decision.basis, ERROR_MAX),
        failures=_failures(decision),
    )
    if not decision.use_host:
        return probe
    return await _with_connection(probe, decision.settings, options, connections)


def _dane_text(dane: DANELookup | None, mx_authentic: bool, trust_dnssec: bool) -> str:
    if dane is not None:
        return _text(f"{dane.status.value}: {dane.detail}" if dane.detail else dane.status.value, ERROR_MAX)
    if not trust_dnssec:
        return "not looked up (the resolver is not trusted for DNSSEC: dns.trust_dnssec)"
    return "not looked up (MX answer not DNSSEC-authenticated: insecure)" if not mx_authentic else "none"


def _failures(decision: TLSDecision) -> tuple[str, ...]:
    failures = (decision.domain_failure, decision.host_failure)
    return tuple(_text(f"{f.result_type}: {f.reason}", ERROR_MAX) for f in failures if f is not None)


def tls_mode(settings: TLSSettings) -> str:
    """The TLS settings of one attempt in words (what STARTTLS and the certificate checks must do)."""
    tls = "TLS required" if settings.starttls_required else "TLS if offered"
    if settings.verify_dane:
        check = f"certificate checked against TLSA ({settings.server_name})"
    elif settings.verify_pkix:
        check = f"certificate checked by PKIX for {settings.server_name}"
    else:
        check = "certificate not checked"
    after = ", failures only recorded" if settings.ignore_verification_errors else ""
    return _text(f"{tls}, {check}{after}", ERROR_MAX)


# Test connections.


async def _with_connection(
    probe: HostProbe, settings: TLSSettings, options: ClientOptions, connections: _Budget
) -> HostProbe:
    """The host's probe with a test session: addresses in order until one opens, as delivery does."""
    connection = None
    for address in probe.addresses:
        if not connections.take():
            break
        target = Target(probe.host, address, probe.port)
        # open_session blocks (smtplib) within its own deadline; a thread keeps the loop free.
        connection = await asyncio.to_thread(_test_session, target, settings, options)
        if connection.opened:
            break
    return replace(probe, connection=connection) if connection else probe


def _test_session(target: Target, settings: TLSSettings, options: ClientOptions) -> ConnectionProbe:
    """Open a session exactly as delivery does (EHLO, STARTTLS, checks, EHLO), then QUIT."""
    try:
        session = open_session(target, settings, options)
    except DeliveryError as e:
        info = e.session_info
        failure = e.tls_failure
        failure_text = _text(f"{failure.result_type}: {failure.reason}", ERROR_MAX) if failure else None
        return ConnectionProbe(
            target.ip,
            target.port,
            False,
            _text(info.receiving_helo) if info and info.receiving_helo else None,
            _starttls_state(failure.result_type, settings) if failure else "not tried",
            info.tls_version if info else None,
            f"failed: {failure_text}" if failure_text else "not checked",
            None,
            failure_text,
            _text(e, ERROR_MAX),
        )
    try:
        return _opened(target, settings, session)
    finally:
        session.close()


def _opened(target: Target, settings: TLSSettings, session: Session) -> ConnectionProbe:
    info = session.info
    failure = info.tls_failure
    failure_text = _text(f"{failure.result_type}: {failure.reason}", ERROR_MAX) if failure else None
    if info.tls_version is None:
        starttls, verification = _starttls_state(failure.result_type if failure else "", settings), "no TLS"
    elif failure is not None:
        starttls, verification = "negotiated", f"failed, session went on unverified: {failure_text}"
    else:
        starttls, verification = "negotiated", _verified(settings)
    chain = session.peer_chain()
    return ConnectionProbe(
        target.ip,
        target.port,
        True,
        _text(info.receiving_helo) if info.receiving_helo else None,
        starttls,
        info.tls_version,
        verification,
        _certificate(chain[0]) if chain else None,
        failure_text,
        None,
    )


def _starttls_state(result_type: str, settings: TLSSettings) -> str:
    """ "not offered" (or refused: the failure says which) when TLS was missing, else "failed"."""
    return "not offered" if result_type == settings.starttls_missing_result else "failed"


def _verified(settings: TLSSettings) -> str:
    if settings.verify_dane:
        return "ok: matches the TLSA records (DANE)"
    if settings.verify_pkix:
        return f"ok: PKIX, valid for {settings.server_name}"
    return "not checked (delivery does not verify this host's certificate)"


def _certificate(der: bytes) -> CertificateInfo | None:
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(_text(n) for n in san.get_values_for_type(x509.DNSName)[:20])
    except (x509.ExtensionNotFound, ValueError):
        names = ()
    return CertificateInfo(
        _text(certificate.subject.rfc4514_string()),
        _text(certificate.issuer.rfc4514_string()),
        certificate.not_valid_after_utc.astimezone(UTC).isoformat(),
        names,
    )
