"""MTA-STS discovery, fetch, validation and cache against the loopback DNS and a real HTTPS server."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from sqlalchemy import select, update

from app.config import Delivery
from app.db import session_scope
from app.dns import Resolver
from app.models.mtasts import MTASTSPolicy
from app.queue.mtasts import (
    MAX_AGE_LIMIT,
    Mode,
    MTASTSResult,
    Policy,
    RefreshSummary,
    host_matches_pattern,
    parse_policy,
    policy_for_domain,
    refresh_policies,
)
from app.queue.mtastsfetch import (
    MAX_POLICY_SIZE,
    STS_POLICY_FETCH_ERROR,
    STS_POLICY_INVALID,
    STS_WEBPKI_INVALID,
    MTASTSSettings,
    parse_record,
)
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import LOOPBACK_NETWORKS, HTTPSTestServer, Reply

DOMAIN = "example.org"
POLICY_HOST = f"mta-sts.{DOMAIN}"
ENFORCE = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.backup.example.net\r\nmax_age: 86400\r\n"
)
TESTING = "version: STSv1\nmode: testing\nmx: mx1.example.org\nmax_age: 604800\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"


@dataclass
class World:
    """A recipient domain's DNS, its policy host, our resolver and database, and fetch settings."""

    dns: DNSTestServer
    https: HTTPSTestServer
    resolver: Resolver
    db_url: str
    ca_file: Path
    settings: MTASTSSettings

    def publish(self, policy: str | Reply, record_id: str = "1") -> None:
        """The domain's MTA-STS record, and its policy host on loopback serving `policy`."""
        self.dns.txt(f"_mta-sts.{DOMAIN}", f"v=STSv1; id={record_id};")
        self.dns.add(POLICY_HOST, "A", "127.0.0.1")
        self.https.serve(POLICY_HOST, policy)

    def fetch_settings(self, timeout: float = 2.0, port: int | None = None) -> MTASTSSettings:
        return MTASTSSettings(
            ca_bundle=str(self.ca_file),
            https_port=port or self.https.port,
            timeout=timeout,
            allowed_networks=LOOPBACK_NETWORKS,
        )

    async def discover(self, domain: str = DOMAIN, settings: MTASTSSettings | None = None) -> MTASTSResult:
        return await policy_for_domain(domain, self.resolver, self.db_url, settings or self.settings)

    async def refresh(self) -> RefreshSummary:
        return await refresh_policies(self.db_url, self.resolver, self.settings)

    def rows(self) -> list[MTASTSPolicy]:
        with session_scope(self.db_url) as session:
            return list(session.scalars(select(MTASTSPolicy)))

    def row(self) -> MTASTSPolicy | None:
        with session_scope(self.db_url) as session:
            return session.scalar(select(MTASTSPolicy).where(MTASTSPolicy.domain == DOMAIN))

    def age(self, **columns: datetime) -> None:
        """Move the cached row's times (fetched/expires) to simulate time passing."""
        with session_scope(self.db_url) as session:
            session.execute(update(MTASTSPolicy).where(MTASTSPolicy.domain == DOMAIN).values(**columns))

    def policy_requests(self) -> int:
        return sum(1 for host, _ in self.https.requests if host == POLICY_HOST)


@pytest.fixture
def world(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    https_ca_file: Path,
) -> World:
    settings = MTASTSSettings(
        ca_bundle=str(https_ca_file),
        https_port=https_server.port,
        timeout=2.0,
        allowed_networks=LOOPBACK_NETWORKS,
    )
    return World(dns, https_server, resolver, sqlite_url, https_ca_file, settings)


# Record and policy syntax.


@pytest.mark.parametrize(
    ("text", "record_id"),
    [
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1;id=abc", "abc"),
        ("v=STSv1 ;  id=a1 ; ext=some-value;", "a1"),
        ("v=STSv1; id=" + "a" * 32, "a" * 32),
    ],
)
def test_valid_records_give_their_id(text: str, record_id: str) -> None:
    assert parse_record(text) == record_id


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("v=STSv1;", "no id"),
        ("v=STSv1; ext=1", "no id"),
        ("v=STSv1; id=" + "a" * 33, "invalid id"),
        ("v=STSv1; id=2016-08-31", "invalid id"),
        ("v=STSv1; id=1; id=2", "more than one id"),
        ("v=STSv1; id=1; bad field", "invalid field"),
        ("v=STSv1; id=1;; id2=3", "invalid field"),
        ("v=STSv2; id=1", "does not start"),
        ("id=1; v=STSv1", "does not start"),
    ],
)
def test_invalid_records_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_record(text)


