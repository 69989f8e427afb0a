"""MTA-STS discovery, fetch, validation and cache against the loopback DNS and a real HTTPS server."""

from __future__ import annotations

import asyncio
import time
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
    MAX_POLICY_SIZE,
    STS_POLICY_FETCH_ERROR,
    STS_POLICY_INVALID,
    STS_WEBPKI_INVALID,
    Mode,
    MTASTSResult,
    MTASTSSettings,
    Policy,
    RefreshSummary,
    host_matches_pattern,
    parse_policy,
    parse_record,
    policy_for_domain,
    refresh_policies,
)
from tests.dnsserver import DNSTestServer
from tests.httpsserver import HTTPSTestServer, Reply

DOMAIN = "example.org"
POLICY_HOST = f"mta-sts.{DOMAIN}"
ENFORCE = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.backup.example.net\r\nmax_age: 86400\r\n"
)
TESTING = "version: STSv1\nmode: testing\nmx: mx1.example.org\nmax_age: 604800\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"


@pytest.fixture
def settings(https_server: HTTPSTestServer, https_ca_file: Path) -> MTASTSSettings:
    return MTASTSSettings(ca_bundle=str(https_ca_file), https_port=https_server.port, timeout=2.0)


def publish(dns: DNSTestServer, https: HTTPSTestServer, policy: str | Reply, record_id: str = "1") -> None:
    """A domain with an MTA-STS record and a policy host on loopback."""
    dns.txt(f"_mta-sts.{DOMAIN}", f"v=STSv1; id={record_id};")
    dns.add(POLICY_HOST, "A", "127.0.0.1")
    https.serve(POLICY_HOST, policy)


def cached_row(db_url: str) -> MTASTSPolicy | None:
    with session_scope(db_url) as session:
        return session.scalar(select(MTASTSPolicy).where(MTASTSPolicy.domain == DOMAIN))


def age_cache(db_url: str, **columns: datetime) -> None:
    """Move the cached row's times (fetched/expires) to simulate time passing."""
    with session_scope(db_url) as session:
        session.execute(update(MTASTSPolicy).where(MTASTSPolicy.domain == DOMAIN).values(**columns))


def policy_requests(https: HTTPSTestServer) -> int:
    return sum(1 for host, _ in https.requests if host == POLICY_HOST)


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
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, ENFORCE, record_id="20240101")
    before = datetime.now(UTC)
    result = await policy_for_domain("Example.ORG.", resolver, sqlite_url, settings)
    assert result == MTASTSResult(DOMAIN, parse_policy(ENFORCE), "20240101")
    assert result.policy_string[1] == "mode: enforce"
    row = cached_row(sqlite_url)
    assert row is not None
    assert (row.record_id, row.mode, row.max_age, row.mx) == (
        "20240101",
        "enforce",
        86400,
        "mx1.example.org\n*.backup.example.net",
    )
    assert before + timedelta(seconds=86400) <= row.expires <= datetime.now(UTC) + timedelta(seconds=86400)
    assert https_server.requests == [(POLICY_HOST, "/.well-known/mta-sts.txt")]

    again = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert again.policy == result.policy and again.from_cache
    assert policy_requests(https_server) == 1


@pytest.mark.parametrize("text", [TESTING, NONE])
async def test_testing_and_none_policies_are_fetched(
    text: str,
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, text)
    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert result.policy == parse_policy(text)
    assert result.failure is None


async def test_charset_parameter_is_accepted(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, Reply(ENFORCE.encode(), content_type="Text/Plain; charset=utf-8"))
    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert result.policy is not None and result.policy.mode == Mode.ENFORCE


async def test_no_record_means_no_policy_and_no_fetch(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    dns.txt(f"_mta-sts.{DOMAIN}", "v=spf1 -all")
    https_server.serve(POLICY_HOST, ENFORCE)
    dns.add(POLICY_HOST, "A", "127.0.0.1")
    assert await policy_for_domain(DOMAIN, resolver, sqlite_url, settings) == MTASTSResult(DOMAIN, None)
    assert https_server.requests == []


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
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, ENFORCE)
    dns.clear()
    dns.add(POLICY_HOST, "A", "127.0.0.1")
    dns.txt(f"_mta-sts.{DOMAIN}", *records)
    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert result.policy is None and result.failure is None
    assert result.error is not None and error in result.error
    assert https_server.requests == []


