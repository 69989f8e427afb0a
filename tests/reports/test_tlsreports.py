"""TLS reports we send (RFC 8460): the TLSRPT record, the JSON report, the report mail, HTTPS POST.

Real parts: the loopback DNS server, dkimpy verifying against it, parsedmarc reading our JSON, and a
loopback HTTPS server (trustme certificate) that checks what a report receiver would check.
"""

from __future__ import annotations

import email
import gzip
import json
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dkim.asyncsupport
import parsedmarc
import pytest
import trustme

from app.config import Config, load_config
from app.dns import Resolver
from app.reportsender import tls_report_sender
from app.tlsreports.https import PostError, post_report
from app.tlsreports.message import report_message, subject
from app.tlsreports.record import (
    LookupStatus,
    TLSRPTRecordError,
    lookup_tlsrpt,
    parse_tlsrpt_record,
    select_tlsrpt_record,
)
from app.tlsreports.report import (
    MEDIA_TYPE,
    POLICY_TYPES,
    RESULT_TYPES,
    FailureCount,
    FailureDetail,
    PolicyRef,
    PolicyResult,
    build_report,
)
from tests.support.configs import dkim_keys, write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import LOOPBACK_NETWORKS

DAY = date(2026, 11, 24)
STS = PolicyRef(
    "sts",
    "example.net",
    ("version: STSv1", "mode: enforce", "mx: mx1.example.net", "max_age: 86400"),
    ("mx1.example.net",),
)
TLSA = PolicyRef("tlsa", "mx1.example.net", ("3 1 1 abcdef",), ("mx1.example.net",))
EXPIRED = FailureDetail(
    "certificate-expired",
    "192.0.2.1",
    "mx1.example.net",
    "mx1.example.net",
    "198.51.100.7",
    "X509_V_ERR_CERT_HAS_EXPIRED",
)
NO_STARTTLS = FailureDetail("starttls-not-supported", "192.0.2.1", "mx1.example.net", None, "198.51.100.7")


# RFC 8460 field rules, shared with the job tests.

_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def check_rfc8460(report: dict[str, Any], day: date) -> None:
    """Assert the report follows RFC 8460 §4.4 (field names, types, value sets, the day's range)."""
    assert set(report) == {"organization-name", "date-range", "contact-info", "report-id", "policies"}
    start, end = report["date-range"]["start-datetime"], report["date-range"]["end-datetime"]
    assert _DATETIME.match(start) and _DATETIME.match(end)
    assert (start, end) == (f"{day:%Y-%m-%d}T00:00:00Z", f"{day:%Y-%m-%d}T23:59:59Z")
    assert isinstance(report["policies"], list) and report["policies"]
    for entry in report["policies"]:
        policy = entry["policy"]
        assert policy["policy-type"] in POLICY_TYPES
        assert isinstance(policy["policy-domain"], str) and policy["policy-domain"]
        assert all(isinstance(v, str) for v in policy.get("policy-string", []))
        assert isinstance(policy.get("mx-host", ""), str), "mx-host is one string (RFC 8460 §4.4)"
        summary = entry["summary"]
        ok, failed = summary["total-successful-session-count"], summary["total-failure-session-count"]
        assert isinstance(ok, int) and isinstance(failed, int) and ok >= 0 and failed >= 0
        details = entry.get("failure-details", [])
        for detail in details:
            assert detail["result-type"] in RESULT_TYPES
            assert isinstance(detail["failed-session-count"], int) and detail["failed-session-count"] > 0
        assert sum(d["failed-session-count"] for d in details) <= failed


def attachment(message: bytes) -> tuple[Message, dict[str, Any]]:
    """The report part of a report mail and its JSON."""
    parsed = email.message_from_bytes(message)
    [part] = [p for p in parsed.walk() if p.get_content_type() == MEDIA_TYPE]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return part, json.loads(gzip.decompress(payload))


# A report receiver over HTTPS.


@dataclass(frozen=True)
class ReceivedPost:
    host: str
    path: str
    content_type: str
    report: dict[str, Any] | None  # the JSON, when the body was gzipped JSON
    status: int


