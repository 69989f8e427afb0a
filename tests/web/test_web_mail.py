"""The account web UI (app/web/mail.py): each account's own mailboxes, message lists and messages;
moving and flagging selected messages with the session's CSRF token; hostile message text shown as
text. Messages are stored by the real store (MessageStore.store_copies); the browser test drives
Debian's Chromium through Playwright against a real uvicorn server.

Set POSTWARDEN_SCREENSHOTS to a directory to get a copy of the browser test's screenshots there."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.accounts import sync_from_config
from app.config import Config
from app.db import session_scope
from app.store import mailboxes
from app.store.content import stored_content
from app.store.files import MailboxCopy, MessageStore
from app.web import mail
from app.web.app import create_app
from tests.support.browser import keep_screenshot, launch_chromium, watched_page
from tests.support.dnsserver import DNSTestServer
from tests.support.webclient import form_token, log_in, served, write_web_config

PASSWORD = "correct horse battery"
BOB_PASSWORD = "bob's own password"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


def plain(sender: str, subject: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        "Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.net;\r\n"
        f" dkim=pass header.d=example.net; dmarc=pass header.from=example.net\r\n\r\n{body}\r\n"
    ).encode()


def alternative(sender: str, subject: str, text: str, html: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: bob@example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        f"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--b--\r\n"
    ).encode()


HOSTILE = (
    f"From: {IMG} <evil@example.net>\r\nTo: bob@example.org\r\nSubject: {SCRIPT}\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n"
    '<p>Hi</p><script>alert(2)</script><img src="http://127.0.0.1:9/track.png" onerror="alert(3)">\r\n'
).encode()

# (key, account, mailbox, content, columns, destined mailbox)
MESSAGES: list[tuple[str, str, str, bytes, dict[str, Any], str | None]] = [
    (
        "lunch",
        "bob",
        "Inbox",
        alternative(
            "Alice Example <alice@example.net>",
            "=?utf-8?q?Caf=C3=A9_on_Friday?=",
            "Shall we meet at the café at noon?\r\n\r\nAlice",
            "<p>Shall we meet at the <b>café</b> at noon?</p>",
        ),
        {"msg_from": "alice@example.net", "reason": "msgfromfull", "seen": True}
        | {"spf_result": "pass", "dkim_result": "pass", "dmarc_result": "pass"},
        None,
    ),
    (
        "hostile",
        "bob",
        "Inbox",
        HOSTILE,
        {"msg_from": IMG + "@example.net", "reason": SCRIPT, "spf_result": "none", "dmarc_result": "none"},
        None,
    ),
    (
        "reject",
        "bob",
        "Rejects",
        plain("Pills <spam@example.net>", "Cheap pills", "Buy now."),
        {"msg_from": "spam@example.net", "reason": "ip1", "is_reject": True, "seen": True}
        | {"spf_result": "softfail", "dkim_result": "none", "dmarc_result": "fail"},
        "Inbox",
    ),
    (
        "admins",
        "admin",
        "Inbox",
        plain("Carol <carol@example.net>", "For the admin only", "Private."),
        {"msg_from": "carol@example.net"},
        None,
    ),
]


@pytest.fixture
def web_config(request: pytest.FixtureRequest, tmp_path: Path, dns: DNSTestServer) -> Config:
    """A test that takes `content_backend` runs with message content there (`[storage] content`)."""
    asked = request.fixturenames
    backend = request.getfixturevalue("content_backend") if "content_backend" in asked else "files"
    extra = f'\n[storage]\ncontent = "{backend}"\n'
    return write_web_config(
        tmp_path / "config", dns.port, {"admin": PASSWORD, "bob": BOB_PASSWORD}, extra=extra
    )


@pytest.fixture
async def stored(web_config: Config) -> dict[str, int]:
    """MESSAGES stored by the real store; their row ids by key."""
    with session_scope(web_config.resolved_database_url) as session:
        sync_from_config(session, web_config)
    store = MessageStore.of(web_config)
    try:
        file_ids = {}
        for key, account, box, content, columns, destined in MESSAGES:
            copy = MailboxCopy(account, box, columns, destined_mailbox=destined)
            (file_ids[key],) = await store.store_copies(content, [copy])
    finally:
        await store.close()
    with session_scope(web_config.resolved_database_url) as session:
        return {key: row(session, file_id)["id"] for key, file_id in file_ids.items()}


def row(session: Any, key: int | str) -> dict[str, Any]:
    found = mailboxes.find_message(session, key)
    assert found is not None
    return found


def message_row(config: Config, row_id: int) -> dict[str, Any]:
    with session_scope(config.resolved_database_url) as session:
        return {**row(session, row_id), **mailboxes.message_placement(session, row_id)}


def discard_content(config: Config, row_id: int) -> None:
    """Remove a message's content as the last row naming it going would (the row stays)."""
    with session_scope(config.resolved_database_url) as session:
        after_commit = stored_content(config).discard(session, [message_row(config, row_id)["path"]])
    after_commit()


