"""The aggregate report and its mail (SPEC R2.4-R2.6): RFC 9990 XML checked against RFC 9990's own XSD
(as the PyPI `dmarc` package ships it, unchanged) and read back by the strict RFC 9990 parser of the
PyPI `dmarc-report` package and by parsedmarc (peers' parsers), the multipart message, its DKIM
signature verified by dkimpy against the loopback DNS server, and where reports go (rua parsing,
external destination checks)."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from email.policy import default
from importlib.resources import files
from pathlib import Path
from typing import Any

import dkim.asyncsupport
import parsedmarc
import pytest
from dmarc_report.parser import DMARCParser
from dmarc_report.schema import Report, ReportFormat
from lxml import etree
from sqlalchemy import select

from app.auth.dmarc import DMARCRecords, parse_record
from app.config import Config, load_config
from app.db import session_scope
from app.dmarcreports.evaluations import store_evaluation
from app.dmarcreports.job import send_dmarc_reports
from app.dmarcreports.rua import RUAError, parse_mailto, report_destinations
from app.dmarcreports.xml import Metadata, PolicyPublished, ReportWriter, Row
from app.dns import Resolver
from app.migrate import upgrade_database
from app.models import OutgoingMessage
from tests.reports.test_dmarc_evaluations import evaluation
from tests.reports.test_tlsreports import dkim_config
from tests.support.dnsserver import DNSTestServer

# RFC 9990 Appendix A, the working group's final schema, never a copy edited until our output passed.
RFC_9990_XSD = files("dmarc").joinpath("report/schemas/dmarc-2.0.xsd")
SCHEMA = etree.XMLSchema(etree.fromstring(RFC_9990_XSD.read_bytes()))
NOW = datetime(2026, 11, 26, 0, 1, 15, tzinfo=UTC)  # the run just after midnight reports yesterday
POLICY = "v=DMARC1; p=reject; sp=quarantine; np=reject; fo=1; rua=mailto:dmarc@sender.example!10m"


def migrated(config: Config) -> Config:
    upgrade_database(config.resolved_database_url)
    return config


def queued(config: Config) -> dict[str, list[OutgoingMessage]]:
    """Queued report messages by file path."""
    by_path: dict[str, list[OutgoingMessage]] = defaultdict(list)
    with session_scope(config.resolved_database_url) as session:
        for row in session.scalars(select(OutgoingMessage).order_by(OutgoingMessage.id)):
            by_path[row.path].append(row)
    return dict(by_path)


def the_report(config: Config) -> tuple[bytes, list[OutgoingMessage]]:
    ((path, rows),) = queued(config).items()
    return (config.data_dir / path).read_bytes(), rows


def attachment(message: bytes) -> tuple[Message, bytes]:
    parsed = message_from_bytes(message, policy=default)
    (part,) = [p for p in parsed.walk() if p.get_content_type() == "application/gzip"]
    return part, gzip.decompress(part.get_payload(decode=True))


def strictly_parsed(xml: bytes) -> Report:
    """The report valid under RFC 9990's XSD and read as RFC 9990 by dmarc-report, without warnings."""
    SCHEMA.assertValid(etree.fromstring(xml))
    report = DMARCParser.parse_bytes(xml)
    assert (report.format, report.version, report.warnings) == (ReportFormat.RFC_9990, "1.0", [])
    return report


def parsed_report(xml: bytes) -> dict[str, Any]:
    strictly_parsed(xml)
    return parsedmarc.parse_aggregate_report_xml(xml.decode(), offline=True)


def run_job(config: Config, resolver: Resolver, now: datetime = NOW) -> Any:
    import asyncio

    return asyncio.run(send_dmarc_reports(config, now=now, spacing=timedelta(0), resolver=resolver))


# The whole report, from stored evaluations.