class _ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ReportReceiver

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        content_type = self.headers.get("Content-Type", "")
        try:
            report = json.loads(gzip.decompress(raw))
        except (OSError, ValueError):
            report = None
        # What a receiver checks: the media type of RFC 8460 §5.4 and a gzipped JSON body.
        status = self.server.status if content_type == MEDIA_TYPE and report is not None else 415
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        self.server.posts.append(ReceivedPost(host, self.path, content_type, report, status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ReportReceiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cert: trustme.LeafCert) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.port: int = self.server_address[1]
        self.status = 200
        self.posts: list[ReceivedPost] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients refusing our certificate are part of the tests


@contextmanager
def report_receiver(ca: trustme.CA, *names: str) -> Iterator[ReportReceiver]:
    """An HTTPS report receiver on 127.0.0.1 with a certificate for `names` from `ca`."""
    server = ReportReceiver(ca.issue_cert(*(names or ("reports.example.net",))))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def dkim_config(directory: Path, dns: DNSTestServer, extra: str = "") -> Config:
    """The test config with DKIM keys for example.org (ed25519 and rsa), published in the DNS."""
    return load_config(write_config(directory, dkim_keys(directory, dns) + extra, dns_port=dns.port))


def sample_report(submitter: str = "example.org") -> Any:
    return build_report(
        "example.net",
        DAY,
        submitter,
        [
            PolicyResult(STS, 10, 3, (FailureCount(EXPIRED, 2), FailureCount(NO_STARTTLS, 1))),
            PolicyResult(TLSA, 4, 0),
        ],
    )


# The TLSRPT record (RFC 8460 §3).


@pytest.mark.parametrize(
    ("text", "mailto", "https"),
    [
        ("v=TLSRPTv1; rua=mailto:reports@Example.NET", ("reports@example.net",), ()),
        (
            "v=TLSRPTv1;rua=mailto:a@example.net,https://r.example.net/x;",
            ("a@example.net",),
            ("https://r.example.net/x",),
        ),
        # Whitespace around delimiters, a second rua field, an unknown extension (ignored).
        (
            "v=TLSRPTv1 ; rua=mailto:a@example.net ; rua=https://r.example.net/y ; ext=val",
            ("a@example.net",),
            ("https://r.example.net/y",),
        ),
        ("v=TLSRPTv1; rua=mailto:a%40example.net?subject=tls", ("a@example.net",), ()),
        ("v=TLSRPTv1; rua=mailto:a@example.net, mailto:a@example.net", ("a@example.net",), ()),
    ],
)
def test_valid_records(text: str, mailto: tuple[str, ...], https: tuple[str, ...]) -> None:
    record = parse_tlsrpt_record(text)
    assert (record.mailto, record.https) == (mailto, https)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("v=TLSRPTv1", "does not start with"),
        ("v=tlsrptv1; rua=mailto:a@example.net", "does not start with"),  # the version is case-sensitive
        ("v=TLSRPTv1;", "no rua field"),
        ("v=TLSRPTv1; ext=1", "no rua field"),
        ("v=TLSRPTv1; RUA=mailto:a@example.net", "no rua field"),  # %s"rua=": an unknown extension
        ("v=TLSRPTv1; rua=", "is not a URI"),
        ("v=TLSRPTv1; rua=reports@example.net", "is not a URI"),
        ("v=TLSRPTv1;; rua=mailto:a@example.net", "not of the form name=value"),
        ("v=TLSRPTv1; rua=mailto:a@example.net; junk", "not of the form name=value"),
    ],
)
def test_invalid_records(text: str, problem: str) -> None:
    with pytest.raises(TLSRPTRecordError, match=problem):
        parse_tlsrpt_record(text)


def test_unusable_uris_are_ignored_and_only_unusable_ones_make_the_record_unusable() -> None:
    record = parse_tlsrpt_record(
        "v=TLSRPTv1; rua=ftp://x.example.net/r,mailto:nobody,https://r.example.net/p"
    )
    assert record.destinations == ("https://r.example.net/p",)
    assert [uri for uri, _ in record.ignored] == ["ftp://x.example.net/r", "mailto:nobody"]
    with pytest.raises(TLSRPTRecordError, match=r"no usable rua URI.*unsupported URI scheme 'ftp'"):
        select_tlsrpt_record(["v=TLSRPTv1; rua=ftp://x.example.net/r"])


