"""The incoming report pages (app/web/reports.py): postmaster only, validated query parameters, the
numbers of seeded reports in the tables and charts, reverse names from the loopback DNS server,
reporter text shown as text; and in Chromium (screenshots reports.png and report-tls.png).

Set POSTWARDEN_SCREENSHOTS to a directory to get a copy of the screenshots there."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from app.config import Config
from app.db import session_scope
from app.dns import Resolver
from app.inreports.read import read_file
from app.inreports.store import store_report
from app.models.inreports import DMARCReport
from app.web import reports
from app.web.app import create_app
from tests.inreports.samples import RFC9990_REPORT
from tests.support.browser import keep_screenshot, logged_in_chromium
from tests.support.dnsserver import DNSTestServer
from tests.support.webclient import log_in, write_web_config

if TYPE_CHECKING:
    from playwright.sync_api import Page

PASSWORD = "correct horse battery"
BOB_PASSWORD = "bob's own password"
DOMAIN = "example.org"
TODAY = datetime.now(UTC).date()
HOSTILE_ORG = "<script>alert(1)</script>"
HOSTILE_EMAIL = '<img src=x onerror="alert(2)">@evil.example'
HOSTILE_CODE = "<i>X509</i>\x1b[31m"
HOSTILE_INFO = "<a href=javascript:alert(4)>more</a>\u202eline\nbreak"
GOOD_PTR = "mail.sender.example"


def dmarc_xml(
    org: str, email: str, report_id: str, day: date, records: list[tuple[str, int, str, str]]
) -> bytes:
    """An aggregate report beginning on `day`; records: (source IP, count, DKIM, SPF)."""
    begin = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    rows = "".join(
        f"<record><row><source_ip>{ip}</source_ip><count>{count}</count><policy_evaluated>"
        f"<disposition>none</disposition><dkim>{dkim}</dkim><spf>{spf}</spf></policy_evaluated></row>"
        f"<identifiers><header_from>{DOMAIN}</header_from></identifiers>"
        f"<auth_results><spf><domain>{DOMAIN}</domain><result>{spf}</result></spf></auth_results></record>"
        for ip, count, dkim, spf in records
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><feedback><report_metadata><org_name>{_xml(org)}</org_name>'
        f"<email>{_xml(email)}</email><report_id>{report_id}</report_id><date_range><begin>{begin}</begin>"
        f"<end>{begin + 86399}</end></date_range></report_metadata>"
        f"<policy_published><domain>{DOMAIN}</domain><p>none</p></policy_published>{rows}</feedback>"
    ).encode()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def tls_json(report_id: str, day: date, policies: list[dict[str, object]]) -> bytes:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    document = {
        "organization-name": "Company-X",
        "date-range": {
            "start-datetime": start.isoformat().replace("+00:00", "Z"),
            "end-datetime": (start + timedelta(seconds=86399)).isoformat().replace("+00:00", "Z"),
        },
        "contact-info": "tls-reports@company-x.example",
        "report-id": report_id,
        "policies": policies,
    }
    return json.dumps(document, indent=2).encode()


def tls_policy(
    kind: str, ok: int, failed: int, failures: list[dict[str, object]] | None = None
) -> dict[str, object]:
    return {
        "policy": {"policy-type": kind, "policy-domain": DOMAIN, "mx-host": [f"mx.{DOMAIN}"]},
        "summary": {"total-successful-session-count": ok, "total-failure-session-count": failed},
        "failure-details": failures or [],
    }


D2, D1, D3 = TODAY - timedelta(days=2), TODAY - timedelta(days=1), TODAY - timedelta(days=3)
DOCUMENTS = [
    dmarc_xml(
        "Big Mailbox",
        "noreply-dmarc@big.example",
        "big-1",
        D2,
        [("192.0.2.10", 120, "pass", "pass"), ("198.51.100.7", 30, "fail", "fail")],
    ),
    dmarc_xml(
        HOSTILE_ORG,
        HOSTILE_EMAIL,
        "evil-1",
        D1,
        [("192.0.2.10", 80, "pass", "fail"), ("203.0.113.5", 5, "fail", "pass")],
    ),
    dmarc_xml(
        "Big Mailbox",
        "noreply-dmarc@big.example",
        "big-old",
        TODAY - timedelta(days=60),
        [("192.0.2.99", 1000, "pass", "pass")],
    ),
    tls_json(
        "tls-1",
        D1,
        [
            tls_policy(
                "sts",
                500,
                20,
                [
                    {
                        "result-type": "certificate-expired",
                        "receiving-mx-hostname": f"mx1.{DOMAIN}",
                        "failed-session-count": 15,
                    },
                    {
                        "result-type": "validation-failure",
                        "receiving-mx-hostname": f"mx2.{DOMAIN}",
                        "failed-session-count": 5,
                        "sending-mta-ip": "198.51.100.62",
                        "failure-reason-code": HOSTILE_CODE,
                        "additional-information": HOSTILE_INFO,
                    },
                ],
            ),
            tls_policy("tlsa", 40, 0),
        ],
    ),
    tls_json("tls-0", D3, [tls_policy("sts", 100, 0)]),
]


@pytest.fixture
def web_config(tmp_path: Path, dns: DNSTestServer) -> Config:
    config = write_web_config(tmp_path / "config", dns.port, {"admin": PASSWORD, "bob": BOB_PASSWORD})
    with session_scope(config.resolved_database_url) as session:
        for document in DOCUMENTS:
            store_report(session, read_file(document), document)
    dns.add("10.2.0.192.in-addr.arpa", "PTR", f"{GOOD_PTR}.")
    dns.add("7.100.51.198.in-addr.arpa", "PTR", "x<b>y.evil.example.")  # not a host name: not shown
    return config


@pytest.fixture
def client(web_config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(web_config), base_url="http://127.0.0.1", follow_redirects=False) as c:
        yield c


def ids(client: TestClient) -> dict[str, str]:
    """Report id -> its detail page's path, from the 90-day list."""
    page = client.get(f"/reports?domain={DOMAIN}&days=90").text
    return dict((rid, path) for path, rid in re.findall(r'<a href="(/reports/\w+/\d+)">([^<]+)</a>', page))


