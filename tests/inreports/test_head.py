"""The head of a report (app/inreports/read.py `read_head`, app/inreports/dmarc.py `parse_head`): what the
verdict step reads of a report before the SMTP reply, within the same bounds as the whole parse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.inreports import dmarc
from app.inreports.errors import Kind, ReportError
from app.inreports.read import read_head
from tests.inreports.samples import RFC7489_REPORT, RFC8460_EXAMPLE, RFC9990_REPORT, gzipped, message_with


@pytest.mark.parametrize("document", [RFC9990_REPORT, RFC7489_REPORT])
def test_the_head_is_what_the_whole_parse_reads(document: bytes) -> None:
    whole = dmarc.parse(document)
    assert dmarc.parse_head(document) == dmarc.Head(whole.metadata, whole.policy)


def test_records_after_the_head_are_not_read() -> None:
    broken = RFC9990_REPORT.replace(b"<count>123</count>", b"<count>-1</count>")
    with pytest.raises(ReportError, match="number out of range"):
        dmarc.parse(broken)
    assert dmarc.parse_head(broken).policy.domain == "example.com"


def test_nothing_after_the_head_is_even_parsed_as_xml() -> None:
    head_only = RFC9990_REPORT.split(b"<record>")[0]  # cut off: not well-formed XML any more
    with pytest.raises(ReportError):
        dmarc.parse(head_only)
    assert dmarc.parse_head(head_only).metadata.report_id == "3v98abbp8ya9n3va8yr8oa3ya"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"<feedback><report_metadata/></feedback>", "could not parse report"),
        (b"<other/>", "could not parse report"),
        (
            RFC9990_REPORT.replace(b"<domain>example.com</domain>", b"<domain>not a domain!</domain>"),
            "could not parse domain in published policy",
        ),
        (b"<feedback><report_metadata>" + b"<x>" * 20 + b"</x>" * 20, "could not parse report"),  # too deep
        (b'<!DOCTYPE x [<!ENTITY a "b">]><feedback/>', "could not parse report"),
    ],
)
def test_a_bad_head_is_refused_with_its_reason(document: bytes, reason: str) -> None:
    with pytest.raises(ReportError) as refused:
        dmarc.parse_head(document)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("document", "media_type", "kind", "domain", "end"),
    [
        (RFC9990_REPORT, "application/gzip", "dmarc", "example.com", datetime(2023, 9, 12, 23, 59, 59)),
        (
            RFC8460_EXAMPLE,
            "application/tlsrpt+gzip",
            "tls",
            "company-y.example",
            datetime(2016, 4, 1, 23, 59, 59),
        ),
    ],
)
def test_read_head_of_each_kind(
    document: bytes, media_type: str, kind: Kind, domain: str, end: datetime
) -> None:
    head = read_head(message_with(gzipped(document), media_type, "report.gz"), kind)
    assert (head.kind, head.domains, head.end) == (kind, (domain,), end.replace(tzinfo=UTC))


def test_a_report_of_the_other_kind_is_refused_with_the_address_reason() -> None:
    dmarc_mail = message_with(gzipped(RFC9990_REPORT), "application/gzip", "r.xml.gz")
    with pytest.raises(ReportError) as refused:
        read_head(dmarc_mail, "tls")
    assert refused.value.reason == "could not parse TLS report"