def test_several_records_mean_none_and_other_txt_values_are_discarded() -> None:
    with pytest.raises(TLSRPTRecordError, match="2 TLSRPT records"):
        select_tlsrpt_record(["v=TLSRPTv1; rua=mailto:a@example.net", "v=TLSRPTv1; rua=mailto:b@example.net"])
    record = select_tlsrpt_record(["v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@example.net"])
    assert record.mailto == ("a@example.net",)


async def test_lookup_over_dns(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("_smtp._tls.good.example", "v=TLSRPTv1; rua=mailto:tls@good.example")
    dns.txt("_smtp._tls.bad.example", "v=TLSRPTv1; rua=gopher://x")
    dns.txt(
        "_smtp._tls.two.example",
        "v=TLSRPTv1; rua=mailto:a@two.example",
        "v=TLSRPTv1; rua=mailto:b@two.example",
    )
    dns.txt("_smtp._tls.other.example", "some other text")
    dns.timeout("_smtp._tls.slow.example")
    good = await lookup_tlsrpt(resolver, "good.example")
    assert good.status is LookupStatus.OK and good.record is not None
    assert good.record.destinations == ("mailto:tls@good.example",)
    assert (await lookup_tlsrpt(resolver, "bad.example")).status is LookupStatus.INVALID
    two = await lookup_tlsrpt(resolver, "two.example")
    assert (two.status, two.reason) == (
        LookupStatus.INVALID,
        "2 TLSRPT records published; senders must use none",
    )
    assert (await lookup_tlsrpt(resolver, "other.example")).status is LookupStatus.NONE
    assert (await lookup_tlsrpt(resolver, "missing.example")).status is LookupStatus.NONE
    assert (await lookup_tlsrpt(resolver, "slow.example")).status is LookupStatus.TEMPERROR


# The report (RFC 8460 §4).


def test_mx_host_is_a_string_and_each_mx_host_has_its_own_policy_entry() -> None:
    backup = PolicyRef("sts", "example.net", STS.policy_string, ("*.backup.example.net",))
    report = build_report(
        "example.net", DAY, "example.org", [PolicyResult(STS, 2, 0), PolicyResult(backup, 1, 0)]
    )
    document = json.loads(report.json_bytes())
    check_rfc8460(document, DAY)
    mx_hosts = [p["policy"]["mx-host"] for p in document["policies"]]
    assert mx_hosts == ["mx1.example.net", "*.backup.example.net"]
    # A row stored with all of a policy's patterns (before results were kept per MX host) cannot be
    # split per host: it has no mx-host rather than a list.
    legacy = PolicyRef("sts", "example.net", STS.policy_string, ("mx1.example.net", "*.backup.example.net"))
    (entry,) = build_report("example.net", DAY, "example.org", [PolicyResult(legacy, 1, 0)]).to_json()[
        "policies"
    ]
    assert "mx-host" not in entry["policy"]


def test_report_json_follows_rfc8460_and_parsedmarc_reads_the_counts() -> None:
    report = sample_report()
    document = json.loads(report.json_bytes())
    check_rfc8460(document, DAY)
    assert document["organization-name"] == "example.org"
    assert document["contact-info"] == "postmaster@example.org"
    assert document["report-id"] == "20261124.example.net@example.org"
    sts = document["policies"][0]
    assert sts["policy"] == {
        "policy-type": "sts",
        "policy-string": list(STS.policy_string),
        "policy-domain": "example.net",
        "mx-host": "mx1.example.net",
    }
    assert sts["failure-details"][0] == {
        "result-type": "certificate-expired",
        "sending-mta-ip": "192.0.2.1",
        "receiving-mx-hostname": "mx1.example.net",
        "receiving-mx-helo": "mx1.example.net",
        "receiving-ip": "198.51.100.7",
        "failed-session-count": 2,
        "failure-reason-code": "X509_V_ERR_CERT_HAS_EXPIRED",
    }
    assert "failure-details" not in document["policies"][1]
    parsed = parsedmarc.parse_smtp_tls_report_json(gzip.decompress(report.gzipped()))
    assert parsed["report_id"] == report.id
    assert parsed["begin_date"] == "2026-11-24T00:00:00Z"
    assert parsed["end_date"] == "2026-11-24T23:59:59Z"
    by_type = {p["policy_type"]: p for p in parsed["policies"]}
    assert (by_type["sts"]["successful_session_count"], by_type["sts"]["failed_session_count"]) == (10, 3)
    assert [(d["result_type"], d["failed_session_count"]) for d in by_type["sts"]["failure_details"]] == [
        ("certificate-expired", 2),
        ("starttls-not-supported", 1),
    ]
    assert (by_type["tlsa"]["successful_session_count"], by_type["tlsa"]["failed_session_count"]) == (4, 0)


def test_equal_policies_and_failures_merge() -> None:
    report = build_report(
        "example.net",
        DAY,
        "example.org",
        [
            PolicyResult(STS, 1, 1, (FailureCount(EXPIRED, 1),)),
            PolicyResult(PolicyRef.none_found("example.net"), 5, 0),
            PolicyResult(STS, 2, 2, (FailureCount(EXPIRED, 1), FailureCount(NO_STARTTLS, 1))),
        ],
    )
    assert [(p.policy.policy_type, p.successful, p.failed) for p in report.policies] == [
        ("sts", 3, 3),
        ("no-policy-found", 5, 0),
    ]
    assert {(f.detail.result_type, f.sessions) for f in report.policies[0].failures} == {
        ("certificate-expired", 2),
        ("starttls-not-supported", 1),
    }
    assert report.has_failure and not build_report("x", DAY, "y", [PolicyResult(STS, 3, 0)]).has_failure


def test_names_and_period() -> None:
    report = sample_report()
    begin = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp())
    assert report.filename == f"example.org!example.net!{begin}!{begin + 86399}.json.gz"
    assert (
        subject(report)
        == "Report Domain: example.net Submitter: example.org Report-ID: <20261124.example.net@example.org>"
    )


