"""MTA-STS (RFC 8461): discover, fetch, validate and cache a recipient domain's policy.

`policy_for_domain` is what a delivery calls: it looks up `_mta-sts.<domain>` TXT, uses the cached
policy while the record's id is unchanged and the policy has not expired, fetches a new one over
HTTPS otherwise, and falls back to the cached policy when a fetch fails (RFC 8461 §3.3, §10.2).
Discovery never blocks mail by itself: without a usable policy the domain is treated as having none
(fail open, §5), and the failure is returned as an RFC 8460 result type so it can be reported.

`refresh_policies` is the background refresh (a beat task calls it): it re-fetches cached policies
once a day so they do not expire between deliveries, and removes cached `none` policies once their
`_mta-sts` record is gone (SPEC R4.3).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import httpx
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from app.config import Delivery
from app.db import session_scope
from app.dns import DNSError, Resolver
from app.models.base import utcnow
from app.models.mtasts import MTASTSPolicy
from app.ssrf import AddressRefused, allowed_addresses

log = logging.getLogger(__name__)

# RFC 8460 §4.3.2.2 result types of policy discovery.
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_POLICY_INVALID = "sts-policy-invalid"
STS_WEBPKI_INVALID = "sts-webpki-invalid"

MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 §3.3 suggests 64 KiB.
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: at most one year.
POLICY_PATH = "/.well-known/mta-sts.txt"
# RFC 8461 §3.3 suggests refreshing cached policies about once a day.
REFRESH_INTERVAL = timedelta(days=1)
REFRESH_CONCURRENCY = 8


@dataclass(frozen=True)
class MTASTSSettings:
    """How policies are fetched. Tests pass the trustme CA and the loopback server's port."""

    # PEM file of trusted CAs; None uses the system trust store (production).
    ca_bundle: str | None = None
    https_port: int = 443
    # Whole fetch (connect, TLS, headers, body); RFC 8461 §3.3 suggests one minute.
    timeout: float = 60.0
    # Networks the policy host may be in although not public (app/ssrf.py); tests allow loopback.
    allowed_networks: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, delivery: Delivery) -> MTASTSSettings:
        """From the `[delivery]` config section (its CA bundle, policy port and allowed networks)."""
        ca_bundle = str(delivery.ca_bundle) if delivery.ca_bundle is not None else None
        return cls(
            ca_bundle=ca_bundle,
            https_port=delivery.mtasts_https_port,
            allowed_networks=tuple(delivery.https_allowed_networks),
        )


class Mode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True)
class Policy:
    """A validated policy (RFC 8461 §3.2). `mx` patterns are lower case, in policy order."""

    mode: Mode
    max_age: int
    mx: tuple[str, ...]

    def allows_mx(self, host: str) -> bool:
        """Whether an MX host name matches one of the policy's patterns (RFC 8461 §4.1)."""
        return any(host_matches_pattern(host, pattern) for pattern in self.mx)

    def lines(self) -> tuple[str, ...]:
        """The policy as RFC 8460 `policy-string` lines (known fields only, in canonical order)."""
        mx_lines = tuple(f"mx: {pattern}" for pattern in self.mx)
        return ("version: STSv1", f"mode: {self.mode}", *mx_lines, f"max_age: {self.max_age}")


@dataclass(frozen=True)
class MTASTSResult:
    """What policy discovery found for a recipient domain.

    `policy` is the policy to apply (freshly fetched or cached, never expired), or None: deliver as
    if the domain had no MTA-STS. `failure` is the RFC 8460 result type of a discovery failure that
    left the domain without a policy (to be recorded for the domain's `sts` policy); it is None when
    there was nothing to find or a cached policy could still be applied. `error` describes any
    problem met, including a failed refresh that fell back to the cached policy (for logs).
    """

    domain: str
    policy: Policy | None
    record_id: str | None = None
    failure: str | None = None
    error: str | None = None
    from_cache: bool = False

    @property
    def policy_string(self) -> tuple[str, ...]:
        """RFC 8460 `policy-string` lines of the applied policy (empty without one)."""
        return self.policy.lines() if self.policy is not None else ()


class PolicyError(Exception):
    """A policy could not be fetched or is invalid; `result_type` is its RFC 8460 result type."""

    def __init__(self, result_type: str, detail: str) -> None:
        super().__init__(detail)
        self.result_type = result_type


@dataclass(frozen=True)
class RecordLookup:
    """The `_mta-sts` TXT lookup: the record's id, or why there is none usable.

    `absent` is True only when DNS said for sure that no MTA-STS record exists (not on errors).
    """

    record_id: str | None
    absent: bool = False
    error: str | None = None


@dataclass(frozen=True)
class RefreshSummary:
    checked: int = 0
    refreshed: int = 0
    deleted: int = 0
    failed: int = 0