async def test_record_behind_cname_is_followed(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    dns.add(f"_mta-sts.{DOMAIN}", "CNAME", "_mta-sts.provider.example.")
    dns.txt("_mta-sts.provider.example", "v=STSv1; id=7")
    dns.add(POLICY_HOST, "A", "127.0.0.1")
    https_server.serve(POLICY_HOST, TESTING)
    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
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
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, reply)
    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert result.policy is None
    assert result.failure == failure
    assert result.error is not None and detail in result.error
    assert result.record_id == "1"
    assert cached_row(sqlite_url) is None
    # Redirects are not followed: only the policy host was asked.
    assert {host for host, _ in https_server.requests} == {POLICY_HOST}


async def test_body_near_the_limit_is_accepted(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    body = ENFORCE + "x-padding: " + "p" * (MAX_POLICY_SIZE - len(ENFORCE) - 12) + "\n"
    assert len(body) == MAX_POLICY_SIZE
    publish(dns, https_server, Reply(body.encode(), send_length=False))
    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert result.policy == parse_policy(ENFORCE)


@pytest.mark.parametrize("reply", [Reply(ENFORCE.encode(), delay=10), Reply(ENFORCE.encode(), drip=0.05)])
async def test_slow_servers_hit_the_whole_fetch_deadline(
    reply: Reply,
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    https_ca_file: Path,
) -> None:
    # A drip of one byte per 50 ms never trips a per-read timeout; only a deadline stops it.
    settings = MTASTSSettings(ca_bundle=str(https_ca_file), https_port=https_server.port, timeout=0.5)
    publish(dns, https_server, reply)
    started = time.monotonic()
    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
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
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    https_ca: trustme.CA,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    cert = make_cert() if make_cert is other_ca_cert else make_cert(https_ca)
    publish(dns, https_server, ENFORCE)
    https_server.certificate(POLICY_HOST, cert)
    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert result.policy is None
    assert result.failure == STS_WEBPKI_INVALID
    assert result.error is not None and detail in result.error
    assert https_server.requests == []  # never got as far as sending the request


async def test_policy_host_without_address_or_listener_is_a_fetch_error(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    https_ca_file: Path,
) -> None:
    dns.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1")
    settings = MTASTSSettings(ca_bundle=str(https_ca_file), https_port=https_server.port, timeout=2)
    no_address = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert no_address.failure == STS_POLICY_FETCH_ERROR
    assert no_address.error == f"{POLICY_HOST} has no address"

    dns.add(POLICY_HOST, "A", "127.0.0.1")
    closed_port = MTASTSSettings(ca_bundle=str(https_ca_file), https_port=1, timeout=2)
    refused = await policy_for_domain(DOMAIN, resolver, sqlite_url, closed_port)
    assert refused.failure == STS_POLICY_FETCH_ERROR
    assert refused.error is not None and "ConnectError" in refused.error


# The cache.


async def test_changed_id_or_expiry_refetches(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, ENFORCE, record_id="1")
    await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)

    dns.clear()
    publish(dns, https_server, TESTING, record_id="2")
    changed = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert changed.policy == parse_policy(TESTING) and not changed.from_cache
    assert policy_requests(https_server) == 2

    https_server.serve(POLICY_HOST, NONE)
    age_cache(sqlite_url, expires=datetime.now(UTC) - timedelta(seconds=1))
    expired = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert expired.policy == parse_policy(NONE)
    row = cached_row(sqlite_url)
    assert row is not None and row.mode == "none" and row.expires > datetime.now(UTC)


async def test_failed_refetch_keeps_using_the_cached_policy(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, ENFORCE, record_id="1")
    await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    dns.clear()
    publish(dns, https_server, Reply(b"oops", status=503), record_id="2")

    result = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert result.policy == parse_policy(ENFORCE)
    assert result.from_cache and result.failure is None and result.record_id == "1"
    assert result.error is not None and "HTTP status 503" in result.error
    row = cached_row(sqlite_url)
    assert row is not None and row.record_id == "1" and row.last_error == result.error

    # Once expired, a failing fetch leaves the domain without a policy, and says why.
    age_cache(sqlite_url, expires=datetime.now(UTC) - timedelta(seconds=1))
    expired = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert expired.policy is None and expired.failure == STS_POLICY_FETCH_ERROR


