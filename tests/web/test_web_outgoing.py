"""The outgoing reports page (postmaster only): DMARC evaluations waiting (stored by
app/dmarcreports/evaluations.py as the task stores them), our TLS results by day and their failures
(recorded by app/tlsreports/results.py as delivery records them), and the report suppression lists
with add and remove forms (POST with the CSRF token; bad input: 400 and the form again); hostile
names shown as text; and once in Chromium (screenshot outgoing.png)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.config import Config
from app.db import session_scope
from app.dmarcreports.evaluations import store_evaluations
from app.jobs import DMARC_REPORTS, recorded_run
from app.models.base import utcnow
from app.reportsuppress import suppress, suppressions
from app.tlsreports.report import FailureDetail, PolicyRef
from app.tlsreports.results import SessionResult, record_tls_results
from app.web.status import REPORT_JOBS
from tests.reports.test_dmarc_evaluations import evaluation
from tests.support.adminweb import BOB_PASSWORD, BOTH_DATABASES, PASSWORD, admin_browser
from tests.support.webclient import form_token, log_in

HOSTILE_HOST = "mx<script>alert(1)</script>\x1b[2J.example.net"
SHOWN_HOST = "mx&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J.example.net"
BAD_REQUEST = "error: Failed to load resource: the server responded with a status of 400 (Bad Request)"
HOSTILE_DOMAIN = "<b>bold</b>\x07.example"
STS = PolicyRef(
    "sts", "example.net", ("version: STSv1", "mode: enforce", "mx: mx.example.net"), ("mx.example.net",)
)
EXPIRED = FailureDetail(
    "certificate-expired", receiving_mx_hostname="mx.example.net", receiving_ip="192.0.2.25"
)


def seed(admin_config: Config) -> None:
    """Evaluations for two policy domains (one optional) and a hostile one; TLS results of today and
    yesterday, failures at a known and a hostile MX host; one suppressed address per list."""
    now = utcnow()
    at = [(now - timedelta(minutes=m)).isoformat() for m in (30, 20, 10)]
    stored = store_evaluations(
        admin_config,
        [
            evaluation(evaluated=at[0]),
            evaluation(evaluated=at[1]),
            evaluation(evaluated=at[2], optional=True),
            evaluation(policy_domain="other.example", evaluated=at[1]),
            evaluation(policy_domain=HOSTILE_DOMAIN, evaluated=at[2]),
        ],
    )
    assert stored == 5
    today, yesterday = now.date(), now.date() - timedelta(days=1)
    dane = PolicyRef("tlsa", "mx.example.net", ("3 1 1 aa",))
    with session_scope(admin_config.resolved_database_url) as session:
        record_tls_results(session, [SessionResult("example.net", STS, dane)] * 3, day=today)
        record_tls_results(session, [SessionResult("example.net", STS, dane, failure=EXPIRED)] * 2, day=today)
        hostile = FailureDetail("starttls-not-supported", receiving_mx_hostname=HOSTILE_HOST)
        nothing = PolicyRef.none_found("bad.example")
        host = PolicyRef.none_found(HOSTILE_HOST)
        record_tls_results(
            session, [SessionResult("bad.example", nothing, host, failure=hostile)], day=yesterday
        )
        record_tls_results(session, [SessionResult("example.net", STS, dane)] * 4, day=yesterday)
        suppress(session, "dmarc", "old@example.net", now + timedelta(days=3), "<i>bounced</i>\x07")
        suppress(session, "tlsrpt", "tls@example.net", now + timedelta(days=3))
    with recorded_run(admin_config.resolved_database_url, DMARC_REPORTS) as run:
        run.outcome.append("2 reports queued")


def listed(admin_config: Config, kind: Any) -> dict[str, tuple[datetime, str]]:
    with session_scope(admin_config.resolved_database_url) as session:
        return {e.address: (e.until, e.comment) for e in suppressions(session, kind)}


def cells(html: str, table: str) -> list[list[str]]:
    """The text of each data row's cells of the table with id `table` (tags dropped)."""
    body = html[html.index(f'id="{table}"') :]
    body = body[: body.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    found = [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows
    ]
    return [row for row in found if row]  # not the header row


def admin(admin_client: TestClient) -> str:
    log_in(admin_client, "admin", PASSWORD)
    return form_token(admin_client, "/outgoing")


def add(admin_client: TestClient, token: str, **fields: str) -> Any:
    return admin_client.post("/outgoing/suppressions", data={"csrf_token": token, "action": "add", **fields})


def test_only_the_postmaster(admin_client: TestClient, admin_config: Config) -> None:
    assert admin_client.get("/outgoing").status_code == 303  # to the login form
    log_in(admin_client, "bob", BOB_PASSWORD)
    token = form_token(admin_client, "/mail")
    assert admin_client.get("/outgoing").status_code == 403
    refused = add(admin_client, token, kind="dmarc", address="x@example.net")
    assert refused.status_code == 403 and listed(admin_config, "dmarc") == {}
    assert 'href="/outgoing"' not in admin_client.get("/mail").text


@pytest.mark.parametrize("database", BOTH_DATABASES)
def test_the_tables_show_the_numbers(admin_client: TestClient, admin_config: Config) -> None:
    seed(admin_config)
    admin(admin_client)
    page = admin_client.get("/outgoing")
    assert page.status_code == 200
    evaluations = {row[0]: row[1:3] for row in cells(page.text, "evaluations")}
    assert evaluations["sender.example"] == ["3", "1"] and evaluations["other.example"] == ["1", "0"]
    today, yesterday = utcnow().date().isoformat(), (utcnow().date() - timedelta(days=1)).isoformat()
    days = {(d, policy): (ok, bad) for d, policy, ok, bad in cells(page.text, "tls-days")}
    assert days[(today, "MTA-STS (recipient domain)")] == ("3", "2")
    assert days[(today, "DANE (MX host)")] == ("3", "2")
    assert days[(yesterday, "MTA-STS (recipient domain)")] == ("4", "0")
    assert days[(yesterday, "no policy (recipient domain)")] == ("0", "1")
    chart = page.text[page.text.index('id="tls-chart"') :].split("</svg>")[0]
    bars = re.findall(r'<g class="bar"><title>([^<]*)</title>(.*?)</g>', chart)
    assert [(title, re.findall(r'data-value="(\d+)"', rects)) for title, rects in bars] == [
        (f"{yesterday}: 4 succeeded, 1 failed", ["4", "1"]),
        (f"{today}: 3 succeeded, 2 failed", ["3", "2"]),
    ], "each session once: the recipient domain's policies"
    failures = cells(page.text, "tls-failures")
    assert failures[0] == ["certificate-expired", "mx.example.net", "MTA-STS (recipient domain)", "2", today]
    assert failures[1] == ["certificate-expired", "mx.example.net", "DANE (MX host)", "2", today]
    assert len(failures) == 4, "each kind of policy counts the failure once"
    runs = {row[0]: row[1:] for row in cells(page.text, "report-runs")}
    assert list(runs) == list(REPORT_JOBS.values())
    assert runs["DMARC reports"][2] == "2 reports queued" and runs["TLS reports"] == ["never run"]
    assert [row[0] for row in cells(page.text, "suppressed-dmarc")] == ["old@example.net"]
    assert [row[0] for row in cells(page.text, "suppressed-tlsrpt")] == ["tls@example.net"]


@pytest.mark.parametrize("database", BOTH_DATABASES)
def test_hostile_names_are_text(admin_client: TestClient, admin_config: Config) -> None:
    seed(admin_config)
    admin(admin_client)
    page = admin_client.get("/outgoing").text
    assert SHOWN_HOST in page and "&lt;b&gt;bold&lt;/b&gt;\\x07.example" in page
    assert "&lt;i&gt;bounced&lt;/i&gt;\\x07" in page
    assert "<script>" not in page and "<b>" not in page and "<i>" not in page
    assert "\x1b" not in page and "\x07" not in page


@pytest.mark.parametrize("database", BOTH_DATABASES)
def test_add_and_remove_round_trip(admin_client: TestClient, admin_config: Config) -> None:
    token = admin(admin_client)
    done = add(
        admin_client,
        token,
        kind="dmarc",
        address=" Reports@Example.NET ",
        until="2099-01-31",
        comment="bounces",
    )
    assert done.status_code == 303 and done.headers["location"] == "/outgoing?added=dmarc#suppressions"
    ((until, comment),) = listed(admin_config, "dmarc").values()
    assert list(listed(admin_config, "dmarc")) == ["reports@example.net"] and comment == "bounces"
    assert (until.year, until.month, until.day, until.hour) == (2099, 1, 31, 23)
    assert listed(admin_config, "tlsrpt") == {}
    page = admin_client.get("/outgoing?added=dmarc")
    assert "Added to the DMARC reports suppression list." in page.text
    assert "reports@example.net" in [row[0] for row in cells(page.text, "suppressed-dmarc")]

    before = utcnow()
    assert add(admin_client, token, kind="tlsrpt", address="tls@example.net").status_code == 303
    ((default_until, _),) = listed(admin_config, "tlsrpt").values()
    assert timedelta(days=29) < default_until - before <= timedelta(days=30, seconds=5), "30 days by default"

    remove = {"csrf_token": token, "action": "remove", "kind": "dmarc", "address": "reports@example.net"}
    gone = admin_client.post("/outgoing/suppressions", data=remove)
    assert gone.status_code == 303 and gone.headers["location"] == "/outgoing?removed=dmarc#suppressions"
    assert listed(admin_config, "dmarc") == {} and list(listed(admin_config, "tlsrpt")) == ["tls@example.net"]
    again = admin_client.post("/outgoing/suppressions", data=remove)
    assert again.status_code == 400 and "is not on the DMARC reports suppression list" in again.text


def test_forms_without_the_token_are_refused(admin_client: TestClient, admin_config: Config) -> None:
    seed(admin_config)
    admin(admin_client)
    form = {"action": "add", "kind": "dmarc", "address": "x@example.net"}
    assert admin_client.post("/outgoing/suppressions", data=form).status_code == 403
    assert (
        admin_client.post("/outgoing/suppressions", data={**form, "csrf_token": "wrong"}).status_code == 403
    )
    remove = {"action": "remove", "kind": "dmarc", "address": "old@example.net", "csrf_token": ""}
    assert admin_client.post("/outgoing/suppressions", data=remove).status_code == 403
    assert list(listed(admin_config, "dmarc")) == ["old@example.net"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"address": "not-an-address"},
            "&#39;not-an-address&#39; is not an address of the form localpart@domain",
        ),
        ({"address": ""}, "Enter an address"),
        ({"address": "a\x00b@example.net"}, "has a control character"),
        ({"address": "a" * 600 + "@example.net"}, "longer than 512 characters"),
        ({"until": "2001-01-01"}, "The last day 2001-01-01 is in the past."),
        ({"until": "2026-13-45"}, "2026-13-45 is not a date."),
        ({"until": "tomorrow"}, "The last day must be a date (YYYY-MM-DD)"),
        ({"kind": "smtp"}, "Choose the list: DMARC reports or TLS reports."),
        ({"comment": "c" * 2001}, "the comment is longer than 2000 characters"),
    ],
)
def test_bad_input_is_a_400_with_the_form_again(
    admin_client: TestClient, admin_config: Config, fields: dict[str, str], message: str
) -> None:
    token = admin(admin_client)
    answer = add(
        admin_client, token, **{"kind": "dmarc", "address": "x@example.net", "comment": "why", **fields}
    )
    assert answer.status_code == 400
    assert message in answer.text, answer.text[answer.text.find('id="problem"') :][:300]
    assert 'id="suppress-form"' in answer.text
    if "comment" not in fields:
        assert 'name="comment" value="why"' in answer.text, "the form keeps what was typed"
    assert listed(admin_config, "dmarc") == {} and listed(admin_config, "tlsrpt") == {}


