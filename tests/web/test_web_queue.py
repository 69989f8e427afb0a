"""The queue page (postmaster only): real messages queued with app/queue/enqueue.py, listed with their
counts and (escaped) last errors; "retry now" and "drop" are POSTs with the CSRF token and behave as
`postwarden queue retry|drop` (drop: no DSN, the file deleted with its last row); and once in
Chromium (screenshots queue.png, queue-drop.png)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from app.config import Config
from app.db import session_scope
from app.models import OutgoingMessage
from app.models.base import utcnow
from app.queue import outgoing
from app.queue.enqueue import Queued, enqueue
from app.store.mailboxes import count_received_since
from app.web import queuepage
from tests.support.adminweb import BOB_PASSWORD, BOTH_DATABASES, PASSWORD, admin_browser
from tests.support.webclient import form_token, log_in

HOSTILE_ERROR = "550 5.7.1 <script>alert(1)</script>\x1b[31m red\r\nX-Injected: yes"
SHOWN_ERROR = "550 5.7.1 &lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31m red\\r\\nX-Injected: yes"
MESSAGE = b"From: admin@example.org\r\nTo: carol@example.net\r\nSubject: numbers\r\n\r\nHello\r\n"


def queue(admin_config: Config, *recipients: str) -> list[int]:
    """One real message (its file in outgoing/) for the recipients; its row ids."""
    message = Queued(MESSAGE, "admin@example.org", recipients)
    with session_scope(admin_config.resolved_database_url) as session:
        return enqueue(session, admin_config, message)


def fail_once(admin_config: Config, queue_id: int, error: str, later: timedelta = timedelta(hours=1)) -> None:
    """What a delivery run does with a deferral: claim the row, count the attempt, free it until later."""
    with session_scope(admin_config.resolved_database_url) as session:
        (row,) = outgoing.claim_batch(session, queue_id, lease=timedelta(minutes=5), batch_size=1)
        assert outgoing.postpone(session, row, error, utcnow() + later)


def rows(admin_config: Config) -> dict[int, OutgoingMessage]:
    with session_scope(admin_config.resolved_database_url) as session:
        return {row.id: row for row in session.scalars(select(OutgoingMessage))}


def path_of(admin_config: Config, queue_id: int) -> Path:
    return admin_config.data_dir / rows(admin_config)[queue_id].path


def admin(admin_client: TestClient) -> str:
    """Log in as the admin; the session's CSRF token."""
    log_in(admin_client, "admin", PASSWORD)
    return form_token(admin_client, "/queue")


def test_only_the_postmaster(admin_client: TestClient, admin_config: Config) -> None:
    (queue_id,) = queue(admin_config, "carol@example.net")
    assert admin_client.get("/queue").status_code == 303  # to the login form
    log_in(admin_client, "bob", BOB_PASSWORD)
    token = form_token(admin_client, "/mail")
    assert admin_client.get("/queue").status_code == 403
    assert admin_client.post(f"/queue/{queue_id}/drop", data={"csrf_token": token}).status_code == 403
    assert admin_client.post(f"/queue/{queue_id}/retry", data={"csrf_token": token}).status_code == 403
    assert list(rows(admin_config)) == [queue_id]
    assert 'href="/queue"' not in admin_client.get("/mail").text


@pytest.mark.parametrize("database", BOTH_DATABASES)
def test_the_list_shows_the_rows_and_counts(admin_client: TestClient, admin_config: Config) -> None:
    carol, dave = queue(admin_config, "carol@example.net", "dave@remote.example")
    (erin,) = queue(admin_config, "erin@example.net")
    fail_once(admin_config, carol, HOSTILE_ERROR)
    token = admin(admin_client)
    page = admin_client.get("/queue")
    assert page.status_code == 200 and token
    assert re.search(r"<strong>3</strong> queued, <strong>2</strong> due now", page.text)
    assert '<a href="/queue">Queue</a>' in page.text and '<a href="/outgoing">Outgoing</a>' in page.text
    listed = re.findall(r'<tr id="row-(\d+)">', page.text)
    assert listed == [str(dave), str(erin), str(carol)], "next attempt first: carol's is in an hour"
    carol_row = page.text[page.text.index(f'id="row-{carol}"') :]
    assert f"1/{admin_config.delivery.max_attempts}" in carol_row[:600] and "remote.example" in page.text
    assert SHOWN_ERROR in page.text
    assert "<script>" not in page.text and "\x1b" not in page.text and "X-Injected: yes\r" not in page.text