# Host name matching, shared with DANE-TA reference identifiers (RFC 7672 §3.2.3).


def host_matches_pattern(host: str, pattern: str) -> bool:
    """Case-insensitive match; a leading `*.` stands for exactly one whole label (RFC 8461 §4.1)."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, parent = host.partition(".")
        return bool(label and dot) and parent == pattern[2:]
    return host == pattern


# The TXT record (RFC 8461 §3.1).

_RECORD_START = re.compile(r"v=STSv1[ \t]*;")
_RECORD_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXTENSION_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")


def parse_record(text: str) -> str:
    """The `id` of a `v=STSv1; id=...` record; ValueError says what is wrong."""
    if not _RECORD_START.match(text):
        raise ValueError("does not start with v=STSv1;")
    fields = [f.strip(" \t") for f in text.split(";")[1:]]
    if fields and fields[-1] == "":
        fields.pop()  # a trailing separator is allowed
    record_id: str | None = None
    for field in fields:
        name, eq, value = field.partition("=")
        if name == "id" and eq and _RECORD_ID.fullmatch(value):
            if record_id is not None:
                raise ValueError("more than one id field")
            record_id = value
        elif name == "id":
            raise ValueError(f"invalid id {value!r} (1 to 32 letters and digits)")
        elif not (eq and _EXTENSION_NAME.fullmatch(name) and _EXTENSION_VALUE.fullmatch(value)):
            raise ValueError(f"invalid field {field!r}")
    if record_id is None:
        raise ValueError("no id field")
    return record_id


async def lookup_record(resolver: Resolver, domain: str) -> RecordLookup:
    """Exactly one valid MTA-STS record must exist; otherwise the domain has no live policy (§3.1)."""
    try:
        answer = await resolver.txt(f"_mta-sts.{domain}")
    except DNSError as e:
        return RecordLookup(None, error=f"DNS lookup of _mta-sts.{domain}: {e}")
    candidates = [text for text in answer.records if _RECORD_START.match(text)]
    if not candidates:
        return RecordLookup(None, absent=True)
    if len(candidates) > 1:
        return RecordLookup(None, error=f"_mta-sts.{domain} has {len(candidates)} MTA-STS records")
    try:
        return RecordLookup(parse_record(candidates[0]))
    except ValueError as e:
        return RecordLookup(None, error=f"_mta-sts.{domain} record {candidates[0]!r}: {e}")


# The policy file (RFC 8461 §3.2).

# The value is taken whole and stripped after: a lazy `(.*?)[ \t]*` is quadratic in a run of blanks.
_POLICY_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):(.*)")
_MX_PATTERN = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_SINGLE_FIELDS = ("version", "mode", "max_age")


def parse_policy(text: str) -> Policy:
    """Validate a policy file; ValueError names the offending line or field."""
    single: dict[str, str] = {}
    mx: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        match = _POLICY_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"line {number} is not 'key: value': {line[:80]!r}")
        key, value = match[1], match[2].strip(" \t")
        if key == "mx":
            mx.append(_mx_pattern(value))
        elif key in _SINGLE_FIELDS:
            if key in single:
                raise ValueError(f"field {key!r} given more than once")
            single[key] = value
        # Unknown fields are ignored (§3.2).
    return _policy_from_fields(single, mx)


def _mx_pattern(value: str) -> str:
    pattern = value.lower()
    if not _MX_PATTERN.fullmatch(pattern):
        raise ValueError(f"invalid mx pattern {value!r}")
    return pattern


def _policy_from_fields(fields: dict[str, str], mx: list[str]) -> Policy:
    if fields.get("version") != "STSv1":
        raise ValueError(f"version must be STSv1, not {fields.get('version')!r}")
    try:
        mode = Mode(fields.get("mode", ""))
    except ValueError:
        raise ValueError(f"mode must be enforce, testing or none, not {fields.get('mode')!r}") from None
    max_age_text = fields.get("max_age", "")
    if not re.fullmatch(r"[0-9]{1,10}", max_age_text):
        raise ValueError(f"max_age must be 1 to 10 digits, not {max_age_text!r}")
    if mode != Mode.NONE and not mx:
        raise ValueError(f"a {mode} policy needs at least one mx pattern")
    # Above one year is out of spec (§3.2); we cap it rather than drop the policy's protection.
    return Policy(mode, min(int(max_age_text), MAX_AGE_LIMIT), tuple(mx))


# Fetching over HTTPS (RFC 8461 §3.3).


async def fetch_policy(domain: str, resolver: Resolver, settings: MTASTSSettings) -> Policy:
    """Fetch and validate `https://mta-sts.<domain>/.well-known/mta-sts.txt`; raises PolicyError.

    The host name is resolved with our resolver and the connection made to its address, with SNI
    and certificate verification for `mta-sts.<domain>`. No redirects, no proxies, no caching. The
    recipient domain chooses the host, so only its public addresses are used (app/ssrf.py).
    """
    host = f"mta-sts.{domain}"
    try:
        addresses = await resolver.ips(host)
    except DNSError as e:
        raise PolicyError(STS_POLICY_FETCH_ERROR, f"resolving {host}: {e}") from None
    if not addresses:
        raise PolicyError(STS_POLICY_FETCH_ERROR, f"{host} has no address")
    try:
        addresses = allowed_addresses(host, addresses, settings.allowed_networks)
    except AddressRefused as e:
        raise PolicyError(STS_POLICY_FETCH_ERROR, str(e)) from None
    try:
        async with asyncio.timeout(settings.timeout):
            body = await _fetch_first_reachable(host, addresses, settings)
    except TimeoutError:
        raise PolicyError(
            STS_POLICY_FETCH_ERROR, f"{host}: no complete policy within {settings.timeout} s"
        ) from None
    try:
        return parse_policy(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(STS_POLICY_INVALID, f"{host}: policy is not UTF-8 text") from None
    except ValueError as e:
        raise PolicyError(STS_POLICY_INVALID, f"{host}: {e}") from None


async def _fetch_first_reachable(host: str, addresses: Sequence[str], settings: MTASTSSettings) -> bytes:
    context = ssl.create_default_context(cafile=settings.ca_bundle)
    async with httpx.AsyncClient(
        verify=context, follow_redirects=False, trust_env=False, timeout=settings.timeout
    ) as client:
        last_error = ""
        for address in addresses:
            try:
                return await _fetch_from(client, host, address, settings.https_port)
            except httpx.RequestError as e:
                if _certificate_error(e) is not None:
                    raise PolicyError(
                        STS_WEBPKI_INVALID, f"{host} ({address}): {_certificate_error(e)}"
                    ) from None
                last_error = f"{host} ({address}): {type(e).__name__}: {e}"
        raise PolicyError(STS_POLICY_FETCH_ERROR, last_error or f"{host}: no address reachable")


async def _fetch_from(client: httpx.AsyncClient, host: str, address: str, port: int) -> bytes:
    literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    url = f"https://{literal}:{port}{POLICY_PATH}"
    headers = {"Host": host if port == 443 else f"{host}:{port}", "Accept": "text/plain"}
    async with client.stream("GET", url, headers=headers, extensions={"sni_hostname": host}) as response:
        _check_response(host, response)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_POLICY_SIZE:
                raise PolicyError(
                    STS_POLICY_FETCH_ERROR, f"{host}: policy larger than {MAX_POLICY_SIZE} bytes"
                )
        return bytes(body)


def _check_response(host: str, response: httpx.Response) -> None:
    if response.is_redirect:
        where = response.headers.get("location", "?")
        raise PolicyError(
            STS_POLICY_FETCH_ERROR, f"{host}: HTTP {response.status_code} redirect to {where} not followed"
        )
    if response.status_code != 200:
        raise PolicyError(STS_POLICY_FETCH_ERROR, f"{host}: HTTP status {response.status_code}")
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "text/plain":
        raise PolicyError(
            STS_POLICY_INVALID, f"{host}: content type {media_type or 'missing'}, not text/plain"
        )
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_POLICY_SIZE:
        raise PolicyError(
            STS_POLICY_FETCH_ERROR, f"{host}: policy of {length} bytes exceeds {MAX_POLICY_SIZE}"
        )


def _certificate_error(error: BaseException) -> str | None:
    """The certificate verification failure inside an httpx error, if that is what it was."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