def test_report_validates_against_rfc_9990_and_parsedmarc_reads_the_counts(
    config_file: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    config = migrated(load_config(config_file))
    dns.txt("_dmarc.sender.example", POLICY)
    evaluated = [
        # 3 identical passing messages merge into one row.
        *[evaluation(evaluated=f"2026-11-25T0{h}:00:00+00:00") for h in range(3)],
        evaluation(
            source_ip="2001:db8::25",
            disposition="reject",
            requested_disposition="reject",
            dkim_aligned=False,
            spf_aligned=False,
            header_from="sub.sender.example",
            dkim=[{"domain": "evil.example", "selector": "k", "result": "fail"}],
            spf=[{"domain": "evil.example", "scope": "mfrom", "result": "fail"}],
        ),
        evaluation(source_ip="2001:db8::25", optional=True, envelope_to="", spf=[]),
    ]
    for ev in evaluated:
        assert store_evaluation(config, ev)
    summary = run_job(config, resolver)
    assert len(summary.reports) == 1
    message, rows = the_report(config)
    assert [r.recipient for r in rows] == ["dmarc@sender.example"], "the !10m size suffix is ignored"
    assert all(r.is_dmarc_report and r.max_attempts == 5 for r in rows)
    part, xml = attachment(message)
    assert xml.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">'
    )
    report = parsed_report(xml)
    meta = report["report_metadata"]
    assert meta["org_email"] == "postmaster@mail.example.org"
    assert meta["report_id"] == summary.reports[0]
    assert meta["report_id"].startswith("20261126.00.")
    assert meta["generator"].startswith("Postwarden ")
    assert (meta["begin_date"], meta["end_date"]) == ("2026-11-25 00:00:00", "2026-11-25 23:59:59")
    policy = report["policy_published"]
    assert (policy["domain"], policy["p"], policy["sp"], policy["np"]) == (
        "sender.example",
        "reject",
        "quarantine",
        "reject",
    )
    assert (policy["testing"], policy["discovery_method"], policy["fo"]) == ("n", "treewalk", "1")
    records = {
        (r["source"]["ip_address"], r["identifiers"]["header_from"], r["count"]): r for r in report["records"]
    }
    assert sum(r["count"] for r in report["records"]) == len(evaluated)
    assert set(records) == {
        ("192.0.2.10", "sender.example", 3),
        ("2001:db8::25", "sub.sender.example", 1),
        ("2001:db8::25", "sender.example", 1),
    }
    passed = records[("192.0.2.10", "sender.example", 3)]
    assert passed["policy_evaluated"]["disposition"] == "pass", "passing DMARC under p=reject"
    assert passed["auth_results"]["dkim"][0] | {"human_result": None} == {
        "domain": "sender.example",
        "selector": "s1",
        "result": "pass",
        "human_result": None,
    }
    rejected = records[("2001:db8::25", "sub.sender.example", 1)]
    assert (rejected["policy_evaluated"]["disposition"], rejected["policy_evaluated"]["dkim"]) == (
        "reject",
        "fail",
    )
    optional = records[("2001:db8::25", "sender.example", 1)]
    assert optional["identifiers"]["envelope_to"] is None
    assert optional["auth_results"]["spf"] == [
        {"domain": "sender.example", "scope": "mfrom", "result": "none", "human_result": None}
    ], "a row without SPF results still has the one the schema requires"
    assert part.get_filename() == (
        f"mail.example.org!sender.example!{int(datetime(2026, 11, 25, tzinfo=UTC).timestamp())}"
        f"!{int(datetime(2026, 11, 26, tzinfo=UTC).timestamp()) - 1}.xml.gz"
    )


def test_report_message_is_multipart_mixed_with_text_and_the_gzipped_xml(
    config_file: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    config = migrated(load_config(config_file))
    dns.txt("_dmarc.sender.example", POLICY)
    assert store_evaluation(config, evaluation(evaluated="2026-11-25T10:00:00+00:00"))
    (report_id,) = run_job(config, resolver).reports
    message, rows = the_report(config)
    parsed = message_from_bytes(message, policy=default)
    assert parsed.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "application/gzip"]
    assert parsed["From"] == "postmaster@mail.example.org"
    assert rows[0].sender == "postmaster@mail.example.org"
    assert parsed["To"] == "dmarc@sender.example"
    assert (
        parsed["Subject"]
        == f"Report Domain: sender.example Submitter: mail.example.org Report-ID: <{report_id}>"
    )
    assert parsed["Message-ID"] == f"<{report_id}@mail.example.org>"
    assert parsed["Auto-Submitted"] == "auto-generated"
    text = next(parsed.iter_parts()).get_content()
    assert "Policy domain: sender.example" in text and "Rows: 1, messages: 1" in text
    assert "DKIM-Signature" not in parsed, "the base test config has no DKIM keys"