def test_only_the_postmaster(client: TestClient) -> None:
    assert client.get("/reports").status_code == 303  # to the login form
    log_in(client, "bob", BOB_PASSWORD)
    assert client.get("/reports").status_code == 403
    assert client.get("/reports/dmarc/1").status_code == 403
    assert 'href="/reports"' not in client.get("/mail").text


def test_header_link_and_default_domain(client: TestClient) -> None:
    log_in(client, "admin", PASSWORD)
    page = client.get("/reports")
    assert page.status_code == 200 and '<a href="/reports">Reports</a>' in page.text
    assert f"Reports about {DOMAIN}" in page.text and 'value="30" selected' in page.text


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("days=abc", 400, "The period must be one of 7, 30, 90, 365 days."),
        ("days=31", 400, "The period must be one of"),
        ("days=-7", 400, "The period must be one of"),
        ("domain=%3Cscript%3Ex", 400, "The domain is not a domain name."),
        ("domain=other.example", 404, "No report is about other.example"),
    ],
)
def test_bad_parameters_are_refused_clearly(client: TestClient, query: str, status: int, says: str) -> None:
    log_in(client, "admin", PASSWORD)
    page = client.get(f"/reports?{query}")
    assert page.status_code == status and says in page.text and "Traceback" not in page.text
    assert "<script>x" not in page.text


@pytest.mark.parametrize(
    "path", ["/reports/dmarc/abc", "/reports/xml/1", "/reports/tls/99999", "/reports/dmarc/" + "9" * 40]
)
def test_unknown_reports_are_404(client: TestClient, path: str) -> None:
    log_in(client, "admin", PASSWORD)
    page = client.get(path)
    assert page.status_code == 404 and "No such report." in page.text


def test_tables_show_the_reported_numbers(client: TestClient) -> None:
    log_in(client, "admin", PASSWORD)
    page = client.get(f"/reports?domain={DOMAIN}").text
    sources = _rows(page, "sources")
    assert [row[0] for row in sources] == ["192.0.2.10", "198.51.100.7", "203.0.113.5"]
    assert [row[3:] for row in sources] == [
        ["200", "200", "120", "200"],
        ["30", "0", "0", "0"],
        ["5", "5", "5", "0"],
    ]
    assert sources[0][1] == GOOD_PTR and sources[1][1] == "" and "x&lt;b&gt;y" not in page
    assert "192.0.2.99" not in page, "a report from before the period"
    reporters = _rows(page, "reporters")
    assert [row[:4] for row in reporters] == [
        ["noreply-dmarc@big.example", "Big Mailbox", "1", "150"],
        [_html(HOSTILE_EMAIL.lower()), _html(HOSTILE_ORG), "1", "85"],
    ]
    assert _rows(page, "tls-failures") == [
        ["certificate-expired", f"mx1.{DOMAIN}", "15", "1"],
        ["validation-failure", f"mx2.{DOMAIN}", "5", "1"],
    ]
    assert len(_rows(page, "report-list")) == 4
    assert "192.0.2.99" in client.get(f"/reports?domain={DOMAIN}&days=90").text