async def test_dns_failure_uses_cache_or_fails_open(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    dns.timeout(f"_mta-sts.{DOMAIN}")
    nothing = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert nothing.policy is None and nothing.failure is None
    assert nothing.error is not None and "DNS lookup of _mta-sts.example.org" in nothing.error

    dns.clear()
    publish(dns, https_server, ENFORCE)
    await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    dns.servfail(f"_mta-sts.{DOMAIN}")
    cached = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert cached.policy == parse_policy(ENFORCE) and cached.from_cache


async def test_removed_record_keeps_enforce_policy_but_drops_none_policy(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, ENFORCE)
    await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    dns.clear()
    kept = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert kept.policy == parse_policy(ENFORCE) and kept.from_cache
    assert cached_row(sqlite_url) is not None

    publish(dns, https_server, NONE, record_id="2")
    assert (await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)).policy == parse_policy(NONE)
    dns.clear()
    gone = await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    assert gone == MTASTSResult(DOMAIN, None)
    assert cached_row(sqlite_url) is None


async def test_concurrent_first_fetches_leave_one_row(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, ENFORCE)
    results = await asyncio.gather(
        *(policy_for_domain(DOMAIN, resolver, sqlite_url, settings) for _ in range(4))
    )
    assert {r.policy for r in results} == {parse_policy(ENFORCE)}
    with session_scope(sqlite_url) as session:
        assert len(session.scalars(select(MTASTSPolicy)).all()) == 1


# Background refresh.


async def test_refresh_updates_changed_and_day_old_policies_only(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, ENFORCE)
    await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)

    assert await refresh_policies(sqlite_url, resolver, settings) == RefreshSummary(checked=1)
    assert policy_requests(https_server) == 1

    day_ago = datetime.now(UTC) - timedelta(days=1, seconds=1)
    age_cache(sqlite_url, fetched=day_ago, expires=day_ago + timedelta(seconds=86400))
    assert await refresh_policies(sqlite_url, resolver, settings) == RefreshSummary(checked=1, refreshed=1)
    row = cached_row(sqlite_url)
    assert row is not None and row.expires > datetime.now(UTC) + timedelta(hours=23)

    dns.clear()
    publish(dns, https_server, TESTING, record_id="2")
    assert await refresh_policies(sqlite_url, resolver, settings) == RefreshSummary(checked=1, refreshed=1)
    row = cached_row(sqlite_url)
    assert row is not None and (row.record_id, row.mode) == ("2", "testing")
    assert policy_requests(https_server) == 3


async def test_refresh_failure_keeps_valid_policy_and_drops_expired_one(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, ENFORCE)
    await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    dns.clear()
    publish(dns, https_server, Reply(b"", status=500), record_id="2")

    assert await refresh_policies(sqlite_url, resolver, settings) == RefreshSummary(checked=1, failed=1)
    row = cached_row(sqlite_url)
    assert row is not None and row.last_error is not None and "HTTP status 500" in row.last_error

    age_cache(sqlite_url, expires=datetime.now(UTC) - timedelta(seconds=1))
    assert await refresh_policies(sqlite_url, resolver, settings) == RefreshSummary(checked=1, deleted=1)
    assert cached_row(sqlite_url) is None


async def test_refresh_deletes_none_policy_whose_record_is_gone(
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    resolver: Resolver,
    sqlite_url: str,
    settings: MTASTSSettings,
) -> None:
    publish(dns, https_server, NONE)
    await policy_for_domain(DOMAIN, resolver, sqlite_url, settings)
    dns.servfail(f"_mta-sts.{DOMAIN}")
    # A DNS failure is not proof that the record is gone.
    assert await refresh_policies(sqlite_url, resolver, settings) == RefreshSummary(checked=1)
    assert cached_row(sqlite_url) is not None

    dns.clear()
    assert await refresh_policies(sqlite_url, resolver, settings) == RefreshSummary(checked=1, deleted=1)
    assert cached_row(sqlite_url) is None


def test_settings_come_from_the_delivery_config(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    settings = MTASTSSettings.from_config(Delivery(ca_bundle=bundle, mtasts_https_port=8443))
    assert (settings.ca_bundle, settings.https_port) == (str(bundle), 8443)
    assert MTASTSSettings.from_config(Delivery()) == MTASTSSettings()