async def test_report_mail_is_dkim_signed_for_the_host_domain_and_verifies(
    tmp_path: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    config = migrated(dkim_config(tmp_path / "dkim", dns))
    dns.txt("_dmarc.sender.example", POLICY)
    assert store_evaluation(config, evaluation(evaluated="2026-11-25T10:00:00+00:00"))
    await send_dmarc_reports(config, now=NOW, spacing=timedelta(0), resolver=resolver)
    message, _ = the_report(config)
    parsed = message_from_bytes(message, policy=default)
    signatures = parsed.get_all("DKIM-Signature")
    assert len(signatures) == 2, "one signature per configured selector (ed25519 and rsa)"
    assert all("d=example.org;" in "".join(s.split()) for s in signatures), "signed for the host's domain"
    for index in range(len(signatures)):
        assert await dkim.asyncsupport.DKIM(message).verify(idx=index, dnsfunc=resolver.dkim_txt)
    forged = message.replace(b"Report Domain: sender.example", b"Report Domain: sender.exampl3")
    assert not await dkim.asyncsupport.DKIM(forged).verify(dnsfunc=resolver.dkim_txt)


# The XML itself.

PUBLISHED = PolicyPublished("sender.example", "reject", None, None, "s", "r", True, "treewalk")


def row(**changes: Any) -> Row:
    values: dict[str, Any] = {
        "count": 1,
        "source_ip": "192.0.2.1",
        "disposition": "none",
        "requested_disposition": None,
        "dkim_aligned": False,
        "spf_aligned": False,
        "override_reasons": "[]",
        "envelope_to": "example.org",
        "envelope_from": "sender.example",
        "header_from": "sender.example",
        "dkim_results": "[]",
        "spf_results": json.dumps([["sender.example", "mfrom", "fail"]]),
    }
    return Row(**{**values, **changes})


def write(rows: list[Row], errors: list[str] | None = None, policy: PolicyPublished = PUBLISHED) -> bytes:
    writer = ReportWriter(
        Metadata("mail.example.org", "postmaster@mail.example.org", "r1", 1, 2, errors or []), policy
    )
    writer.add_all(rows)
    return gzip.decompress(writer.finish())


def test_reasons_are_given_when_a_failing_message_got_less_than_the_policy() -> None:
    xml = write(
        [
            row(disposition="quarantine", requested_disposition="reject"),  # t=y: one level milder
            row(source_ip="192.0.2.2", override_reasons=json.dumps(["forwarded", "mailing_list", "odd one"])),
            row(source_ip="192.0.2.3", disposition="reject", requested_disposition="reject"),
        ]
    )
    records = {r["source"]["ip_address"]: r["policy_evaluated"] for r in parsed_report(xml)["records"]}
    assert records["192.0.2.1"]["policy_override_reasons"] == [{"type": "policy_test_mode", "comment": None}]
    assert records["192.0.2.2"]["policy_override_reasons"] == [
        {"type": "trusted_forwarder", "comment": None},  # RFC 9990 dropped "forwarded"
        {"type": "mailing_list", "comment": None},
        {"type": "other", "comment": "odd one"},
    ]
    assert records["192.0.2.3"]["policy_override_reasons"] == []


def test_text_is_escaped_and_the_problems_share_one_error_element() -> None:
    xml = write(
        [row(header_from="a<b>&c.example")], errors=["rua mailto:x@y: <not> allowed", "second & last"]
    )
    tree = etree.fromstring(xml)
    ns = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}
    assert (
        tree.findall("d:report_metadata/d:error", ns)[0].text
        == "rua mailto:x@y: <not> allowed; second & last"
    )
    assert tree.find("d:record/d:identifiers/d:header_from", ns).text == "a<b>&c.example"
    assert parsed_report(xml)["report_metadata"]["errors"] == ["rua mailto:x@y: <not> allowed; second & last"]


def test_defaults_of_unpublished_tags_are_reported() -> None:
    policy = parsed_report(write([row()]))["policy_published"]
    assert (policy["sp"], policy["np"], policy["adkim"], policy["testing"]) == ("reject", "reject", "s", "y")
    with_sp = PolicyPublished("sender.example", "none", "quarantine", None, "r", "r", False, "treewalk")
    assert parsed_report(write([row()], policy=with_sp))["policy_published"]["np"] == "quarantine"


def test_one_spf_result_scope_mfrom_and_the_helo_result_is_left_out(
    config_file: Path, dns: DNSTestServer, resolver: Resolver
) -> None:
    """RFC 9990's schema allows one <spf>, scope mfrom: messages that differ only in their HELO result
    are one row, and a row stored with a HELO result first still reports only the mfrom one."""
    config = migrated(load_config(config_file))
    dns.txt("_dmarc.sender.example", POLICY)
    for helo in ("pass", "fail"):
        spf = [
            {"domain": "mx.sender.example", "scope": "helo", "result": helo},
            {"domain": "sender.example", "scope": "mfrom", "result": "pass"},
        ]
        assert store_evaluation(config, evaluation(evaluated="2026-11-25T10:00:00+00:00", spf=spf))
    run_job(config, resolver)
    (record,) = strictly_parsed(attachment(the_report(config)[0])[1]).records
    assert record.count == 2
    assert [(r.domain, r.scope.value, r.result.value) for r in record.auth_results.spf] == [
        ("sender.example", "mfrom", "pass")
    ]
    legacy = json.dumps([["mx.sender.example", "helo", "fail"], ["sender.example", "mfrom", "softfail"]])
    (written,) = strictly_parsed(write([row(spf_results=legacy)])).records
    assert [(r.domain, r.result.value) for r in written.auth_results.spf] == [("sender.example", "softfail")]


