"""Hostile and broken reports: each refused with its fixed reason, quickly, with memory bounded.

Memory is measured with tracemalloc (it sees every bytes object zlib and the parsers allocate): the peak
while a bomb is refused stays within the decompression cap plus a small margin, never the bomb's size.
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from app.inreports import dmarc, tls, unpack
from app.inreports.errors import DMARC_UNPARSABLE, POLICY_DOMAIN_UNPARSABLE, TLS_UNPARSABLE, ReportError
from app.inreports.read import read_message
from app.inreports.unpack import decompressed_cap, from_file, from_message
from tests.inreports import samples
from tests.inreports.samples import gzipped, message_with, zipped

MiB = 1024 * 1024
GiB = 1024 * MiB
MARGIN = 4 * MiB  # parser state, the input's copies, the test's own objects


def refused(action: Callable[[], object]) -> tuple[ReportError, int, float]:
    """The error `action` raises, the peak memory it allocated meanwhile and the seconds it took."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ReportError) as info:
            action()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return info.value, peak, time.monotonic() - started


def refusal(action: Callable[[], object]) -> tuple[str, str]:
    error, _, seconds = refused(action)
    assert seconds < 5
    return error.reason, error.detail


def zeros_gzip(size: int) -> bytes:
    """`size` zero bytes, gzipped, compressed a chunk at a time (the test never holds the whole)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(MiB)
    parts = [compressor.compress(chunk) for _ in range(size // MiB)]
    return b"".join(parts) + compressor.flush()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return zeros_gzip(GiB)


def zeros_zip(size: int) -> bytes:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("report.xml", "w") as member,
    ):
        chunk = bytes(MiB)
        for _ in range(size // MiB):
            member.write(chunk)
    return buffer.getvalue()


# XML attacks (defusedxml) and the XML bounds.

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<feedback><report_metadata><org_name>&xxe;</org_name></report_metadata></feedback>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<feedback><report_metadata><org_name>&lol9;</org_name></report_metadata></feedback>"""


@pytest.mark.parametrize("document", [XXE, BILLION_LAUGHS], ids=["xxe", "billion-laughs"])
def test_dtds_and_entities_are_refused(document: bytes) -> None:
    error, peak, seconds = refused(lambda: read_message(message_with(gzipped(document), "application/gzip")))
    assert (error.reason, error.detail) == (DMARC_UNPARSABLE, "malformed aggregate report")
    assert "root:" not in str(error) and "lol" not in str(error)
    assert peak < MARGIN and seconds < 1


def test_deep_nesting_is_refused_at_the_depth_bound() -> None:
    deep = b"<feedback>" + b"<a>" * 1_000_000 + b"</a>" * 1_000_000 + b"</feedback>"
    error, peak, seconds = refused(lambda: dmarc.parse(deep))
    assert (error.reason, error.detail) == (DMARC_UNPARSABLE, "elements nested too deeply")
    assert peak < MARGIN and seconds < 2


def records(count: int) -> bytes:
    record = samples.RFC7489_REPORT.split(b"<record>")[1].split(b"</record>")[0]
    head, _, _ = samples.RFC7489_REPORT.partition(b"<record>")
    return head + b"".join(b"<record>" + record + b"</record>" for _ in range(count)) + b"</feedback>"