def test_hostile_report_text_is_escaped(client: TestClient) -> None:
    log_in(client, "admin", PASSWORD)
    page = client.get(f"/reports?domain={DOMAIN}").text
    assert "<script>alert" not in page and "<img" not in page
    assert _html(HOSTILE_ORG) in page and "onerror=&#34;alert(2)&#34;" in page
    detail = client.get(ids(client)["tls-1"])
    assert detail.status_code == 200
    assert "\x1b" not in detail.text and "\u202e" not in detail.text and "<i>" not in detail.text
    assert "&lt;i&gt;X509&lt;/i&gt;\\x1b[31m" in detail.text
    assert "&lt;a href=javascript:alert(4)&gt;more&lt;/a&gt;\\u202eline\\nbreak" in detail.text
    assert "<a href=javascript" not in detail.text


def test_report_detail_and_raw(client: TestClient, web_config: Config) -> None:
    log_in(client, "admin", PASSWORD)
    found = ids(client)
    detail = client.get(found["big-1"]).text
    assert "DMARC aggregate report big-1" in detail and "Big Mailbox" in detail
    assert [row[:5] for row in _rows(detail, "records")] == [
        ["192.0.2.10", "120", "none", "pass", "pass"],
        ["198.51.100.7", "30", "none", "fail", "fail"],
    ]
    assert "&lt;org_name&gt;Big Mailbox&lt;/org_name&gt;" in detail, "the raw XML, escaped"
    with session_scope(web_config.resolved_database_url) as session:
        session.execute(update(DMARCReport).where(DMARCReport.report_id == "big-1").values(raw=None))
    without = client.get(found["big-1"]).text
    assert 'id="raw-missing"' in without and "&lt;org_name&gt;" not in without


def test_dmarc_record_results_as_lines(client: TestClient, web_config: Config) -> None:
    """The RFC 9990 example's authentication results and reasons, one line each."""
    with session_scope(web_config.resolved_database_url) as session:
        stored = store_report(session, read_file(RFC9990_REPORT), RFC9990_REPORT)
    log_in(client, "admin", PASSWORD)
    page = client.get(f"/reports/dmarc/{stored.summary.id}").text
    assert [row[-1] for row in _rows(page, "records")] == [
        "DKIM example.com selector abc123: pass\nSPF example.com (mfrom): fail",
        "SPF lists.example.org (mfrom): pass\nreason mailing_list: a list we know",
    ]


def test_reverse_names_are_bounded_in_time(dns: DNSTestServer) -> None:
    """A PTR lookup that never answers leaves its IP unnamed once PTR_SECONDS are up; the others
    are named."""
    dns.add("10.2.0.192.in-addr.arpa", "PTR", f"{GOOD_PTR}.")
    dns.timeout("5.113.0.203.in-addr.arpa")
    resolver = Resolver(["127.0.0.1"], port=dns.port, timeout=10, cache=False)
    started = time.monotonic()
    names = asyncio.run(reports.reverse_names(resolver, ["192.0.2.10", "203.0.113.5", "not an ip"]))
    elapsed = time.monotonic() - started
    assert names == {"192.0.2.10": GOOD_PTR}
    assert reports.PTR_SECONDS - 0.1 < elapsed < reports.PTR_SECONDS + 1


@pytest.mark.parametrize(
    "target", ["x<b>y.evil.example.", "mx\\027[31m.evil.example.", "under\\032score!.example."]
)
def test_a_reverse_name_that_is_no_host_name_is_not_shown(dns: DNSTestServer, target: str) -> None:
    dns.add("7.100.51.198.in-addr.arpa", "PTR", target)
    resolver = Resolver(["127.0.0.1"], port=dns.port, timeout=5, cache=False)
    assert asyncio.run(resolver.ptr("198.51.100.7")), "DNS answered with the name"
    assert asyncio.run(reports.reverse_names(resolver, ["198.51.100.7"])) == {}


def admin_in_chromium(config: Config, path: str) -> AbstractContextManager[tuple[Page, str]]:
    return logged_in_chromium(config, path, "admin", PASSWORD)