def junk_flags(config: Config, row_id: int) -> tuple[bool, bool]:
    found = message_row(config, row_id)
    return found["junk"], found["notjunk"]


def new_client(config: Config) -> TestClient:
    return TestClient(create_app(config), base_url="http://127.0.0.1", follow_redirects=False)


@pytest.fixture
def client(web_config: Config) -> Iterator[TestClient]:
    with new_client(web_config) as test_client:
        yield test_client


@pytest.mark.parametrize("content_backend", ["files", "database"])
def test_browser_rescues_a_reject_and_shows_hostile_text_as_text(
    web_config: Config, stored: dict[str, int], tmp_path: Path, content_backend: str
) -> None:
    """Chromium: log in as bob, see his mailboxes, his Inbox (a hostile Subject and From shown as
    text, no dialog, no image loaded), a message, then Rejects: select the reject and move it to Inbox;
    last, a message whose content is gone is still listed, its page saying so. The console shows no
    error (a CSP violation would be one). Message content in files, then in the database."""
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    dialogs: list[str] = []
    requested: list[str] = []
    shots = tmp_path / "screenshots"
    with served(create_app(web_config), web_config) as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = watched_page(browser, console)
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.on("request", lambda request: requested.append(request.url))

            page.goto(f"{base}/mail")
            page.fill('input[name="account"]', "bob")
            page.fill('input[name="password"]', BOB_PASSWORD)
            page.click('button[type="submit"]')
            page.wait_for_url(f"{base}/mail")
            rows = page.locator("tr.mailbox").all_inner_texts()
            assert [re.split(r"\s+", r.strip())[:3] for r in rows] == [
                ["Inbox", "2", "1"],
                ["Junk", "0", "0"],
                ["Rejects", "1", "0"],
            ]
            assert page.locator("header a", has_text="DNS").count() == 0, "no admin links for bob"
            page.screenshot(path=str(shots / "mailboxes.png"), full_page=True)

            page.click("text=Inbox")
            page.wait_for_url(f"{base}/mailbox/Inbox")
            assert page.locator("td.subject a", has_text=SCRIPT).is_visible()
            assert page.locator("td.from", has_text=IMG).is_visible()
            assert page.locator("td", has_text=SCRIPT).count() == 2, "the reason too"
            assert page.locator("td.subject a").all_inner_texts() == [SCRIPT, "Café on Friday"]
            page.screenshot(path=str(shots / "message-list.png"), full_page=True)

            page.click("text=Café on Friday")
            page.wait_for_url(f"{base}/message/{stored['lunch']}")
            assert page.inner_text("h1") == "Café on Friday"
            assert "Shall we meet at the café at noon?" in page.inner_text("pre.body")
            assert "text/html" in page.inner_text("main"), "the HTML part is listed, not shown"
            page.screenshot(path=str(shots / "message.png"), full_page=True)

            page.goto(f"{base}/message/{stored['hostile']}")
            assert page.inner_text("h1") == SCRIPT
            assert page.inner_text("#from") == f"{IMG} <evil@example.net>"
            assert "<script>alert(2)</script>" in page.inner_text("pre.body")
            assert page.locator("main img, main script").count() == 0
            page.screenshot(path=str(shots / "hostile-message.png"), full_page=True)

            page.click("text=Mailboxes")
            page.wait_for_url(f"{base}/mail")
            page.click("text=Rejects")
            page.wait_for_url(f"{base}/mailbox/Rejects")
            assert "teaches the filter" in page.inner_text("#rejects-note")
            page.screenshot(path=str(shots / "rejects.png"), full_page=True)
            page.check(f'input[name="id"][value="{stored["reject"]}"]')
            page.select_option('select[name="target"]', "Inbox")
            with page.expect_navigation():
                page.click('button[value="move"]')
            assert page.url == f"{base}/mailbox/Rejects"
            assert page.locator("main", has_text="No messages.").is_visible()

            discard_content(web_config, stored["lunch"])
            page.goto(f"{base}/message/{stored['lunch']}")
            assert page.inner_text("h1") == "Café on Friday"
            assert page.inner_text("p.alert") == "The message's content cannot be read."
            page.screenshot(path=str(shots / "unreadable.png"), full_page=True)
        finally:
            browser.close()
    moved = message_row(web_config, stored["reject"])
    assert (moved["mailbox"], moved["mailbox_orig"], moved["mailbox_destined"]) == ("Inbox", "Inbox", "Inbox")
    assert moved["notjunk"] and not moved["junk"]
    assert dialogs == [], "a script of a message ran"
    assert not [url for url in requested if not url.startswith(base)], "a remote load"
    assert console == [], console
    for shot in ("mailboxes", "message-list", "message", "hostile-message", "rejects", "unreadable"):
        named = shots / f"{shot}-{content_backend}.png"  # the copy for $POSTWARDEN_SCREENSHOTS is by name
        (shots / f"{shot}.png").rename(named)
        keep_screenshot(named)