def test_browser_page_and_forms(admin_config: Config, tmp_path: Path) -> None:
    """Chromium: the tables, then add an address with the form, a bad one (400), and remove one."""
    seed(admin_config)
    with admin_browser(admin_config, tmp_path, "/outgoing") as browser:
        page = browser.page
        assert "sender.example" in page.inner_text("#evaluations")
        bars = page.locator("#tls-chart svg g.bar")
        assert bars.count() == 2 and page.locator("#tls-chart svg").is_visible()
        drawn = [
            bars.nth(i).locator("rect").evaluate_all("rs => rs.map(r => r.dataset.value)") for i in range(2)
        ]
        assert drawn == [["4", "1"], ["3", "2"]]
        assert bars.nth(1).locator("rect").first.bounding_box()["height"] > 10, "drawn, not only present"
        assert HOSTILE_HOST.replace("\x1b", "\\x1b") in page.inner_text("#tls-failures")
        assert page.locator("script").count() == 0 and page.locator("main b").count() == 0
        page.select_option("#kind", "tlsrpt")
        page.fill("#address", "postmaster@bounces.example")
        page.fill("#until", "2099-12-31")
        page.fill("#comment", "mailbox full")
        with page.expect_navigation():
            page.click("#suppress-form button")
        assert "Added to the TLS reports suppression list." in page.inner_text("#flash")
        assert "postmaster@bounces.example" in page.inner_text("#suppressed-tlsrpt")
        assert "postmaster@bounces.example" in listed(admin_config, "tlsrpt")
        browser.screenshot("outgoing.png")
        page.fill("#address", "no-at-sign")
        with page.expect_navigation():
            page.click("#suppress-form button")
        assert "is not an address" in page.inner_text("#problem")
        assert page.input_value("#address") == "no-at-sign"
        assert browser.console == [BAD_REQUEST], "the 400 of the refused form, and nothing else"
        browser.console.clear()
        browser.screenshot("outgoing-error.png")
        with page.expect_navigation():
            page.click("#suppressed-dmarc button.remove")
        assert "Removed from the DMARC reports suppression list." in page.inner_text("#flash")
        assert listed(admin_config, "dmarc") == {}