# The cache (RFC 8461 §5.1) and discovery.


def _cached(db_url: str, domain: str) -> MTASTSPolicy | None:
    with session_scope(db_url) as session:
        return session.scalar(select(MTASTSPolicy).where(MTASTSPolicy.domain == domain))


def _row_policy(row: MTASTSPolicy) -> Policy:
    return Policy(Mode(row.mode), row.max_age, tuple(p for p in row.mx.split("\n") if p))


def _usable(row: MTASTSPolicy | None) -> bool:
    return row is not None and row.expires > utcnow()


def _save_policy(db_url: str, domain: str, record_id: str, policy: Policy) -> None:
    """Insert or replace the domain's cached policy."""
    try:
        _write_policy(db_url, domain, record_id, policy)
    except IntegrityError:
        # Another worker inserted the row between our select and insert: update theirs.
        _write_policy(db_url, domain, record_id, policy)


def _write_policy(db_url: str, domain: str, record_id: str, policy: Policy) -> None:
    with session_scope(db_url) as session:
        row = session.scalar(select(MTASTSPolicy).where(MTASTSPolicy.domain == domain))
        if row is None:
            row = MTASTSPolicy(domain=domain)
            session.add(row)
        now = utcnow()
        row.record_id, row.mode, row.max_age = record_id, policy.mode.value, policy.max_age
        row.mx = "\n".join(policy.mx)
        row.fetched, row.checked, row.expires = now, now, now + timedelta(seconds=policy.max_age)
        row.last_error = None


