"""Incoming reports that should be read: the RFC examples, every encoding and media type, our own reports."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime
from pathlib import Path

import dmarc as dmarc_package
import parsedmarc
import pytest

from app.dmarcreports import mail as dmarc_mail
from app.dmarcreports.xml import Metadata, PolicyPublished, ReportWriter, Row
from app.inreports import dmarc, tls
from app.inreports.read import read_file, read_message
from app.inreports.unpack import from_file, from_message
from app.reportsender import ReportSender
from app.tlsreports import message as tls_message
from app.tlsreports.report import FailureCount, FailureDetail, PolicyRef, PolicyResult, build_report
from tests.inreports.samples import (
    RFC7489_REPORT,
    RFC8460_EXAMPLE,
    RFC9990_REPORT,
    gzipped,
    message_with,
    zipped,
)

SENDER = ReportSender("example.org", None, ())  # unsigned: these tests read the message, not DKIM
NOW = datetime(2026, 11, 25, 0, 5, tzinfo=UTC)


def test_the_rfc8460_example_report() -> None:
    report = tls.parse(RFC8460_EXAMPLE)
    assert (report.organization_name, report.contact_info, report.report_id) == (
        "Company-X",
        "sts-reporting@company-x.example",
        "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
    )
    assert report.start == datetime(2016, 4, 1, tzinfo=UTC)
    assert report.end == datetime(2016, 4, 1, 23, 59, 59, tzinfo=UTC)
    (policy,) = report.policies
    assert (policy.policy_type, policy.policy_domain, policy.mx_host) == (
        "sts",
        "company-y.example",
        ("*.mail.company-y.example",),
    )
    assert policy.policy_string == (
        "version: STSv1",
        "mode: testing",
        "mx: *.mail.company-y.example",
        "max_age: 86400",
    )
    assert (policy.successful, policy.failed) == (5326, 303)
    assert [(d.result_type, d.failed_session_count) for d in policy.failure_details] == [
        ("certificate-expired", 100),
        ("starttls-not-supported", 200),
        ("validation-failure", 3),
    ]
    expired, no_starttls, invalid = policy.failure_details
    assert (expired.sending_mta_ip, expired.receiving_mx_hostname) == (
        "2001:db8:abcd:0012::1",
        "mx1.mail.company-y.example",
    )
    assert no_starttls.receiving_ip == "203.0.113.56"
    assert no_starttls.additional_information.endswith("#StarttlsNotSupported")
    assert invalid.failure_reason_code == "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"
    assert report.sessions == (5326, 303)


def test_an_rfc9990_report_with_its_namespace() -> None:
    report = dmarc.parse(RFC9990_REPORT)
    meta = report.metadata
    assert (meta.org_name, meta.report_id) == ("Sample Reporter", "3v98abbp8ya9n3va8yr8oa3ya")
    assert meta.email == "report_sender@example-reporter.com"
    assert meta.generator == "Example DMARC Aggregate Reporter v1.2"
    assert meta.begin == datetime(2023, 9, 12, tzinfo=UTC) and meta.end.tzinfo is UTC
    policy = report.policy
    assert (policy.domain, policy.p, policy.sp, policy.np, policy.testing, policy.discovery_method) == (
        "example.com",
        "quarantine",
        "none",
        "none",
        "n",
        "treewalk",
    )
    first, second = report.records
    assert (first.source_ip, first.count, first.disposition, first.dkim, first.spf) == (
        "192.0.2.123",
        123,
        "pass",
        "pass",
        "fail",
    )
    assert first.dkim_results == (dmarc.DKIMResult("example.com", "abc123", "pass"),)
    assert first.spf_results == (dmarc.SPFResult("example.com", "mfrom", "fail"),)
    assert second.source_ip == "2001:db8::1", "addresses are checked and written in their normal form"
    assert second.reasons == (dmarc.Reason("mailing_list", "a list we know"),)
    assert (second.envelope_to, second.envelope_from) == ("example.net", "")
    assert report.messages == 130 and report.version == "1.0"


def test_an_rfc7489_report_without_namespace() -> None:
    report = dmarc.parse(RFC7489_REPORT)
    assert report.metadata.extra_contact_info == "http://acme.com/dmarc/support"
    assert (report.policy.adkim, report.policy.aspf, report.policy.pct) == ("r", "r", 100)
    upper = dmarc.parse(
        RFC7489_REPORT.replace(b"<domain>example.com</domain>", b"<domain>Example.COM.</domain>", 1)
    )
    assert upper.policy.domain == "example.com", "policy domains are compared in lowercase A-labels"
    (record,) = report.records
    assert (record.source_ip, record.count, record.header_from) == ("72.150.241.94", 2, "example.com")
    assert record.dkim_results == (dmarc.DKIMResult("example.com", "", "fail"),)
    assert record.spf_results == (dmarc.SPFResult("example.com", "", "pass"),)


def test_mx_host_as_a_list_as_some_reporters_send_it() -> None:
    example = json.loads(RFC8460_EXAMPLE)
    example["policies"][0]["policy"]["mx-host"] = ["mx1.company-y.example", "mx2.company-y.example"]
    (policy,) = tls.parse(json.dumps(example).encode()).policies
    assert policy.mx_host == ("mx1.company-y.example", "mx2.company-y.example")


def test_long_text_is_cut_to_its_bound() -> None:
    long_name = b"x" * 100_000
    report = dmarc.parse(RFC7489_REPORT.replace(b"acme.com</org_name>", long_name + b"</org_name>"))
    assert report.metadata.org_name == "x" * dmarc.MAX_TEXT
    example = json.loads(RFC8460_EXAMPLE)
    example["policies"][0]["failure-details"][1]["additional-information"] = "y" * 100_000
    detail = tls.parse(json.dumps(example).encode()).policies[0].failure_details[1]
    assert detail.additional_information == "y" * tls.MAX_LONG_TEXT


# Every encoding, as a file and as a message.

DMARC_FORMS = [
    ("plain", RFC9990_REPORT, "text/xml", "report.xml"),
    ("plain", RFC9990_REPORT, "application/xml", None),
    ("gzip", gzipped(RFC9990_REPORT), "application/gzip", "report.xml.gz"),
    ("gzip", gzipped(RFC9990_REPORT), "application/x-gzip", None),
    ("gzip", gzipped(RFC9990_REPORT), "application/octet-stream", "a!b!1!2.xml.gz"),
    ("zip", zipped(("report.xml", RFC9990_REPORT)), "application/zip", "report.zip"),
    ("zip", zipped(("report.xml", RFC9990_REPORT)), "application/octet-stream", "REPORT.ZIP"),
]
TLS_FORMS = [
    ("plain", RFC8460_EXAMPLE, "application/tlsrpt+json", "report.json"),
    ("gzip", gzipped(RFC8460_EXAMPLE), "application/tlsrpt+gzip", "report.json.gz"),
    ("gzip", gzipped(RFC8460_EXAMPLE), "application/octet-stream", "report.json.gz"),
    ("zip", zipped(("report.json", RFC8460_EXAMPLE)), "application/zip", None),
]


@pytest.mark.parametrize(("encoding", "payload", "media_type", "filename"), DMARC_FORMS + TLS_FORMS)
def test_every_encoding_as_an_attachment_and_as_a_file(
    encoding: str, payload: bytes, media_type: str, filename: str | None
) -> None:
    message = message_with(payload, media_type, filename)
    for found in (from_message(message), from_file(payload), from_file(message)):
        assert found.encoding == encoding
        assert found.kind == ("tls" if payload in [form[1] for form in TLS_FORMS] else "dmarc")
        assert found.data in (RFC9990_REPORT, RFC8460_EXAMPLE)


def test_a_report_as_the_whole_body_and_with_a_bom() -> None:
    message = b"From: a@reporter.example\r\nContent-Type: text/xml\r\n\r\n" + RFC7489_REPORT
    report = read_message(message, expect="dmarc")
    assert isinstance(report, dmarc.AggregateReport) and report.metadata.org_name == "acme.com"
    assert isinstance(read_file(b"\xef\xbb\xbf" + RFC8460_EXAMPLE), tls.TLSReport)


# Round trip: what our report jobs send, we read back with the same counts.


def dmarc_rows() -> list[Row]:
    return [
        Row(
            count=index + 1,
            source_ip=f"192.0.2.{index}" if index % 2 else f"2001:db8::{index + 1:x}",
            disposition="none" if index % 3 else "reject",
            requested_disposition=None,
            dkim_aligned=index % 2 == 0,
            spf_aligned=index % 3 == 0,
            override_reasons=json.dumps(["forwarded"] if index % 5 == 0 else []),
            envelope_to="example.org",
            envelope_from="sender.example",
            header_from="sender.example",
            dkim_results=json.dumps([["sender.example", "s1", "pass"]]),
            spf_results=json.dumps([["sender.example", "mfrom", "softfail"]]),
        )
        for index in range(40)
    ]


def test_our_dmarc_report_reads_back_with_the_same_counts() -> None:
    published = PolicyPublished("sender.example", "reject", "quarantine", None, "s", "r", True, "treewalk")
    writer = ReportWriter(
        Metadata("mail.example.org", "postmaster@example.org", "r-1", 1764547200, 1764633599), published
    )
    rows = dmarc_rows()
    writer.add_all(rows)
    gzipped_report = writer.finish()
    report = dmarc_mail.ReportMail(
        "sender.example", "r-1", 1764547200, 1764633599, writer.rows, writer.messages, gzipped_report
    )
    message = dmarc_mail.compose(report, SENDER, ["dmarc@sender.example"], NOW).octets()
    for read in (read_message(message, expect="dmarc"), read_file(gzipped_report)):
        assert isinstance(read, dmarc.AggregateReport)
        assert (len(read.records), read.messages) == (writer.rows, writer.messages) == (40, 820)
        assert read.metadata.report_id == "r-1" and read.metadata.begin == datetime(2025, 12, 1, tzinfo=UTC)
        assert (read.policy.domain, read.policy.p, read.policy.sp, read.policy.testing) == (
            "sender.example",
            "reject",
            "quarantine",
            "y",
        )
        assert [r.source_ip for r in read.records] == [row.source_ip for row in rows]
        assert [r.count for r in read.records] == [row.count for row in rows]
        assert read.records[0].reasons == (dmarc.Reason("trusted_forwarder"),)
        assert read.records[1].dkim_results == (dmarc.DKIMResult("sender.example", "s1", "pass"),)


def test_our_tls_report_reads_back_with_the_same_counts() -> None:
    sts = PolicyRef(
        "sts", "example.net", ("version: STSv1", "mode: enforce", "mx: mx1.example.net"), ("mx1.example.net",)
    )
    tlsa = PolicyRef("tlsa", "mx1.example.net", ("3 1 1 abcdef",), ("mx1.example.net",))
    expired = FailureDetail(
        "certificate-expired", "192.0.2.1", "mx1.example.net", "mx1.example.net", "198.51.100.7"
    )
    written = build_report(
        "example.net",
        date(2026, 11, 24),
        "example.org",
        [PolicyResult(sts, 10, 3, (FailureCount(expired, 3),)), PolicyResult(tlsa, 4, 0)],
    )
    message = tls_message.compose(written, written.gzipped(), SENDER, ["tls@example.net"], NOW)
    for read in (
        read_message(message, expect="tls"),
        read_file(written.gzipped()),
        read_file(written.json_bytes()),
    ):
        assert isinstance(read, tls.TLSReport)
        assert read.sessions == written.sessions == (14, 3)
        assert (read.report_id, read.organization_name, read.contact_info) == (
            written.id,
            "example.org",
            "postmaster@example.org",
        )
        assert [p.policy_type for p in read.policies] == ["sts", "tlsa"]
        assert read.policies[0].mx_host == ("mx1.example.net",)
        (detail,) = read.policies[0].failure_details
        assert (detail.result_type, detail.failed_session_count, detail.receiving_mx_helo) == (
            "certificate-expired",
            3,
            "mx1.example.net",
        )
        assert read.start == datetime(2026, 11, 24, tzinfo=UTC)


# Reports from elsewhere, and a second reader: the sample reports the `dmarc` package ships (MIT; read
# where it is installed, not copied), and parsedmarc's counts of the same documents.

DMARC_PACKAGE_SAMPLES = Path(dmarc_package.__file__).parent / "tests" / "report" / "data"


def our_report_xml() -> bytes:
    published = PolicyPublished("sender.example", "none", None, None, "r", "r", False, "psl")
    writer = ReportWriter(Metadata("mail.example.org", "postmaster@example.org", "r-2", 1, 86400), published)
    writer.add_all(dmarc_rows())
    return gzip.decompress(writer.finish())


@pytest.mark.parametrize("name", ["samplereport.xml", "samplereport-2.0.xml"])
def test_the_dmarc_package_samples(name: str) -> None:
    report = read_file((DMARC_PACKAGE_SAMPLES / name).read_bytes())
    assert isinstance(report, dmarc.AggregateReport)
    assert report.policy.domain and report.records and report.metadata.begin.tzinfo is UTC


@pytest.mark.parametrize(
    "document",
    [
        RFC9990_REPORT,
        RFC7489_REPORT,
        (DMARC_PACKAGE_SAMPLES / "samplereport.xml").read_bytes(),
        (DMARC_PACKAGE_SAMPLES / "samplereport-2.0.xml").read_bytes(),
        our_report_xml(),
    ],
    ids=["rfc9990", "rfc7489", "dmarc-package", "dmarc-package-2.0", "ours"],
)
def test_parsedmarc_reads_the_same_records(document: bytes) -> None:
    theirs = parsedmarc.parse_aggregate_report_xml(document.decode(), offline=True)
    ours = dmarc.parse(document)
    assert [(r.source_ip, r.count) for r in ours.records] == [
        (r["source"]["ip_address"], r["count"]) for r in theirs["records"]
    ]
    assert ours.metadata.report_id == theirs["report_metadata"]["report_id"]
    assert ours.policy.domain == theirs["policy_published"]["domain"]