def test_forms_need_the_sessions_csrf_token(
    client: TestClient, web_config: Config, stored: dict[str, int]
) -> None:
    assert log_in(client, "bob", BOB_PASSWORD).headers["location"] == "/mail"
    move = {"action": "move", "target": "Inbox", "id": str(stored["reject"]), "back": "/mail"}
    for token in ({}, {"csrf_token": ""}, {"csrf_token": "forged"}):
        refused = client.post("/messages", data={**move, **token})
        assert refused.status_code == 403, token
        assert "The form did not come from this site" in refused.text
    foreign = client.post(
        "/messages", data=move | {"csrf_token": "x"}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert message_row(web_config, stored["reject"])["mailbox"] == "Rejects", "nothing moved"
    token = form_token(client, "/mailbox/Rejects")
    done = client.post("/messages", data=move | {"csrf_token": token})
    assert (done.status_code, done.headers["location"]) == (303, "/mail")
    assert message_row(web_config, stored["reject"])["mailbox"] == "Inbox"


@pytest.mark.parametrize("content_backend", ["files", "database"])
def test_an_account_cannot_see_or_change_anothers_mail(
    client: TestClient, web_config: Config, stored: dict[str, int], content_backend: str
) -> None:
    log_in(client, "bob", BOB_PASSWORD)
    token = form_token(client, "/mail")
    admins = stored["admins"]
    own = client.get(f"/message/{stored['reject']}")
    assert own.status_code == 200 and "dmarc=pass header.from=example.net" in own.text
    assert "cannot be read" not in own.text
    page = client.get(f"/message/{admins}")
    assert page.status_code == 404 and "For the admin only" not in page.text
    assert page.text == client.get("/message/999999").text, "as if there were no such message"
    assert client.get("/mailbox/Postmaster").status_code == 404, "admin's mailbox"
    for path in ("/message/9" + "9" * 30, "/message/-1", "/message/x"):
        assert client.get(path).status_code == 404, path
    for data in (
        {"action": "junk", "id": "9" * 30},
        {"action": "junk", "id": ["x", str(stored["lunch"])]},
        {"action": "move", "target": "Junk", "id": str(admins)},
        {"action": "junk", "id": str(admins)},
        {"action": "move", "target": "Postmaster", "id": str(stored["lunch"])},
    ):
        assert client.post("/messages", data=data | {"csrf_token": token}).status_code == 404, data
    assert message_row(web_config, admins)["mailbox"] == "Inbox"
    assert not message_row(web_config, admins)["junk"]
    assert junk_flags(web_config, stored["lunch"]) == (False, False)
    assert message_row(web_config, stored["lunch"])["mailbox"] == "Inbox"


def test_ordinary_accounts_get_mail_and_no_admin_pages(client: TestClient, stored: dict[str, int]) -> None:
    assert client.get("/mail").headers["location"] == "/login?next=/mail"
    assert log_in(client, "bob", BOB_PASSWORD).headers["location"] == "/mail", "bob lands on his mail"
    page = client.get("/mail")
    assert page.status_code == 200 and 'href="/dns"' not in page.text and 'href="/"' not in page.text
    for path in ("/", "/dns", "/dns/example.org"):
        assert client.get(path).status_code == 403, path
    for path in ("/mail", "/mailbox/Rejects", f"/message/{stored['lunch']}"):  # the CSP allows neither
        assert not re.search(r"<style|<script|\sstyle=|\son\w+=", client.get(path).text), path
    with TestClient(client.app, base_url="http://127.0.0.1", follow_redirects=False) as admin:
        assert log_in(admin, "admin", PASSWORD).headers["location"] == "/"
        mine = admin.get("/mail")
        assert 'href="/dns"' in mine.text and "Postmaster" in mine.text
        assert "For the admin only" in admin.get("/mailbox/Inbox").text


def test_mark_junk_and_not_junk(client: TestClient, web_config: Config, stored: dict[str, int]) -> None:
    log_in(client, "bob", BOB_PASSWORD)
    token = form_token(client, "/mailbox/Inbox")
    ids = [str(stored["lunch"]), str(stored["hostile"])]
    form = {"csrf_token": token, "action": "junk", "back": "/mailbox/Inbox", "id": ids}
    assert client.post("/messages", data=form).status_code == 303
    assert [junk_flags(web_config, int(i)) for i in ids] == [(True, False), (True, False)]
    list_page = client.get("/mailbox/Inbox").text
    assert list_page.count('<span class="flag">junk</span>') == 2
    client.post("/messages", data={"csrf_token": token, "action": "notjunk", "id": ids[0]})
    assert junk_flags(web_config, int(ids[0])) == (False, True)
    assert client.post("/messages", data={"csrf_token": token, "action": "junk"}).status_code == 400
    assert client.post("/messages", data={"csrf_token": token, "id": ids[0]}).status_code == 400


async def store_notes(config: Config, count: int) -> None:
    """`count` messages "note 0", "note 1"... in bob's Junk, one after another."""
    store = MessageStore(config.data_dir, config.resolved_database_url)
    try:
        for n in range(count):
            await store.store_copies(plain("a@example.net", f"note {n}", "x"), [MailboxCopy("bob", "Junk")])
    finally:
        await store.close()


def test_message_list_pages_newest_first(
    web_config: Config, stored: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(store_notes(web_config, 5))
    monkeypatch.setattr(mail, "PAGE_SIZE", 2)
    with new_client(web_config) as client:
        log_in(client, "bob", BOB_PASSWORD)
        subjects: list[str] = []
        url: str | None = "/mailbox/Junk"
        while url:
            page = client.get(url).text
            subjects += re.findall(r'<a href="/message/\d+">([^<]*)</a>', page)
            older = re.search(r'id="older" href="([^"]+)"', page)
            url = older.group(1) if older else None
        assert subjects == [f"note {n}" for n in reversed(range(5))]
        assert client.get("/mailbox/Junk?before=nonsense").status_code == 400
        assert client.get("/mailbox/Nowhere").status_code == 404