def test_policy_with_crlf_unknown_fields_and_wildcards_parses() -> None:
    policy = parse_policy(ENFORCE.replace("max_age", "future_field: x=y;z\r\nmax_age"))
    assert policy == Policy(Mode.ENFORCE, 86400, ("mx1.example.org", "*.backup.example.net"))
    assert policy.lines() == (
        "version: STSv1",
        "mode: enforce",
        "mx: mx1.example.org",
        "mx: *.backup.example.net",
        "max_age: 86400",
    )


def test_policy_values_are_normalised_and_max_age_capped() -> None:
    policy = parse_policy("mode:testing\nversion: STSv1   \nmx: MX.Example.ORG\nmax_age: 9999999999")
    assert policy == Policy(Mode.TESTING, MAX_AGE_LIMIT, ("mx.example.org",))


def test_none_policy_needs_no_mx() -> None:
    assert parse_policy(NONE) == Policy(Mode.NONE, 86400, ())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mode: enforce\nmx: a.example\nmax_age: 1", "version must be STSv1"),
        ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1", "version must be STSv1"),
        ("version: STSv1\nmode: report\nmx: a.example\nmax_age: 1", "mode must be"),
        ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1", "mode must be"),
        ("version: STSv1\nmode: enforce\nmx: a.example", "max_age must be"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1", "max_age must be"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901", "max_age must be"),
        ("version: STSv1\nmode: enforce\nmax_age: 86400", "needs at least one mx"),
        ("version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 1", "more than once"),
        ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1", "invalid mx pattern"),
        ("version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 1", "invalid mx pattern"),
        ("version: STSv1\nmode: enforce\nmx: -mail.example\nmax_age: 1", "invalid mx pattern"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age 1", "line 4 is not"),
        ("<html><body>hello</body></html>", "line 1 is not"),
    ],
)
def test_invalid_policies_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_policy(text)


@pytest.mark.parametrize(
    ("host", "pattern", "matches"),
    [
        ("mx1.example.net", "*.example.net", True),
        ("MX1.Example.NET.", "*.example.net", True),
        ("example.net", "*.example.net", False),
        ("a.b.example.net", "*.example.net", False),
        ("mx1.example.net", "mx1.example.net", True),
        ("mx1.example.net", "MX1.EXAMPLE.NET", True),
        ("mx2.example.net", "mx1.example.net", False),
        ("xexample.net", "*.example.net", False),
        (".example.net", "*.example.net", False),
    ],
)
def test_mx_pattern_matching(host: str, pattern: str, matches: bool) -> None:
    assert host_matches_pattern(host, pattern) is matches
    assert Policy(Mode.ENFORCE, 1, (pattern.lower(),)).allows_mx(host) is matches


# Discovery and fetch.


async def test_enforce_policy_is_fetched_cached_and_reported(
    world: World,
) -> None:
    world.publish(ENFORCE, record_id="20240101")
    before = datetime.now(UTC)
    result = await world.discover("Example.ORG.")
    assert result == MTASTSResult(DOMAIN, parse_policy(ENFORCE), "20240101")
    assert result.policy_string[1] == "mode: enforce"
    row = world.row()
    assert row is not None
    assert (row.record_id, row.mode, row.max_age, row.mx) == (
        "20240101",
        "enforce",
        86400,
        "mx1.example.org\n*.backup.example.net",
    )
    assert before + timedelta(seconds=86400) <= row.expires <= datetime.now(UTC) + timedelta(seconds=86400)
    assert world.https.requests == [(POLICY_HOST, "/.well-known/mta-sts.txt")]

    again = await world.discover()
    assert again.policy == result.policy and again.from_cache
    assert world.policy_requests() == 1