def _note_error(db_url: str, domain: str, error: str) -> None:
    with session_scope(db_url) as session:
        row = session.scalar(select(MTASTSPolicy).where(MTASTSPolicy.domain == domain))
        if row is not None:
            row.checked, row.last_error = utcnow(), error


def _delete_policy(db_url: str, domain: str) -> None:
    with session_scope(db_url) as session:
        session.execute(delete(MTASTSPolicy).where(MTASTSPolicy.domain == domain))


async def policy_for_domain(
    domain: str, resolver: Resolver, db_url: str, settings: MTASTSSettings
) -> MTASTSResult:
    """The MTA-STS policy to apply to a delivery to `domain` (see MTASTSResult)."""
    domain = domain.lower().rstrip(".")
    record = await lookup_record(resolver, domain)
    row = _cached(db_url, domain)
    if record.record_id is None:
        return _without_live_record(db_url, domain, record, row)
    if row is not None and _usable(row) and row.record_id == record.record_id:
        return MTASTSResult(domain, _row_policy(row), row.record_id, from_cache=True)
    try:
        policy = await fetch_policy(domain, resolver, settings)
    except PolicyError as e:
        log.info("MTA-STS policy for %s not fetched: %s", domain, e)
        if row is not None and _usable(row):
            _note_error(db_url, domain, str(e))
            return MTASTSResult(domain, _row_policy(row), row.record_id, error=str(e), from_cache=True)
        return MTASTSResult(domain, None, record.record_id, failure=e.result_type, error=str(e))
    _save_policy(db_url, domain, record.record_id, policy)
    return MTASTSResult(domain, policy, record.record_id)


def _without_live_record(
    db_url: str, domain: str, record: RecordLookup, row: MTASTSPolicy | None
) -> MTASTSResult:
    """No usable TXT record: apply an unexpired cached policy (§3.3), except a `none` policy whose
    record is gone, which is deleted (R4.3): it protects nothing and would otherwise linger."""
    if row is not None and record.absent and row.mode == Mode.NONE:
        _delete_policy(db_url, domain)
        return MTASTSResult(domain, None)
    if row is not None and _usable(row):
        return MTASTSResult(domain, _row_policy(row), row.record_id, error=record.error, from_cache=True)
    return MTASTSResult(domain, None, error=record.error)


# Background refresh.


async def refresh_policies(db_url: str, resolver: Resolver, settings: MTASTSSettings) -> RefreshSummary:
    """Refresh every cached policy (the beat task's work; see the module docstring)."""
    with session_scope(db_url) as session:
        domains = list(session.scalars(select(MTASTSPolicy.domain).order_by(MTASTSPolicy.domain)))
    limit = asyncio.Semaphore(REFRESH_CONCURRENCY)

    async def refresh_one(domain: str) -> str:
        async with limit:
            return await _refresh_domain(db_url, resolver, settings, domain)

    outcomes = await asyncio.gather(*(refresh_one(d) for d in domains))
    return RefreshSummary(
        checked=len(outcomes),
        refreshed=outcomes.count("refreshed"),
        deleted=outcomes.count("deleted"),
        failed=outcomes.count("failed"),
    )


async def _refresh_domain(db_url: str, resolver: Resolver, settings: MTASTSSettings, domain: str) -> str:
    """One cached domain: "refreshed", "deleted", "failed" or "unchanged"."""
    row = _cached(db_url, domain)
    if row is None:
        return "unchanged"
    record = await lookup_record(resolver, domain)
    if record.record_id is None:
        if (record.absent and row.mode == Mode.NONE) or not _usable(row):
            _delete_policy(db_url, domain)
            return "deleted"
        _note_error(db_url, domain, record.error or "no MTA-STS record")
        return "unchanged"
    if row.record_id == record.record_id and utcnow() - row.fetched < REFRESH_INTERVAL:
        return "unchanged"
    try:
        policy = await fetch_policy(domain, resolver, settings)
    except PolicyError as e:
        if not _usable(row):
            _delete_policy(db_url, domain)
            return "deleted"
        log.info("MTA-STS policy for %s not refreshed, cached one kept: %s", domain, e)
        _note_error(db_url, domain, str(e))
        return "failed"
    _save_policy(db_url, domain, record.record_id, policy)
    return "refreshed"
