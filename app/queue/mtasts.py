"""MTA-STS (RFC 8461): which policy of a recipient domain applies, and keeping cached policies fresh.

`policy_for_domain` is what a delivery calls: it looks up `_mta-sts.<domain>` TXT, uses the cached
policy while the record's id is unchanged and the policy has not expired, fetches a new one over
HTTPS otherwise, and falls back to the cached policy when a fetch fails (RFC 8461 §3.3, §10.2).
Discovery never blocks mail by itself: without a usable policy the domain is treated as having none
(fail open, §5), and the failure is returned as an RFC 8460 result type so it can be reported.

`refresh_policies` is the background refresh (a beat task calls it): it re-fetches cached policies
once a day so they do not expire between deliveries, and removes cached `none` policies once their
`_mta-sts` record is gone (SPEC R4.3).

Here: the policy file's syntax (§3.2), MX matching (§4.1) and these decisions. The record lookup and
the HTTPS fetch with its bounds are app/queue/mtastsfetch.py; the cache table is app/queue/mtastscache.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from app.dns import Resolver
from app.models.base import utcnow
from app.queue import mtastscache
from app.queue.mtastsfetch import (
    STS_POLICY_INVALID,
    MTASTSSettings,
    PolicyError,
    RecordLookup,
    fetch_policy_text,
    lookup_record,
)

log = logging.getLogger(__name__)

MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: at most one year.
# RFC 8461 §3.3 suggests refreshing cached policies about once a day.
REFRESH_INTERVAL = timedelta(days=1)
REFRESH_CONCURRENCY = 8


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


async def fetch_policy(domain: str, resolver: Resolver, settings: MTASTSSettings) -> Policy:
    """Fetch and validate the domain's policy (app/queue/mtastsfetch.py); raises PolicyError."""
    text = await fetch_policy_text(domain, resolver, settings)
    try:
        return parse_policy(text)
    except ValueError as e:
        raise PolicyError(STS_POLICY_INVALID, f"mta-sts.{domain}: {e}") from None


# Discovery, with the cache (RFC 8461 §5.1).


def _policy(cached: mtastscache.CachedPolicy) -> Policy:
    return Policy(Mode(cached.mode), cached.max_age, cached.mx)


def _save(db_url: str, domain: str, record_id: str, policy: Policy) -> None:
    mtastscache.save_policy(db_url, domain, record_id, policy.mode.value, policy.max_age, policy.mx)


async def policy_for_domain(
    domain: str, resolver: Resolver, db_url: str, settings: MTASTSSettings
) -> MTASTSResult:
    """The MTA-STS policy to apply to a delivery to `domain` (see MTASTSResult)."""
    domain = domain.lower().rstrip(".")
    record = await lookup_record(resolver, domain)
    cached = mtastscache.cached_policy(db_url, domain)
    if record.record_id is None:
        return _without_live_record(db_url, domain, record, cached)
    if cached is not None and cached.usable and cached.record_id == record.record_id:
        return MTASTSResult(domain, _policy(cached), cached.record_id, from_cache=True)
    try:
        policy = await fetch_policy(domain, resolver, settings)
    except PolicyError as e:
        log.info("MTA-STS policy for %s not fetched: %s", domain, e)
        if cached is not None and cached.usable:
            mtastscache.note_error(db_url, domain, str(e))
            return MTASTSResult(domain, _policy(cached), cached.record_id, error=str(e), from_cache=True)
        return MTASTSResult(domain, None, record.record_id, failure=e.result_type, error=str(e))
    _save(db_url, domain, record.record_id, policy)
    return MTASTSResult(domain, policy, record.record_id)


def _without_live_record(
    db_url: str, domain: str, record: RecordLookup, cached: mtastscache.CachedPolicy | None
) -> MTASTSResult:
    """No usable TXT record: apply an unexpired cached policy (§3.3), except a `none` policy whose
    record is gone, which is deleted (R4.3): it protects nothing and would otherwise linger."""
    if cached is not None and record.absent and cached.mode == Mode.NONE:
        mtastscache.delete_policy(db_url, domain)
        return MTASTSResult(domain, None)
    if cached is not None and cached.usable:
        return MTASTSResult(domain, _policy(cached), cached.record_id, error=record.error, from_cache=True)
    return MTASTSResult(domain, None, error=record.error)


# Background refresh.


async def refresh_policies(db_url: str, resolver: Resolver, settings: MTASTSSettings) -> RefreshSummary:
    """Refresh every cached policy (the beat task's work; see the module docstring)."""
    domains = mtastscache.cached_domains(db_url)
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
    cached = mtastscache.cached_policy(db_url, domain)
    if cached is None:
        return "unchanged"
    record = await lookup_record(resolver, domain)
    if record.record_id is None:
        if (record.absent and cached.mode == Mode.NONE) or not cached.usable:
            mtastscache.delete_policy(db_url, domain)
            return "deleted"
        mtastscache.note_error(db_url, domain, record.error or "no MTA-STS record")
        return "unchanged"
    if cached.record_id == record.record_id and utcnow() - cached.fetched < REFRESH_INTERVAL:
        return "unchanged"
    try:
        policy = await fetch_policy(domain, resolver, settings)
    except PolicyError as e:
        if not cached.usable:
            mtastscache.delete_policy(db_url, domain)
            return "deleted"
        log.info("MTA-STS policy for %s not refreshed, cached one kept: %s", domain, e)
        mtastscache.note_error(db_url, domain, str(e))
        return "failed"
    _save(db_url, domain, record.record_id, policy)
    return "refreshed"