@pytest.mark.parametrize("database", BOTH_DATABASES)
def test_retry_makes_the_row_due_now(admin_client: TestClient, admin_config: Config) -> None:
    (queue_id,) = queue(admin_config, "carol@example.net")
    fail_once(admin_config, queue_id, "451 4.3.0 try later")
    later = rows(admin_config)[queue_id].next_attempt
    token = admin(admin_client)
    assert admin_client.post(f"/queue/{queue_id}/retry", data={}).status_code == 403
    assert admin_client.post(f"/queue/{queue_id}/retry", data={"csrf_token": "wrong"}).status_code == 403
    assert rows(admin_config)[queue_id].next_attempt == later, "refused: nothing changed"
    before = utcnow()
    done = admin_client.post(f"/queue/{queue_id}/retry", data={"csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == f"/queue?done=retried&id={queue_id}"
    assert before <= rows(admin_config)[queue_id].next_attempt <= utcnow()
    assert rows(admin_config)[queue_id].attempts == 1, "a retry is not an attempt"
    shown = admin_client.get(done.headers["location"])
    assert f"Message {queue_id} is due now" in shown.text


@pytest.mark.parametrize("database", BOTH_DATABASES)
def test_drop_asks_first_then_removes_the_row_and_at_last_the_file(
    admin_client: TestClient, admin_config: Config
) -> None:
    carol, dave = queue(admin_config, "carol@example.net", "dave@remote.example")
    fail_once(admin_config, carol, HOSTILE_ERROR)
    file = path_of(admin_config, carol)
    token = admin(admin_client)
    confirm = admin_client.get(f"/queue/{carol}/drop")
    assert confirm.status_code == 200 and "no DSN is sent" in confirm.text and SHOWN_ERROR in confirm.text
    assert "<script>" not in confirm.text
    assert admin_client.post(f"/queue/{carol}/drop", data={}).status_code == 403
    assert admin_client.post(f"/queue/{carol}/drop", data={"csrf_token": "x" * 43}).status_code == 403
    assert set(rows(admin_config)) == {carol, dave}

    done = admin_client.post(f"/queue/{carol}/drop", data={"csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == f"/queue?done=dropped&id={carol}"
    assert set(rows(admin_config)) == {dave} and file.exists(), "dave's row still needs the file"
    assert "was dropped from the queue; no DSN was sent" in admin_client.get(done.headers["location"]).text
    assert admin_client.post(f"/queue/{dave}/drop", data={"csrf_token": token}).status_code == 303
    assert rows(admin_config) == {} and not file.exists()
    with session_scope(admin_config.resolved_database_url) as session:
        assert outgoing.queue_size(session) == 0, "no DSN was queued"
        assert count_received_since(session, datetime(2000, 1, 1, tzinfo=UTC)) == 0, "nor stored"

    again = admin_client.post(f"/queue/{carol}/drop", data={"csrf_token": token})
    assert again.headers["location"] == f"/queue?done=not-dropped&id={carol}"
    assert "was not dropped: it is no longer queued" in admin_client.get(again.headers["location"]).text
    assert admin_client.get(f"/queue/{carol}/drop").status_code == 404
    assert admin_client.get("/queue/1x/drop").status_code == 404
    assert admin_client.post(f"/queue/{'9' * 40}/retry", data={"csrf_token": token}).status_code == 404


def test_a_row_a_worker_holds_is_left_alone(admin_client: TestClient, admin_config: Config) -> None:
    (queue_id,) = queue(admin_config, "carol@example.net")
    with session_scope(admin_config.resolved_database_url) as session:
        outgoing.claim_batch(session, queue_id, lease=timedelta(minutes=5), batch_size=1)
    token = admin(admin_client)
    page = admin_client.get("/queue")
    assert "being delivered" in page.text and f"/queue/{queue_id}/retry" not in page.text
    retried = admin_client.post(f"/queue/{queue_id}/retry", data={"csrf_token": token})
    assert retried.headers["location"] == f"/queue?done=not-retried&id={queue_id}"
    dropped = admin_client.post(f"/queue/{queue_id}/drop", data={"csrf_token": token})
    assert dropped.headers["location"] == f"/queue?done=not-dropped&id={queue_id}"
    assert list(rows(admin_config)) == [queue_id]


@pytest.mark.parametrize("database", BOTH_DATABASES)
def test_pages(admin_client: TestClient, admin_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queuepage, "PAGE_SIZE", 2)
    ids = queue(admin_config, *(f"r{n}@example.net" for n in range(5)))
    admin(admin_client)
    first = admin_client.get("/queue")
    assert re.findall(r'<tr id="row-(\d+)">', first.text) == [str(i) for i in ids[:2]]
    assert 'href="/queue?page=2"' in first.text and "Showing 1\u20132" in first.text
    last = admin_client.get("/queue?page=3")
    assert re.findall(r'<tr id="row-(\d+)">', last.text) == [str(ids[4])]
    assert 'href="/queue?page=2"' in last.text and "page=4" not in last.text
    assert "No messages on this page" in admin_client.get("/queue?page=9").text
    for bad in ("0", "x", "9" * 20, "-1"):
        assert admin_client.get(f"/queue?page={bad}").status_code == 400
    flash = admin_client.get("/queue?done=<script>&id=1").text
    assert "<script>" not in flash and 'id="flash"' not in flash, "only the known results are shown"


def test_browser_retry_and_drop(admin_config: Config, tmp_path: Path) -> None:
    """Chromium: the list, retry a row (its next attempt is now), drop one after the confirmation."""
    carol, dave = queue(admin_config, "carol@example.net", "dave@remote.example")
    (erin,) = queue(admin_config, "erin@example.net")
    fail_once(admin_config, carol, HOSTILE_ERROR)
    fail_once(admin_config, erin, "421 4.7.0 mx.example.net: too many connections, try again later")
    with admin_browser(admin_config, tmp_path, "/queue") as browser:
        page = browser.page
        assert "3 queued, 1 due now" in page.inner_text("#queue-count")
        assert page.inner_text(f"#row-{carol} td.last-error") == SHOWN_ERROR.replace("&lt;", "<").replace(
            "&gt;", ">"
        )
        assert page.locator("script").count() == 0
        browser.screenshot("queue.png")
        with page.expect_navigation():
            page.click(f"#row-{erin} button.retry")
        assert f"Message {erin} is due now" in page.inner_text("#flash")
        assert rows(admin_config)[erin].next_attempt <= utcnow()
        with page.expect_navigation():
            page.click(f"#row-{carol} a.drop")
        assert "no DSN is sent" in page.inner_text("main")
        browser.screenshot("queue-drop.png")
        with page.expect_navigation():
            page.click("#confirm-drop")
        assert "was dropped" in page.inner_text("#flash")
        assert page.locator(f"#row-{carol}").count() == 0
        assert set(rows(admin_config)) == {dave, erin}