def test_record_and_element_counts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(dmarc.parse(records(50)).records) == 50
    monkeypatch.setattr(dmarc, "MAX_RECORDS", 49)
    assert refusal(lambda: dmarc.parse(records(50))) == (DMARC_UNPARSABLE, "too many records")
    crowded = samples.RFC7489_REPORT.replace(b"</auth_results>", b"<x/>" * 1001 + b"</auth_results>")
    assert refusal(lambda: dmarc.parse(crowded)) == (DMARC_UNPARSABLE, "record too large")
    monkeypatch.setattr(dmarc, "MAX_ELEMENTS", 200)
    assert refusal(lambda: dmarc.parse(records(20))) == (DMARC_UNPARSABLE, "too many elements")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"<count>2</count>", b"<count>-1</count>"),
        (b"<count>2</count>", b"<count>2147483648</count>"),
        (b"<count>2</count>", b"<count>1e3</count>"),
        (b"<count>2</count>", b"<count>\xd9\xa3</count>"),  # an Arabic-Indic digit: isdigit(), not a count
        (b"<count>2</count>", b""),
        (b"72.150.241.94", b"72.150.241.294"),
        (b"72.150.241.94", b"<script>alert(1)</script>"),
        (b"<report_id>9391651994964116463</report_id>", b""),
        (b"<begin>1335571200</begin>", b"<begin>99999999999999</begin>"),
        (b"<end>1335657599</end>", b"<end>1</end>"),  # ends before it begins
        (b"<pct>100</pct>", b"<pct>101</pct>"),
        (b"<header_from>example.com</header_from>", b""),
        (b"</feedback>", b""),  # truncated
        (b"<feedback>", b"<report>"),
    ],
)
def test_malformed_aggregate_reports_are_refused(old: bytes, new: bytes) -> None:
    document = samples.RFC7489_REPORT.replace(old, new)
    error, _, _ = refused(lambda: dmarc.parse(document))
    assert error.reason == DMARC_UNPARSABLE
    assert "script" not in str(error) and "294" not in str(error), "attacker text is never echoed"


@pytest.mark.parametrize("domain", [b"", b"exa mple.com", b"-x-.example", b"a" * 300, b"example..com"])
def test_a_published_policy_domain_must_be_a_domain_name(domain: bytes) -> None:
    document = samples.RFC7489_REPORT.replace(
        b"<domain>example.com</domain>", b"<domain>" + domain + b"</domain>", 1
    )
    reason = DMARC_UNPARSABLE if not domain else POLICY_DOMAIN_UNPARSABLE
    assert refusal(lambda: dmarc.parse(document))[0] == reason


def test_a_report_without_metadata_is_refused() -> None:
    document = (
        samples.RFC9990_REPORT.split(b"<report_metadata>")[0]
        + samples.RFC9990_REPORT.split(b"</report_metadata>")[1]
    )
    assert refusal(lambda: dmarc.parse(document)) == (
        DMARC_UNPARSABLE,
        "report metadata or published policy missing",
    )


# Bombs and broken archives.


def test_a_gzip_bomb_is_refused_at_the_cap_without_inflating_it(gzip_bomb: bytes) -> None:
    cap = decompressed_cap(len(gzip_bomb))
    assert cap <= unpack.MAX_DECOMPRESSED
    for action in (
        lambda: from_file(gzip_bomb),
        lambda: from_message(message_with(gzip_bomb, "application/tlsrpt+gzip"), expect="tls"),
    ):
        error, peak, seconds = refused(action)
        assert error.detail == "report too large when decompressed"
        assert peak < cap + MARGIN + 4 * len(gzip_bomb), f"peak {peak / MiB:.1f} MiB"
        assert seconds < 5
    assert refused(lambda: from_message(message_with(gzip_bomb, "application/tlsrpt+gzip")))[0].reason == (
        TLS_UNPARSABLE
    )


def test_the_ratio_bound_is_met_before_the_size_bound() -> None:
    bomb = zeros_gzip(16 * MiB)  # about 16 KiB: far over 100:1, far under 50 MiB
    error, peak, _ = refused(lambda: from_file(bomb))
    assert error.detail == "report too large when decompressed"
    assert peak < unpack.RATIO_FLOOR + MARGIN