# The report mail (RFC 8460 §5.3).


async def test_report_message_is_dkim_signed_by_exactly_the_from_domain(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    submitter = tls_report_sender(dkim_config(tmp_path, dns))
    report = sample_report()
    now = datetime(2026, 11, 25, 0, 5, tzinfo=UTC)
    message = report_message(report, report.gzipped(), submitter, ["tls@example.net"], now)

    parsed = email.message_from_bytes(message)
    assert parsed["From"] == "postmaster@example.org"
    assert parsed["To"] == "tls@example.net"
    assert re.sub(r"\s+", " ", parsed["Subject"]) == subject(report)
    assert parsed["TLS-Report-Domain"] == "example.net"
    assert parsed["TLS-Report-Submitter"] == "example.org"
    assert parsed["TLS-Required"] == "No"
    assert parsed["Message-ID"] == "<20261124.example.net@example.org>"
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "tlsrpt"
    assert [part.defects for part in parsed.walk()] == [[], [], []]  # well-formed MIME, three parts
    assert all(len(line) <= 78 for line in message.split(b"\r\n"))  # RFC 5322 2.1.1 (SHOULD)
    first, *_ = parsed.get_payload()  # type: ignore[misc]
    assert first.get_content_type() == "text/plain"
    part, document = attachment(message)
    assert part.get_filename() == report.filename
    assert part.get_content_disposition() == "attachment"
    assert document == report.to_json()

    signatures = [v for k, v in parsed.items() if k.lower() == "dkim-signature"]
    assert len(signatures) == 2  # one per selector of d
    for value in signatures:
        tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", "", value).split(";") if t)
        assert tags["d"] == "example.org"  # exactly the From domain
        signed = tags["h"].lower().split(":")
        assert {"from", "subject", "tls-report-domain", "tls-report-submitter"} <= set(signed)
    # dkimpy verifies every signature against the keys in the loopback DNS.
    for index in range(2):
        verifier = dkim.asyncsupport.DKIM(message)
        assert await verifier.verify(idx=index, dnsfunc=resolver.dkim_txt)


async def test_tampered_report_headers_fail_verification(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    submitter = tls_report_sender(dkim_config(tmp_path, dns))
    report = sample_report()
    message = report_message(report, report.gzipped(), submitter, ["tls@example.net"], datetime.now(UTC))
    forged = message.replace(b"TLS-Report-Domain: example.net", b"TLS-Report-Domain: example.com")
    assert forged != message
    assert not await dkim.asyncsupport.DKIM(forged).verify(dnsfunc=resolver.dkim_txt)


# HTTPS POST (RFC 8460 §5.4).


async def post_to_loopback(url: str, payload: bytes, resolver: Resolver, ca_file: Path) -> int:
    """post_report to a test receiver: loopback allowed, as the test configs allow it."""
    return await post_report(
        url, payload, resolver, ca_bundle=ca_file, timeout=5, allowed_networks=LOOPBACK_NETWORKS
    )


async def test_post_to_https_rua(
    dns: DNSTestServer, resolver: Resolver, https_ca: trustme.CA, https_ca_file: Path
) -> None:
    report = sample_report()
    dns.add("reports.example.net", "A", "127.0.0.1")
    with report_receiver(https_ca) as receiver:
        url = f"https://reports.example.net:{receiver.port}/v1/tlsrpt"
        assert await post_to_loopback(url, report.gzipped(), resolver, https_ca_file) == 200
        [post] = receiver.posts
    assert (post.host, post.path, post.content_type) == ("reports.example.net", "/v1/tlsrpt", MEDIA_TYPE)
    assert post.report == report.to_json()


@pytest.mark.parametrize("status", [301, 400, 404, 500, 503])
async def test_non_2xx_is_a_failure(
    status: int, dns: DNSTestServer, resolver: Resolver, https_ca: trustme.CA, https_ca_file: Path
) -> None:
    dns.add("reports.example.net", "A", "127.0.0.1")
    with report_receiver(https_ca) as receiver:
        receiver.status = status
        url = f"https://reports.example.net:{receiver.port}/tlsrpt"
        with pytest.raises(PostError, match=f"HTTP {status}"):
            await post_to_loopback(url, sample_report().gzipped(), resolver, https_ca_file)
        assert len(receiver.posts) == 1  # no redirect followed


async def test_certificate_is_verified(
    dns: DNSTestServer, resolver: Resolver, https_ca: trustme.CA, https_ca_file: Path
) -> None:
    dns.add("reports.example.net", "A", "127.0.0.1")
    with report_receiver(trustme.CA(), "reports.example.net") as stranger:  # a CA we do not trust
        url = f"https://reports.example.net:{stranger.port}/tlsrpt"
        with pytest.raises(PostError, match="CERTIFICATE_VERIFY_FAILED"):
            await post_to_loopback(url, sample_report().gzipped(), resolver, https_ca_file)
        assert stranger.posts == []
    with report_receiver(https_ca, "other.example.net") as wrong_name:
        url = f"https://reports.example.net:{wrong_name.port}/tlsrpt"
        with pytest.raises(PostError, match="CERTIFICATE_VERIFY_FAILED"):
            await post_to_loopback(url, sample_report().gzipped(), resolver, https_ca_file)


async def test_unresolvable_or_unreachable_receiver(
    dns: DNSTestServer, resolver: Resolver, https_ca_file: Path
) -> None:
    with pytest.raises(PostError, match="has no A or AAAA record"):
        await post_report("https://nowhere.example.net/r", b"x", resolver, ca_bundle=https_ca_file, timeout=2)
    dns.timeout("slow.example.net")
    with pytest.raises(PostError, match=r"cannot resolve slow\.example\.net"):
        await post_report("https://slow.example.net/r", b"x", resolver, ca_bundle=https_ca_file, timeout=2)
    dns.add("closed.example.net", "A", "127.0.0.1")
    with pytest.raises(PostError, match="ConnectError"):
        await post_to_loopback("https://closed.example.net:1/r", b"x", resolver, https_ca_file)
    with pytest.raises(PostError, match="not an https URL"):
        await post_report("http://closed.example.net/r", b"x", resolver, ca_bundle=https_ca_file, timeout=2)


def test_day_range_covers_the_whole_utc_day() -> None:
    report = sample_report()
    start, end = report.to_json()["date-range"].values()
    parsed_start = datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ")
    parsed_end = datetime.strptime(end, "%Y-%m-%dT%H:%M:%SZ")
    assert parsed_end - parsed_start == timedelta(days=1, seconds=-1)