@pytest.mark.parametrize("text", [TESTING, NONE])
async def test_testing_and_none_policies_are_fetched(
    text: str,
    world: World,
) -> None:
    world.publish(text)
    result = await world.discover()
    assert result.policy == parse_policy(text)
    assert result.failure is None


async def test_charset_parameter_is_accepted(
    world: World,
) -> None:
    world.publish(Reply(ENFORCE.encode(), content_type="Text/Plain; charset=utf-8"))
    result = await world.discover()
    assert result.policy is not None and result.policy.mode == Mode.ENFORCE


async def test_no_record_means_no_policy_and_no_fetch(
    world: World,
) -> None:
    world.dns.txt(f"_mta-sts.{DOMAIN}", "v=spf1 -all")
    world.https.serve(POLICY_HOST, ENFORCE)
    world.dns.add(POLICY_HOST, "A", "127.0.0.1")
    assert await world.discover() == MTASTSResult(DOMAIN, None)
    assert world.https.requests == []


@pytest.mark.parametrize(
    ("records", "error"),
    [
        (["v=STSv1; id=1", "v=STSv1; id=2"], "has 2 MTA-STS records"),
        (["v=STSv1; id=not-valid"], "invalid id"),
    ],
)
async def test_ambiguous_or_invalid_record_means_no_policy(
    records: list[str],
    error: str,
    world: World,
) -> None:
    world.publish(ENFORCE)
    world.dns.clear()
    world.dns.add(POLICY_HOST, "A", "127.0.0.1")
    world.dns.txt(f"_mta-sts.{DOMAIN}", *records)
    result = await world.discover()
    assert result.policy is None and result.failure is None
    assert result.error is not None and error in result.error
    assert world.https.requests == []


async def test_record_behind_cname_is_followed(
    world: World,
) -> None:
    world.dns.add(f"_mta-sts.{DOMAIN}", "CNAME", "_mta-sts.provider.example.")
    world.dns.txt("_mta-sts.provider.example", "v=STSv1; id=7")
    world.dns.add(POLICY_HOST, "A", "127.0.0.1")
    world.https.serve(POLICY_HOST, TESTING)
    result = await world.discover()
    assert result.record_id == "7" and result.policy == parse_policy(TESTING)


@pytest.mark.parametrize(
    ("reply", "failure", "detail"),
    [
        (Reply(b"gone", status=404), STS_POLICY_FETCH_ERROR, "HTTP status 404"),
        (Reply(ENFORCE.encode(), status=500), STS_POLICY_FETCH_ERROR, "HTTP status 500"),
        (
            Reply(b"", status=301, headers={"Location": "https://elsewhere.example/p.txt"}),
            STS_POLICY_FETCH_ERROR,
            "redirect to https://elsewhere.example/p.txt not followed",
        ),
        (Reply(ENFORCE.encode(), content_type="text/html"), STS_POLICY_INVALID, "content type text/html"),
        (Reply(ENFORCE.encode(), content_type=None), STS_POLICY_INVALID, "content type missing"),
        (Reply(b"version: STSv1\nmode: enforce\nmax_age: 1\n"), STS_POLICY_INVALID, "needs at least one mx"),
        (Reply(b"version: STSv1\nmode: enforce\nmx: \xff\xfe\nmax_age: 1"), STS_POLICY_INVALID, "not UTF-8"),
        (Reply(ENFORCE.encode() + b"#" * MAX_POLICY_SIZE), STS_POLICY_FETCH_ERROR, "exceeds 65536"),
        (
            Reply(ENFORCE.encode() + b"#" * MAX_POLICY_SIZE, send_length=False),
            STS_POLICY_FETCH_ERROR,
            "larger than 65536",
        ),
    ],
)
async def test_fetch_failures_map_to_result_types(
    reply: Reply,
    failure: str,
    detail: str,
    world: World,
) -> None:
    world.publish(reply)
    result = await world.discover()
    assert result.policy is None
    assert result.failure == failure
    assert result.error is not None and detail in result.error
    assert result.record_id == "1"
    assert world.row() is None
    # Redirects are not followed: only the policy host was asked.
    assert {host for host, _ in world.https.requests} == {POLICY_HOST}