def test_composing_problems_share_one_error_element_beside_the_generator() -> None:
    xml = write([row()], errors=["external rua x@y.example did not opt in"])
    metadata = strictly_parsed(xml).report_metadata
    assert metadata.errors == ["external rua x@y.example did not opt in"]
    assert metadata.generator is not None and metadata.generator.startswith("Postwarden ")


def test_a_report_without_records_would_be_invalid() -> None:
    with pytest.raises(etree.DocumentInvalid):
        SCHEMA.assertValid(etree.fromstring(write([])))


# Where reports go (R2.5).


@pytest.mark.parametrize(
    ("uri", "address"),
    [
        ("mailto:dmarc@sender.example", "dmarc@sender.example"),
        ("MAILTO:Dmarc@Sender.Example.", "Dmarc@sender.example"),
        ("mailto:dmarc%2Breports@sender.example?subject=x", "dmarc+reports@sender.example"),
    ],
)
def test_mailto_uris(uri: str, address: str) -> None:
    assert parse_mailto(uri).address == address


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("https://reports.example/dmarc", "only mailto: report URIs are supported"),
        ("mailto:nobody", "not a single mailto: address"),
        ("mailto:a@b.example,c@d.example", "not a single mailto: address"),
        ("mailto:a@localhost", "is not a domain name"),
    ],
)
def test_unusable_uris(uri: str, problem: str) -> None:
    with pytest.raises(RUAError, match=problem):
        parse_mailto(uri)


def test_size_suffix_is_parsed_and_ignored() -> None:
    record = parse_record("v=DMARC1; p=none; rua=mailto:a@sender.example!10m,mailto:b@sender.example!500k")
    assert record.rua == ("mailto:a@sender.example", "mailto:b@sender.example")


async def destinations(resolver: Resolver, *ruas: str) -> Any:
    records = DMARCRecords(resolver)
    return await report_destinations(resolver, "sender.example", list(ruas), records.organizational_domain)


async def test_addresses_in_the_policy_domains_organisation_need_no_confirmation(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("_dmarc.sender.example", POLICY)
    result = await destinations(resolver, "mailto:dmarc@sender.example", "mailto:r@reports.sender.example")
    assert (result.addresses, result.skipped) == (["dmarc@sender.example", "r@reports.sender.example"], [])
    assert not any("_report._dmarc" in name for name, _ in dns.queries)


async def test_external_destination_that_opted_in_is_used(dns: DNSTestServer, resolver: Resolver) -> None:
    dns.txt("sender.example._report._dmarc.vendor.example", "v=DMARC1")
    result = await destinations(resolver, "mailto:ingest@vendor.example")
    assert (result.addresses, result.skipped, result.temporary_failure) == (
        ["ingest@vendor.example"],
        [],
        False,
    )


async def test_external_destination_without_confirmation_is_skipped_with_the_reason(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt("sender.example._report._dmarc.vendor.example", "v=spf1 -all", "some text")
    result = await destinations(resolver, "mailto:ingest@vendor.example", "https://vendor.example/x")
    assert result.addresses == []
    assert [uri for uri, _ in result.skipped] == ["mailto:ingest@vendor.example", "https://vendor.example/x"]
    assert "vendor.example has not agreed to receive reports for sender.example" in result.skipped[0][1]
    assert "sender.example._report._dmarc.vendor.example" in result.skipped[0][1]
    assert not result.temporary_failure


async def test_external_destination_check_with_a_temporary_dns_error(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.servfail("sender.example._report._dmarc.vendor.example")
    dns.txt("sender.example._report._dmarc.other.example", "v=DMARC1")
    result = await destinations(resolver, "mailto:ingest@vendor.example", "mailto:r@other.example")
    assert result.addresses == ["r@other.example"]
    assert result.temporary_failure
    assert "temporary DNS error" in result.skipped[0][1]


async def test_confirming_record_may_redirect_only_to_the_same_host(
    dns: DNSTestServer, resolver: Resolver
) -> None:
    dns.txt(
        "sender.example._report._dmarc.vendor.example", "v=DMARC1; rua=mailto:customer42@vendor.example!1m"
    )
    dns.txt("sender.example._report._dmarc.sneaky.example", "v=DMARC1; rua=mailto:victim@elsewhere.example")
    result = await destinations(resolver, "mailto:ingest@vendor.example", "mailto:x@sneaky.example")
    assert result.addresses == ["customer42@vendor.example"]
    (skipped,) = result.skipped
    assert skipped[0] == "mailto:x@sneaky.example"
    assert "redirects reports to another host" in skipped[1]
