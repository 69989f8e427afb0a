"""The report check of the verdict step (SPEC R6.2, R6.3) at the unit level: which DKIM results
authenticate a TLS report, which addresses receive which reports, and the end date's clock skew."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from app.auth.types import DKIMResult
from app.config import load_config
from app.inreports.dmarc import parse_head
from app.models.base import utcnow
from app.verdict import reports
from app.verdict.reports import (
    CLOCK_SKEW,
    ReportCheck,
    check_report,
    reporting_addresses,
    signed_by_domain_or_parent,
    tlsrpt_signature,
)
from app.verdict.types import Recipient
from tests.inreports.samples import RFC9990_REPORT, gzipped, message_with
from tests.support.configs import REPORTING_ADDRESSES, write_config
from tests.verdict.test_analysis import outcome

PASS = DKIMResult("pass", "reporter.example", "sel")


@pytest.mark.parametrize(
    ("result", "acceptable"),
    [
        (PASS, True),
        (replace(PASS, key_services=("tlsrpt",), status="policy"), True),  # verified, key for tlsrpt only
        (replace(PASS, key_services=("email", "TLSRPT")), True),
        (replace(PASS, key_services=("email",)), False),
        (replace(PASS, key_services=("other",), status="policy"), False),
        (replace(PASS, has_length_limit=True), False),
        (replace(PASS, status="fail"), False),
        (replace(PASS, status="permerror"), False),
    ],
)
def test_which_signatures_authenticate_a_tls_report(result: DKIMResult, acceptable: bool) -> None:
    assert tlsrpt_signature(result, "reporter.example") is acceptable


@pytest.mark.parametrize(
    ("signer", "from_domain", "acceptable"),
    [
        ("reporter.example", "reporter.example", True),
        ("reporter.example", "mx.mail.reporter.example", True),
        ("reporter.co.uk", "mail.reporter.co.uk", True),
        ("co.uk", "reporter.co.uk", False),  # the public suffix
        ("uk", "reporter.co.uk", False),
        ("mail.reporter.example", "reporter.example", False),  # a child, not a parent
        ("other.example", "reporter.example", False),
        ("porter.example", "reporter.example", False),  # a suffix of the text, not a parent
        ("", "reporter.example", False),
    ],
)
def test_the_signer_is_the_from_domain_or_a_parent_below_the_suffix(
    signer: str, from_domain: str, acceptable: bool
) -> None:
    assert signed_by_domain_or_parent(signer, from_domain) is acceptable


def test_reporting_addresses_and_their_kinds(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, REPORTING_ADDRESSES))
    assert reporting_addresses(config) == {
        "dmarc-reports@example.org": "dmarc",
        "tls-reports@example.org": "tls",
        "tlsrpt@mail.example.org": "tls",
    }


def test_an_end_within_the_clock_skew_is_accepted(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, REPORTING_ADDRESSES))
    report = RFC9990_REPORT.replace(b"example.com</domain>", b"example.org</domain>")
    mail = message_with(gzipped(report), "application/gzip", "r.xml.gz")
    end = parse_head(report).metadata.end
    # The address is matched case-insensitively.
    rcpt = (Recipient("DMARC-Reports@example.org", "admin", "DMARC"),)
    passing = outcome()
    assert passing.dmarc.status == "pass"
    assert check_report(config, passing, rcpt, mail, end - CLOCK_SKEW) == ReportCheck(
        "dmarc", "dmarc-reports@example.org"
    )
    late = check_report(config, passing, rcpt, mail, end - CLOCK_SKEW - timedelta(seconds=1))
    assert late == ReportCheck("dmarc", "dmarc-reports@example.org", "report has end date in the future")
    assert (
        check_report(config, passing, (Recipient("admin@example.org", "admin", "Inbox"),), mail, end) is None
    )


def test_a_parser_bug_refuses_the_report_but_not_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injection: whatever the report parser raises, the check answers with a reason."""

    def broken(raw: bytes, expect: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(reports, "read_head", broken)
    config = load_config(write_config(tmp_path, REPORTING_ADDRESSES))
    rcpt = (Recipient("tls-reports@example.org", "admin", "TLSRPT"),)
    signed = replace(outcome(), dkim=[DKIMResult("pass", "sender.example", "sel")])
    check = check_report(config, signed, rcpt, b"Subject: x\r\n\r\n", utcnow())
    assert check == ReportCheck("tls", "tls-reports@example.org", "could not parse TLS report")
    assert "report check failed" in caplog.text