async def test_body_near_the_limit_is_accepted(
    world: World,
) -> None:
    body = ENFORCE + "x-padding: " + "p" * (MAX_POLICY_SIZE - len(ENFORCE) - 12) + "\n"
    assert len(body) == MAX_POLICY_SIZE
    world.publish(Reply(body.encode(), send_length=False))
    result = await world.discover()
    assert result.policy == parse_policy(ENFORCE)


@pytest.mark.parametrize("reply", [Reply(ENFORCE.encode(), delay=10), Reply(ENFORCE.encode(), drip=0.05)])
async def test_slow_servers_hit_the_whole_fetch_deadline(
    reply: Reply,
    world: World,
) -> None:
    # A drip of one byte per 50 ms never trips a per-read timeout; only a deadline stops it.
    world.publish(reply)
    started = time.monotonic()
    result = await world.discover(settings=world.fetch_settings(timeout=0.5))
    assert time.monotonic() - started < 2
    assert result.failure == STS_POLICY_FETCH_ERROR
    assert result.error is not None and "no complete policy within 0.5 s" in result.error


def other_ca_cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert(POLICY_HOST)


@pytest.mark.parametrize(
    ("make_cert", "detail"),
    [
        (other_ca_cert, "unable to get local issuer certificate"),
        (lambda ca: ca.issue_cert("mta-sts.other.example"), "Hostname mismatch"),
        (
            lambda ca: ca.issue_cert(POLICY_HOST, not_after=datetime.now(UTC) - timedelta(days=1)),
            "certificate has expired",
        ),
        (
            lambda ca: ca.issue_cert(POLICY_HOST, not_before=datetime.now(UTC) + timedelta(days=1)),
            "certificate is not yet valid",
        ),
    ],
)
async def test_untrusted_certificates_are_webpki_failures(
    make_cert,  # type: ignore[no-untyped-def]
    detail: str,
    world: World,
    https_ca: trustme.CA,
) -> None:
    cert = make_cert() if make_cert is other_ca_cert else make_cert(https_ca)
    world.publish(ENFORCE)
    world.https.certificate(POLICY_HOST, cert)
    result = await world.discover()
    assert result.policy is None
    assert result.failure == STS_WEBPKI_INVALID
    assert result.error is not None and detail in result.error
    assert world.https.requests == []  # never got as far as sending the request


async def test_policy_host_without_address_or_listener_is_a_fetch_error(world: World) -> None:
    world.dns.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1")
    no_address = await world.discover()
    assert no_address.failure == STS_POLICY_FETCH_ERROR
    assert no_address.error == f"{POLICY_HOST} has no address"

    world.dns.add(POLICY_HOST, "A", "127.0.0.1")
    refused = await world.discover(settings=world.fetch_settings(port=1))
    assert refused.failure == STS_POLICY_FETCH_ERROR
    assert refused.error is not None and "ConnectError" in refused.error


# The cache.


async def test_changed_id_or_expiry_refetches(
    world: World,
) -> None:
    world.publish(ENFORCE, record_id="1")
    await world.discover()

    world.dns.clear()
    world.publish(TESTING, record_id="2")
    changed = await world.discover()
    assert changed.policy == parse_policy(TESTING) and not changed.from_cache
    assert world.policy_requests() == 2

    world.https.serve(POLICY_HOST, NONE)
    world.age(expires=datetime.now(UTC) - timedelta(seconds=1))
    expired = await world.discover()
    assert expired.policy == parse_policy(NONE)
    row = world.row()
    assert row is not None and row.mode == "none" and row.expires > datetime.now(UTC)


async def test_failed_refetch_keeps_using_the_cached_policy(
    world: World,
) -> None:
    world.publish(ENFORCE, record_id="1")
    await world.discover()
    world.dns.clear()
    world.publish(Reply(b"oops", status=503), record_id="2")

    result = await world.discover()
    assert result.policy == parse_policy(ENFORCE)
    assert result.from_cache and result.failure is None and result.record_id == "1"
    assert result.error is not None and "HTTP status 503" in result.error
    row = world.row()
    assert row is not None and row.record_id == "1" and row.last_error == result.error

    # Once expired, a failing fetch leaves the domain without a policy, and says why.
    world.age(expires=datetime.now(UTC) - timedelta(seconds=1))
    expired = await world.discover()
    assert expired.policy is None and expired.failure == STS_POLICY_FETCH_ERROR