def test_browser_charts_tables_and_detail(web_config: Config, tmp_path: Path) -> None:
    """Chromium: the charts' bars match the data, hostile text is text, no console error."""
    shots = {name: tmp_path / name for name in ("reports.png", "report-tls.png", "report-dmarc.png")}
    with admin_in_chromium(web_config, "/reports") as (page, base):
        check_dmarc_chart(page)
        check_tls_charts(page)
        assert page.locator("#reporters script, #reporters img").count() == 0
        assert HOSTILE_ORG in page.inner_text("#reporters") and HOSTILE_EMAIL.lower() in page.inner_text(
            "#reporters"
        )
        assert page.inner_text("#sources tr:nth-child(2) td.ptr") == GOOD_PTR
        page.screenshot(path=str(shots["reports.png"]), full_page=True)
        page.select_option("#days", "7")
        with page.expect_navigation():
            page.click("#choose button")
        assert page.url == f"{base}/reports?domain={DOMAIN}&days=7"
        with page.expect_navigation():
            page.click("#report-list a:text('tls-1')")
        assert page.locator(".tls-failure-details a, .tls-failure-details i").count() == 0
        assert "\\x1b[31m" in page.inner_text(".reason-code >> nth=1")
        assert HOSTILE_INFO.replace("\u202e", "\\u202e").replace("\n", "\\n") in page.inner_text(
            ".additional >> nth=1"
        )
        assert '"failure-reason-code": "<i>X509</i>\\u001b[31m"' in page.inner_text("#raw")
        page.screenshot(path=str(shots["report-tls.png"]), full_page=True)
        page.go_back()
        with page.expect_navigation():
            page.click("#report-list a:text('evil-1')")
        assert page.locator("main script, main img").count() == 0
        assert HOSTILE_ORG in page.inner_text(
            "#report-fields"
        ) and "<org_name>&lt;script&gt;" in page.inner_text("#raw")
        assert [row.split("\t")[:2] for row in page.locator("#records tr").all_inner_texts()[1:]] == [
            ["192.0.2.10", "80"],
            ["203.0.113.5", "5"],
        ]
        page.screenshot(path=str(shots["report-dmarc.png"]), full_page=True)
    for shot in shots.values():
        keep_screenshot(shot)


def check_dmarc_chart(page: Page) -> None:
    """Two days with data: 120 passed + 30 failed, then 85 passed; bar heights in proportion."""
    chart = page.locator("#dmarc-chart svg")
    assert chart.get_attribute("role") == "img" and "DMARC" in (chart.get_attribute("aria-label") or "")
    assert chart.locator("g.bar").count() == 2
    heights = [
        float(h)
        for h in chart.locator("g.bar rect").evaluate_all("rs => rs.map(r => r.getAttribute('height'))")
    ]
    values = chart.locator("g.bar rect").evaluate_all("rs => rs.map(r => r.getAttribute('data-value'))")
    assert values == ["120", "30", "85"]
    assert heights[0] / heights[1] == pytest.approx(4, rel=0.01) and heights[2] / heights[0] == pytest.approx(
        85 / 120, rel=0.01
    )
    box = chart.bounding_box()
    assert box and box["height"] > 100, "drawn at a visible size"
    legend = chart.locator("g.legend text").evaluate_all("ts => ts.map(t => t.textContent)")
    assert legend == ["Passed DMARC", "Failed DMARC"]
    swatches = chart.locator("g.legend rect").evaluate_all("rs => rs.map(r => r.getAttribute('fill'))")
    bar_fills = chart.locator("g.bar rect").evaluate_all("rs => rs.map(r => r.getAttribute('fill'))")
    assert bar_fills == [swatches[0], swatches[1], swatches[0]] and swatches[0] != swatches[1]
    assert chart.locator("g.bar title").first.text_content() == f"{D2}: 120 passed dmarc, 30 failed dmarc"


def check_tls_charts(page: Page) -> None:
    """One chart per policy type: sts on two days (100 ok; 500 ok + 20 failed), tlsa on one."""
    sts = page.locator('.tls-chart[data-policy-type="sts"] svg')
    assert sts.locator("g.bar").count() == 2
    assert sts.locator("g.bar rect").evaluate_all("rs => rs.map(r => r.getAttribute('data-value'))") == [
        "100",
        "500",
        "20",
    ]
    tlsa = page.locator('.tls-chart[data-policy-type="tlsa"] svg')
    assert tlsa.locator("g.bar rect").count() == 1


def test_browser_empty_period_says_so(tmp_path: Path, dns: DNSTestServer) -> None:
    """A configured domain no report is about: each chart says so instead of drawing empty axes."""
    empty = write_web_config(tmp_path / "empty", dns.port, {"admin": PASSWORD})
    with admin_in_chromium(empty, f"/reports?domain={DOMAIN}&days=7") as (page, _):
        assert page.inner_text("#dmarc-chart") == "No reports in this period."
        assert page.inner_text(".tls-chart") == "No reports in this period."
        assert page.locator("svg").count() == 0


def _rows(page: str, table: str) -> list[list[str]]:
    """The text of each data row's cells of the table with this id (a <br> as a line break, other tags
    dropped, HTML kept escaped)."""
    body = page.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)[1:]
    return [
        [
            re.sub(r"<[^>]+>", "", cell.replace("<br>", "\n")).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        for row in rows
    ]


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
