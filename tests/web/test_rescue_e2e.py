"""Rescuing a reject end to end (SPEC R3.1, R3.3, R3.4): mail from a new sender is held over real SMTP
(451, kept once in Rejects), the account moves it to Inbox in the web UI in Chromium, and the sender's
next message is accepted into Inbox because of what that move taught reputation.

The SMTP service runs in a thread against the loopback DNS server, the web app under a real uvicorn
server, both on the same store. Set POSTWARDEN_SCREENSHOTS to a directory to get a copy of the
screenshots there."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from app.accounts import set_password, sync_from_config
from app.config import Config, load_config
from app.db import session_scope
from app.migrate import upgrade_database
from app.models import Message, MessageSignal
from app.web.app import create_app
from tests.smtpserver.test_smtp_inbound import RUA_POLICY, SENDER, open_session, send_raw
from tests.smtpserver.test_smtp_reputation import reason
from tests.support.browser import keep_screenshot, launch_chromium, watched_page
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import (
    LineClient,
    Stored,
    ThreadedSMTP,
    mailbox_id,
    make_message,
    publish_sender_domain,
    smtp_config_toml,
    stored_messages,
)
from tests.support.webclient import served

if TYPE_CHECKING:
    from playwright.sync_api import Page

PASSWORD = "bob's own password"
BOB = "bob@example.org"
HELD = "451 4.3.0"


@dataclass
class Site:
    """The SMTP service and the web UI of one installation, and where screenshots go."""

    config: Config
    smtp: ThreadedSMTP
    base: str
    shots: Path


@pytest.fixture
def site(tmp_path: Path, dns: DNSTestServer) -> Iterator[Site]:
    directory = tmp_path / "config"
    web = '[web]\nsecret_key_file = "web-secret.key"\n'
    path = write_config(directory, smtp_config_toml(None) + web, dns_port=dns.port)
    (directory / "web-secret.key").write_text("s3cret-" * 8)
    config = load_config(path)
    upgrade_database(config.resolved_database_url)
    with session_scope(config.resolved_database_url) as session:
        sync_from_config(session, config)
        set_password(session, "bob", PASSWORD)
    smtp = ThreadedSMTP(config).start()
    try:
        with served(create_app(config), config) as base:
            yield Site(config, smtp, base, tmp_path / "screenshots")
    finally:
        smtp.stop()


def send(client: LineClient, sender: str, subject: str) -> str:
    message = make_message(sender, BOB, subject=subject, message_id=f"<{subject.replace(' ', '-')}@test>")
    return send_raw(client, sender, [BOB], message)


def only(site: Site, subject: str) -> Stored:
    """The one stored message with this subject (a retried reject is kept once)."""
    found = [s for s in stored_messages(site.smtp) if s.row.subject == subject]
    assert len(found) == 1, found
    return found[0]


def facts(row: Message, *names: str) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in names)


def signal_states(site: Site, row_id: int) -> set[tuple[int | None, bool, bool]]:
    with session_scope(site.smtp.database_url) as session:
        query = select(MessageSignal.mailbox_orig_id, MessageSignal.junk, MessageSignal.notjunk)
        return {tuple(r) for r in session.execute(query.where(MessageSignal.message_id == row_id))}


def log_in(page: Page, site: Site) -> None:
    page.goto(f"{site.base}/mail")
    page.fill('input[name="account"]', "bob")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{site.base}/mail")


def move(page: Page, site: Site, mailbox: str, row_ids: list[int], target: str, shot: str = "") -> None:
    """Open the mailbox, select the messages, move them to `target` (a screenshot before, if named)."""
    page.goto(f"{site.base}/mailbox/{mailbox}")
    if shot:
        page.screenshot(path=str(site.shots / shot), full_page=True)
    for row_id in row_ids:
        page.check(f'input[name="id"][value="{row_id}"]')
    page.select_option('select[name="target"]', target)
    with page.expect_navigation():
        page.click('button[value="move"]')


@dataclass
class Browser:
    page: Page
    console: list[str]


@pytest.fixture
def browser(site: Site) -> Iterator[Browser]:
    """Chromium logged in as bob; the console must stay free of errors (a CSP violation is one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            console: list[str] = []
            page = watched_page(chromium, console, height=700)
            log_in(page, site)
            yield Browser(page, console)
            assert console == [], console
        finally:
            chromium.close()


def keep_screenshots(site: Site, names: list[str]) -> None:
    for name in names:
        keep_screenshot(site.shots / name)


def test_a_rescued_sender_is_welcome_next_time(site: Site, browser: Browser, dns: DNSTestServer) -> None:
    """Bob moved two spams from this IP to Junk, so a new sender there (DMARC pass) is held; once bob
    moves the held message from Rejects to Inbox, the sender's next message is accepted by its From
    address's history (msgfromfull): the move made it a notjunk delivery to Inbox."""
    client = open_session(site.smtp)
    page = browser.page
    for n in range(2):
        assert send(client, f"seller{n}@spam{n}.example", f"cheap pills {n}").startswith("250 2.0.0")
    spam = [only(site, f"cheap pills {n}").row.id for n in range(2)]
    move(page, site, "Inbox", spam, "Junk")
    assert {only(site, f"cheap pills {n}").mailbox for n in range(2)} == {"Junk"}

    publish_sender_domain(dns, "sender.example", RUA_POLICY)  # SPF and DMARC pass: a validated From
    for _attempt in range(2):  # the sender retries while bob decides: kept once
        assert send(client, SENDER, "Meeting on Friday").startswith(HELD)
    held = only(site, "Meeting on Friday")
    inbox, rejects = mailbox_id(site.smtp, "bob", "Inbox"), mailbox_id(site.smtp, "bob", "Rejects")
    assert (held.mailbox, reason(held.content)) == ("Rejects", "ip1")  # the spams' /32 network
    assert facts(held.row, "reason", "is_reject", "mailbox_orig_id", "mailbox_destined_id") == (
        ("ip1", True, rejects, inbox)
    )
    assert signal_states(site, held.row.id) == {(rejects, False, False)}

    move(page, site, "Rejects", [held.row.id], "Inbox", shot="rescue-rejects.png")
    assert page.locator("main", has_text="No messages.").is_visible()
    rescued = only(site, "Meeting on Friday").row
    assert facts(rescued, "mailbox_orig_id", "is_reject", "junk", "notjunk") == (inbox, False, False, True)
    assert signal_states(site, rescued.id) == {(inbox, False, True)}

    assert send(client, SENDER, "Agenda for Friday").startswith("250 2.0.0")
    accepted = only(site, "Agenda for Friday")
    assert (accepted.mailbox, reason(accepted.content)) == ("Inbox", "msgfromfull")
    assert facts(accepted.row, "reason", "is_reject", "mailbox_orig_id") == ("msgfromfull", False, inbox)
    page.goto(f"{site.base}/mailbox/Inbox")
    assert page.locator("td.subject a").all_inner_texts() == ["Agenda for Friday", "Meeting on Friday"]
    page.screenshot(path=str(site.shots / "rescue-inbox.png"), full_page=True)
    keep_screenshots(site, ["rescue-rejects.png", "rescue-inbox.png"])


def test_a_rescued_spf_failure_makes_the_senders_retries_welcome(
    site: Site, browser: Browser, dns: DNSTestServer
) -> None:
    """A new sender failing SPF (no DMARC pass) is held; once bob rescues one message, the retry of
    another, held before, is accepted: there is history now, notjunk but, for an unvalidated From,
    not conclusive, so the message is accepted as showing no bad signals (SPEC R3.4)."""
    client = open_session(site.smtp)
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=none", spf="v=spf1 -all")
    for subject in ("Invoice 1", "Invoice 2"):
        assert send(client, SENDER, subject).startswith(HELD)
    held = only(site, "Invoice 1")
    assert (held.mailbox, reason(held.content)) == ("Rejects", "spf-fail")

    move(browser.page, site, "Rejects", [held.row.id], "Inbox")
    assert send(client, SENDER, "Invoice 2").startswith("250 2.0.0")  # the retry
    stored = [
        (s.mailbox, reason(s.content)) for s in stored_messages(site.smtp) if s.row.subject == "Invoice 2"
    ]
    assert stored == [("Rejects", "spf-fail"), ("Inbox", "no-bad-signals")]