async def test_dns_failure_uses_cache_or_fails_open(
    world: World,
) -> None:
    world.dns.timeout(f"_mta-sts.{DOMAIN}")
    nothing = await world.discover()
    assert nothing.policy is None and nothing.failure is None
    assert nothing.error is not None and "DNS lookup of _mta-sts.example.org" in nothing.error

    world.dns.clear()
    world.publish(ENFORCE)
    await world.discover()
    world.dns.servfail(f"_mta-sts.{DOMAIN}")
    cached = await world.discover()
    assert cached.policy == parse_policy(ENFORCE) and cached.from_cache


async def test_removed_record_keeps_enforce_policy_but_drops_none_policy(
    world: World,
) -> None:
    world.publish(ENFORCE)
    await world.discover()
    world.dns.clear()
    kept = await world.discover()
    assert kept.policy == parse_policy(ENFORCE) and kept.from_cache
    assert world.row() is not None

    world.publish(NONE, record_id="2")
    assert (await world.discover()).policy == parse_policy(NONE)
    world.dns.clear()
    gone = await world.discover()
    assert gone == MTASTSResult(DOMAIN, None)
    assert world.row() is None


async def test_concurrent_first_fetches_leave_one_row(
    world: World,
) -> None:
    world.publish(ENFORCE)
    results = await asyncio.gather(*(world.discover() for _ in range(4)))
    assert {r.policy for r in results} == {parse_policy(ENFORCE)}
    assert len(world.rows()) == 1


# Background refresh.


async def test_refresh_updates_changed_and_day_old_policies_only(
    world: World,
) -> None:
    world.publish(ENFORCE)
    await world.discover()

    assert await world.refresh() == RefreshSummary(checked=1)
    assert world.policy_requests() == 1

    day_ago = datetime.now(UTC) - timedelta(days=1, seconds=1)
    world.age(fetched=day_ago, expires=day_ago + timedelta(seconds=86400))
    assert await world.refresh() == RefreshSummary(checked=1, refreshed=1)
    row = world.row()
    assert row is not None and row.expires > datetime.now(UTC) + timedelta(hours=23)

    world.dns.clear()
    world.publish(TESTING, record_id="2")
    assert await world.refresh() == RefreshSummary(checked=1, refreshed=1)
    row = world.row()
    assert row is not None and (row.record_id, row.mode) == ("2", "testing")
    assert world.policy_requests() == 3


async def test_refresh_failure_keeps_valid_policy_and_drops_expired_one(
    world: World,
) -> None:
    world.publish(ENFORCE)
    await world.discover()
    world.dns.clear()
    world.publish(Reply(b"", status=500), record_id="2")

    assert await world.refresh() == RefreshSummary(checked=1, failed=1)
    row = world.row()
    assert row is not None and row.last_error is not None and "HTTP status 500" in row.last_error

    world.age(expires=datetime.now(UTC) - timedelta(seconds=1))
    assert await world.refresh() == RefreshSummary(checked=1, deleted=1)
    assert world.row() is None


async def test_refresh_deletes_none_policy_whose_record_is_gone(
    world: World,
) -> None:
    world.publish(NONE)
    await world.discover()
    world.dns.servfail(f"_mta-sts.{DOMAIN}")
    # A DNS failure is not proof that the record is gone.
    assert await world.refresh() == RefreshSummary(checked=1)
    assert world.row() is not None

    world.dns.clear()
    assert await world.refresh() == RefreshSummary(checked=1, deleted=1)
    assert world.row() is None


def test_settings_come_from_the_delivery_config(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    settings = MTASTSSettings.from_config(Delivery(ca_bundle=bundle, mtasts_https_port=8443))
    assert (settings.ca_bundle, settings.https_port) == (str(bundle), 8443)
    assert MTASTSSettings.from_config(Delivery()) == MTASTSSettings()