def test_a_zip_bomb_is_refused_by_its_declared_size() -> None:
    bomb = zeros_zip(GiB // 4)
    error, peak, seconds = refused(lambda: from_message(message_with(bomb, "application/zip")))
    assert (error.reason, error.detail) == (DMARC_UNPARSABLE, "report too large when decompressed")
    assert peak < MARGIN + 4 * len(bomb) and seconds < 5


def test_a_zip_member_that_lies_about_its_size_is_cut_at_the_cap() -> None:
    document = b"<feedback>" + b" " * (4 * MiB) + b"</feedback>"
    archive = bytearray(zipped(("report.xml", document)))
    honest = len(document).to_bytes(4, "little")
    small = (1000).to_bytes(4, "little")
    archive = bytearray(bytes(archive).replace(honest, small))  # local header and central directory
    assert refusal(lambda: from_file(bytes(archive)))[0] == DMARC_UNPARSABLE


def encrypted_zip() -> bytes:
    """zipfile writes no encrypted members: the "encrypted" flag (bit 0) is set in both headers by hand."""
    archive = bytearray(zipped(("report.xml", samples.RFC9990_REPORT)))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        archive[archive.index(signature) + flags_at] |= 0x1
    return bytes(archive)


@pytest.mark.parametrize(
    ("archive", "detail"),
    [
        (
            zipped(("a.xml", samples.RFC9990_REPORT), ("b.xml", samples.RFC9990_REPORT)),
            "zip archive must hold exactly one file",
        ),
        (zipped(), "zip archive must hold exactly one file"),
        (zipped(("../../etc/report.xml", samples.RFC9990_REPORT)), "zip member name not allowed"),
        (zipped(("/tmp/report.xml", samples.RFC9990_REPORT)), "zip member name not allowed"),
        (zipped(("dir/", b"")), "zip member name not allowed"),
        (encrypted_zip(), "encrypted zip member"),
        (zipped(("report.xml", samples.RFC9990_REPORT))[:-30], "corrupt zip archive"),
        (zipped(("report.xml", samples.RFC9990_REPORT * 20))[:200], "corrupt zip archive"),
    ],
    ids=["two-files", "empty", "dot-dot", "absolute", "directory", "encrypted", "truncated-end", "truncated"],
)
def test_zip_archives_must_hold_one_plain_file(archive: bytes, detail: str) -> None:
    assert refusal(lambda: from_file(archive)) == (DMARC_UNPARSABLE, detail)


def test_broken_gzip_is_refused() -> None:
    whole = gzipped(samples.RFC9990_REPORT * 10)
    assert refusal(lambda: from_file(whole[: len(whole) // 2])) == (DMARC_UNPARSABLE, "truncated gzip data")
    corrupt = whole[:20] + bytes(b ^ 0xFF for b in whole[20:40]) + whole[40:]
    assert refusal(lambda: from_file(corrupt)) == (DMARC_UNPARSABLE, "corrupt gzip data")
    assert refusal(lambda: from_file(whole + b"junk")) == (DMARC_UNPARSABLE, "data after the gzip stream")


# Media types and message structure.


XML, JSON = samples.RFC9990_REPORT, samples.RFC8460_EXAMPLE
MISMATCH = "content does not match its media type"


@pytest.mark.parametrize(
    ("payload", "media_type", "expect", "reason", "detail"),
    [
        (b"%PDF-1.4", "application/pdf", "dmarc", DMARC_UNPARSABLE, "no report attached"),
        (b"%PDF-1.4", "application/pdf", "tls", TLS_UNPARSABLE, "no report attached"),
        (XML, "application/tlsrpt+json", None, TLS_UNPARSABLE, "not a report document"),
        (gzipped(JSON), "application/tlsrpt+json", None, TLS_UNPARSABLE, MISMATCH),
        (XML, "application/gzip", None, DMARC_UNPARSABLE, MISMATCH),
        (gzipped(XML), "text/xml", None, DMARC_UNPARSABLE, MISMATCH),
        (JSON, "text/xml", None, DMARC_UNPARSABLE, "not a report document"),
        (b"", "application/gzip", None, DMARC_UNPARSABLE, "empty report"),
        (XML, "application/gzip", "tls", TLS_UNPARSABLE, MISMATCH),  # the address decides the reason
        (gzipped(JSON)[:-9], "application/gzip", "tls", TLS_UNPARSABLE, "truncated gzip data"),
    ],
)
def test_wrong_media_types_are_refused(
    payload: bytes, media_type: str, expect: unpack.Kind | None, reason: str, detail: str
) -> None:
    message = message_with(payload, media_type, "report.pdf" if media_type == "application/pdf" else None)
    assert refusal(lambda: from_message(message, expect)) == (reason, detail)


def test_messages_must_carry_exactly_one_report_and_be_of_bounded_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = message_with(samples.RFC9990_REPORT, "text/xml")
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    parsed.add_attachment(
        gzipped(samples.RFC9990_REPORT), maintype="application", subtype="gzip", filename="b.xml.gz"
    )
    assert refusal(lambda: from_message(parsed.as_bytes())) == (DMARC_UNPARSABLE, "several reports attached")
    monkeypatch.setattr(unpack, "MAX_MESSAGE", len(message) - 1)
    assert refusal(lambda: from_message(message, "tls")) == (TLS_UNPARSABLE, "message too large")
    monkeypatch.setattr(unpack, "MAX_COMPRESSED", 100)
    assert refusal(lambda: from_file(gzipped(samples.RFC9990_REPORT))) == (
        DMARC_UNPARSABLE,
        "report too large",
    )


def test_a_message_of_many_parts_is_refused() -> None:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(500))
    message = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n"
    assert refusal(lambda: from_message(message)) == (DMARC_UNPARSABLE, "too many MIME parts")


def test_deeply_nested_multiparts_are_refused() -> None:
    nested = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level)
        for level in range(5000)
    )
    message = nested + b"Content-Type: text/xml\r\n\r\n" + samples.RFC7489_REPORT
    assert refusal(lambda: from_message(message)) == (DMARC_UNPARSABLE, "too many MIME parts")


# JSON bounds and malformed TLS reports.


def test_a_million_nested_arrays_are_refused_before_parsing() -> None:
    nested = b"[" * 1_000_000 + b"]" * 1_000_000
    error, peak, seconds = refused(lambda: tls.parse(nested))
    assert (error.reason, error.detail) == (TLS_UNPARSABLE, "too many JSON arrays and objects")
    assert peak < MARGIN and seconds < 1
    wrapped = message_with(b'{"policies": ' + nested + b"}", "application/tlsrpt+json")
    assert refusal(lambda: read_message(wrapped)) == (TLS_UNPARSABLE, "too many JSON arrays and objects")
    # Gzipped, so much repetition is refused sooner, by the decompression ratio.
    bomb = message_with(gzipped(b'{"policies": ' + nested + b"}"), "application/tlsrpt+gzip")
    assert refusal(lambda: read_message(bomb)) == (TLS_UNPARSABLE, "report too large when decompressed")


def test_nesting_under_the_container_bound_is_stopped_by_json_recursion_limit() -> None:
    nested = b'{"policies": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refusal(lambda: tls.parse(nested)) == (TLS_UNPARSABLE, "malformed TLS report")


def example_with(change: Callable[[dict[str, Any]], None]) -> bytes:
    report = json.loads(samples.RFC8460_EXAMPLE)
    change(report)
    return json.dumps(report).encode()


def _set(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    """A change to the example: the value at `path` (keys and list indexes) replaced."""

    def change(report: dict[str, Any]) -> None:
        target: Any = report
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


POLICY = ("policies", 0)


@pytest.mark.parametrize(
    "change",
    [
        _set((*POLICY, "summary", "total-failure-session-count"), -1),
        _set((*POLICY, "summary", "total-failure-session-count"), 2**31),
        _set((*POLICY, "summary", "total-failure-session-count"), True),
        _set((*POLICY, "summary", "total-failure-session-count"), 1.5),
        _set((*POLICY, "summary", "total-failure-session-count"), "303"),
        _set((*POLICY, "policy", "policy-type"), "<b>dane</b>"),
        _set((*POLICY, "policy", "policy-domain"), ["company-y.example"]),
        _set((*POLICY, "policy", "policy-domain"), "company y.example"),
        _set((*POLICY, "failure-details", 0, "failed-session-count"), None),
        _set((*POLICY, "failure-details"), {"result-type": "x"}),
        _set(("date-range", "start-datetime"), "2016-04-01T00:00:00"),  # no zone offset
        _set(("date-range", "start-datetime"), "yesterday"),
        _set(("date-range", "start-datetime"), "2016-04-02T00:00:00Z"),  # after the end
        _set(("policies",), {}),
        _set(("policies",), [{"policy": {}}] * 10_001),
        lambda report: report.pop("report-id"),
    ],
)
def test_malformed_tls_reports_are_refused(change: Callable[[dict[str, Any]], None]) -> None:
    error, _, _ = refused(lambda: tls.parse(example_with(change)))
    assert error.reason == TLS_UNPARSABLE
    assert "<b>" not in str(error)


@pytest.mark.parametrize("document", [b"{", b"[]", b'"report"', b"{}", b"\xff\xfe{", b"1" * 5000])
def test_documents_that_are_not_tls_reports_are_refused(document: bytes) -> None:
    assert refusal(lambda: tls.parse(document))[0] == TLS_UNPARSABLE
