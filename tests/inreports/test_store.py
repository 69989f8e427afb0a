"""app/inreports/store.py on SQLite and PostgreSQL: reports stored once per (reporter, report id), read back
for listing and detail, every reporter text cut to its column."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import pytest

from app.db import session_scope
from app.inreports import store
from app.inreports.dmarc import AggregateReport, DKIMResult
from app.inreports.read import read_file
from tests.inreports.samples import RFC8460_EXAMPLE, RFC9990_REPORT


def test_reports_are_stored_once_and_read_back(url: str) -> None:
    with session_scope(url) as session:
        tls_first = store.store_report(session, read_file(RFC8460_EXAMPLE), RFC8460_EXAMPLE)
        dmarc_first = store.store_report(session, read_file(RFC9990_REPORT), RFC9990_REPORT)
    with session_scope(url) as session:
        tls_again = store.store_report(session, read_file(RFC8460_EXAMPLE), RFC8460_EXAMPLE)
        dmarc_again = store.store_report(session, read_file(RFC9990_REPORT), RFC9990_REPORT)
    assert isinstance(tls_first, store.Stored) and isinstance(dmarc_first, store.Stored)
    assert tls_again == store.Duplicate(tls_first.summary)
    assert dmarc_again == store.Duplicate(dmarc_first.summary)
    summary = tls_first.summary
    assert (summary.kind, summary.org) == ("tls", "Company-X")
    assert summary.reporter == "sts-reporting@company-x.example"
    assert (summary.domain, summary.records, summary.messages) == ("company-y.example", 1, 5326 + 303)
    with session_scope(url) as session:
        listed = store.list_reports(session)
        assert {(s.kind, s.id) for s in listed} == {("tls", summary.id), ("dmarc", dmarc_first.summary.id)}
        assert store.list_reports(session, kind="tls", domain="Company-Y.example") == [summary]
        assert store.list_reports(session, kind="tls", domain="other.example") == []
        assert store.list_reports(session, kind="tls", domain="company-y.example.") == [summary]
        assert store.list_reports(session, domain="not a domain") == []
        detail = store.report_detail(session, "tls", summary.id)
        assert store.report_detail(session, "dmarc", summary.id + dmarc_first.summary.id + 1) is None
    assert detail is not None
    [policy] = detail["policies"]
    assert (policy["policy_type"], policy["successful"], policy["failed"]) == ("sts", 5326, 303)
    assert [f["failed_sessions"] for f in policy["failures"]] == [100, 200, 3]
    assert policy["failures"][2]["failure_reason_code"] == "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"


def test_dmarc_records_keep_domain_day_and_auth_results(url: str) -> None:
    report = read_file(RFC9990_REPORT)
    with session_scope(url) as session:
        stored = store.store_report(session, report, RFC9990_REPORT)
        detail = store.report_detail(session, "dmarc", stored.summary.id)
    assert detail is not None
    assert stored.summary.domain == report.policy.domain.lower()
    assert stored.summary.messages == sum(record.count for record in report.records)
    assert [r["source_ip"] for r in detail["records"]] == [r.source_ip for r in report.records]
    assert all(r["auth_results"].startswith('{"dkim":') for r in detail["records"])


def test_auth_results_too_long_for_their_column_stay_json(url: str) -> None:
    report = read_file(RFC9990_REPORT)
    assert isinstance(report, AggregateReport)
    many = tuple(DKIMResult(f"{n}.{'d' * 200}.example", "s" * 60, "pass") for n in range(100))
    record = replace(report.records[0], dkim_results=many)
    with session_scope(url) as session:
        stored = store.store_report(session, replace(report, records=(record,)), RFC9990_REPORT)
        detail = store.report_detail(session, "dmarc", stored.summary.id)
    assert detail is not None
    kept = json.loads(detail["records"][0]["auth_results"])
    assert 0 < len(kept["dkim"]) < 100 and kept["dkim"][0][0].startswith("0.")
    assert len(detail["records"][0]["auth_results"]) <= 2048


def test_long_reporter_text_is_cut_to_fit(url: str) -> None:
    report = read_file(RFC8460_EXAMPLE)
    long = replace(report, organization_name="O" * 5000, report_id="r" * 5000, contact_info="c" * 5000)
    with session_scope(url) as session:
        stored = store.store_report(session, long, RFC8460_EXAMPLE)
    assert isinstance(stored, store.Stored)
    assert (len(stored.summary.org), len(stored.summary.report_id)) == (255, 255)


def test_a_raw_document_is_kept_gzipped_up_to_the_cap(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gzip.decompress(store._raw(RFC8460_EXAMPLE) or b"") == RFC8460_EXAMPLE
    monkeypatch.setattr(store, "RAW_CAP", 10)
    assert store._raw(RFC8460_EXAMPLE) is None
    with session_scope(url) as session:
        stored = store.store_report(session, read_file(RFC8460_EXAMPLE), RFC8460_EXAMPLE)
    assert isinstance(stored, store.Stored)
