"""The web process: login, status page, DNS page, /health and /metrics; one real uvicorn server."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.testclient import TestClient

from app.cli import main
from app.config import Config, load_config
from app.db import session_scope
from app.dnsrecords import records_for_domain
from app.models import Account, JobRun, Mailbox, Message, OutgoingMessage
from app.models.base import utcnow
from app.queue.enqueue import Queued
from app.queue.outgoing import count_due
from app.web.app import WebSetupError, create_app
from tests.support import webclient
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.webclient import form_token, served, web_process, write_web_config

PASSWORD = "correct horse battery"
BOB_PASSWORD = "bob's own password"


@pytest.fixture
def web_config(tmp_path: Path, dns: DNSTestServer) -> Config:
    """The test config plus a second (non-admin) account, a session secret, passwords."""
    return write_web_config(tmp_path / "config", dns.port, {"admin": PASSWORD, "bob": BOB_PASSWORD})


def add_activity(config: Config) -> None:
    """Two messages today and one yesterday; three queue rows, two due; runs of three jobs."""
    now = utcnow()
    with session_scope(config.resolved_database_url) as session:
        account = session.query(Account).filter_by(name="admin").one()
        inbox = session.query(Mailbox).filter_by(account_id=account.id, name="Inbox").one()
        for n, received in enumerate([now, now - timedelta(minutes=1), now - timedelta(days=1, minutes=1)]):
            row = Message(
                file_id=f"f{n}",
                account_id=account.id,
                mailbox_id=inbox.id,
                uid=n + 1,
                modseq=1,
                size=10,
                path=f"m/{n}",
            )
            row.received = received
            session.add(row)
        for n, next_attempt in enumerate([now - timedelta(minutes=5), now, now + timedelta(hours=1)]):
            session.add(
                OutgoingMessage(
                    sender="admin@example.org",
                    recipient=f"r{n}@example.net",
                    recipient_domain="example.net",
                    path=f"o/{n}",
                    size=10,
                    created=now - timedelta(hours=n),
                    next_attempt=next_attempt,
                )
            )
        hours_ago, minutes_ago = now - timedelta(hours=2), now - timedelta(minutes=3)
        session.add_all(
            [
                JobRun(
                    job="send_dmarc_reports",
                    cid="a1",
                    started=hours_ago,
                    finished=hours_ago,
                    outcome="old run",
                ),
                JobRun(
                    job="send_dmarc_reports",
                    cid="a2",
                    started=minutes_ago,
                    finished=now,
                    outcome="3 reports queued",
                ),
                JobRun(job="sweep_queue", cid="a3", started=now - timedelta(seconds=30)),
            ]
        )


@pytest.fixture
def app(web_config: Config) -> Starlette:
    return create_app(web_config)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as test_client:
        yield test_client


def log_in(
    client: TestClient | httpx.Client, account: str = "admin", password: str = PASSWORD, next_page: str = "/"
) -> httpx.Response:
    return webclient.log_in(client, account, password, next_page)


@pytest.fixture
def live_server(app: Starlette, web_config: Config) -> Iterator[str]:
    """The app served by a real uvicorn server on a loopback port, in a thread."""
    with served(app, web_config) as url:
        yield url


def test_real_server_login_status_metrics_logout(live_server: str, web_config: Config) -> None:
    add_activity(web_config)
    with httpx.Client(base_url=live_server, follow_redirects=False, timeout=10) as http:
        health = http.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok", "database": "ok"})

        anonymous = http.get("/")
        assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/login?next=/")
        form = http.get("/login?next=/")
        assert form.status_code == 200 and 'name="password"' in form.text

        wrong = log_in(http, password="not it")
        assert wrong.status_code == 401 and "Wrong account name or password." in wrong.text
        assert "postwarden_session" not in wrong.cookies

        right = log_in(http)
        assert (right.status_code, right.headers["location"]) == (303, "/")
        cookie = right.headers["set-cookie"]
        assert (
            "postwarden_session=" in cookie
            and "httponly" in cookie.lower()
            and "samesite=lax" in cookie.lower()
        )

        page = http.get("/")
        assert page.status_code == 200
        assert re.search(r'id="messages-today">2<', page.text)
        assert re.search(r'id="queue-size">3<', page.text)
        assert re.search(r'id="queue-due">2<', page.text)
        assert "3 reports queued" in page.text and "old run" not in page.text
        assert "TLS reports" in page.text and "never run" in page.text
        assert "sweep_queue" in page.text and "running" in page.text

        scrape = http.get("/metrics")
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain")
        assert "postwarden_messages_stored_today 2.0" in scrape.text
        assert "postwarden_outgoing_queue_size 3.0" in scrape.text
        assert "postwarden_outgoing_queue_due 2.0" in scrape.text
        assert 'postwarden_job_last_started_timestamp_seconds{job="send_dmarc_reports"}' in scrape.text
        assert 'postwarden_job_last_finished_timestamp_seconds{job="sweep_queue"}' not in scrape.text

        out = http.post("/logout", data={"csrf_token": form_token(http, "/")})
        assert (out.status_code, out.headers["location"]) == (303, "/login")
        assert http.get("/").status_code == 303


def test_empty_status_and_metrics(client: TestClient) -> None:
    log_in(client)
    page = client.get("/")
    assert re.search(r'id="messages-today">0<', page.text)
    assert re.search(r'id="queue-size">0<', page.text)
    assert "No job has run yet." in page.text
    scrape = client.get("/metrics").text
    assert "postwarden_outgoing_queue_size 0.0" in scrape


def test_a_leased_row_is_due_nowhere(client: TestClient, web_config: Config, tmp_path: Path) -> None:
    """One definition of "due" (app/queue/outgoing.py): a row whose time has come is not due while a
    live lease holds it, for the sweep's count, the status page, /metrics and `queue list` alike."""
    now = utcnow()
    past, soon = now - timedelta(minutes=5), now + timedelta(minutes=5)
    # (next attempt, lease until): free; lease expired (its worker died); held; not yet due.
    rows = [(past, None), (past, now - timedelta(minutes=1)), (past, soon), (now + timedelta(hours=1), None)]
    with session_scope(web_config.resolved_database_url) as session:
        for n, (next_attempt, lease_until) in enumerate(rows):
            message = Queued(b"x", "admin@example.org", [f"r{n}@example.net"], next_attempt=next_attempt)
            (row,) = message.rows(f"outgoing/{n}", 1, default_max_attempts=8)
            session.add(OutgoingMessage(**row, lease_owner=lease_until and "worker", lease_until=lease_until))
    with session_scope(web_config.resolved_database_url) as session:
        assert count_due(session) == 2  # what the sweep counts
    log_in(client)
    assert re.search(r'id="queue-size">4<', client.get("/").text)
    assert re.search(r'id="queue-due">2<', client.get("/").text)
    assert "postwarden_outgoing_queue_due 2.0" in client.get("/metrics").text
    config_file = str(tmp_path / "config" / "postwarden.toml")
    listed = CliRunner().invoke(main, ["--config", config_file, "queue", "list", "--json"])
    assert [(r["recipient"], r["due"], r["held"]) for r in json.loads(listed.output)] == [
        ("r0@example.net", True, False),
        ("r1@example.net", True, False),
        ("r2@example.net", False, True),
        ("r3@example.net", False, False),
    ]
    text = CliRunner().invoke(main, ["--config", config_file, "queue", "list"]).output
    assert "4 message(s) queued, 2 due" in text


def test_login_keeps_next_and_refuses_other_sites(client: TestClient) -> None:
    redirect = client.get("/dns/example.org?check=1")
    assert redirect.headers["location"] == "/login?next=/dns/example.org%3Fcheck%3D1"
    form = client.get(redirect.headers["location"])
    assert 'value="/dns/example.org?check=1"' in form.text
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert log_in(client, next_page=target).headers["location"] == "/"
    assert log_in(client, next_page="/dns").headers["location"] == "/dns"


@pytest.mark.parametrize(
    ("account", "password"),
    [("admin", ""), ("nobody", PASSWORD), ("bob", PASSWORD), ("admin", PASSWORD.upper())],
)
def test_login_failures(client: TestClient, account: str, password: str) -> None:
    response = log_in(client, account, password)
    assert response.status_code == 401
    assert "Wrong account name or password." in response.text
    assert client.get("/").status_code == 303


def test_non_admin_account_is_refused_admin_pages(client: TestClient) -> None:
    assert log_in(client, "bob", BOB_PASSWORD).status_code == 303
    for path in ("/", "/dns"):
        response = client.get(path)
        assert response.status_code == 403
        assert "This page is for the postmaster account." in response.text


def test_forged_session_cookie_is_ignored(client: TestClient) -> None:
    client.cookies.set("postwarden_session", "eyJhY2NvdW50IjogImFkbWluIn0=.forged.signature")
    assert client.get("/").status_code == 303


def test_session_of_a_removed_account_ends(web_config: Config, tmp_path: Path) -> None:
    with TestClient(create_app(web_config), follow_redirects=False) as first:
        log_in(first, "bob", BOB_PASSWORD)
        cookie = first.cookies["postwarden_session"]
    without_bob = web_config.model_copy(update={"accounts": {"admin": web_config.accounts["admin"]}})
    with TestClient(create_app(without_bob), follow_redirects=False) as second:
        second.cookies.set("postwarden_session", cookie)
        assert second.get("/dns").status_code == 303


def test_dns_page_lists_records_and_checks_them(
    client: TestClient, web_config: Config, dns: DNSTestServer
) -> None:
    log_in(client)
    page = client.get("/dns")
    assert page.status_code == 200
    records = records_for_domain(web_config, "example.org")
    for record in records:
        assert f"<code>{record.name}</code>" in page.text
    assert "https://mta-sts.example.org/.well-known/mta-sts.txt" in page.text
    assert "Check what is published" in page.text

    mx = next(r for r in records if r.kind == "mx")
    dns.add(mx.name, "MX", mx.value)
    dns.add("mail.example.org", "A", "192.0.2.10")
    checked = client.get("/dns/example.org?check=1")
    assert checked.status_code == 200
    statuses = re.findall(r'<td class="check"><span class="(\w+)">', checked.text)
    assert len(statuses) == len(records)
    assert statuses[0] == "ok" and statuses.count("missing") == len(records) - 1
    assert "fix: publish: _dmarc.example.org. 3600 IN TXT" in checked.text

    unknown = client.get("/dns/other.example")
    assert unknown.status_code == 404 and "other.example is not a configured domain." in unknown.text


def test_health_reports_an_unusable_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(write_config(tmp_path / "unmigrated"))
    sqlite3.connect(config.data_dir / "postwarden.db").close()  # an empty file: not migrated
    with TestClient(create_app(config)) as client:
        response = client.get("/health")
        assert response.status_code == 503
        # Status only (anyone may ask /health); what went wrong is in the log.
        assert response.json() == {"status": "error", "database": "error"}
        assert "no such table: job_runs" in caplog.text
        scrape = client.get("/metrics")
        assert scrape.status_code == 503
        assert scrape.text == "The database is unavailable; see the web process's log.\n"


def test_pages_answer_503_when_the_database_breaks(client: TestClient, web_config: Config) -> None:
    log_in(client)
    assert client.get("/").status_code == 200
    with session_scope(web_config.resolved_database_url) as session:
        session.execute(text("DROP TABLE job_runs"))
    for path in ("/", "/metrics", "/health"):
        response = client.get(path)
        assert response.status_code == 503, path
    assert client.get("/").text == "The database is unavailable; see the web process's log.\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "web.secret_key_file '{path}' cannot be read: [Errno 2] No such file or directory"),
        ("short", "web.secret_key_file '{path}' holds 5 characters; use at least 16 random ones"),
    ],
)
def test_bad_secret_key_file(tmp_path: Path, content: str | None, message: str) -> None:
    config_file = write_config(tmp_path / "c", '\n[web]\nsecret_key_file = "secret.key"\n')
    path = tmp_path / "c" / "secret.key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(WebSetupError) as error:
        create_app(load_config(config_file))
    assert str(error.value).startswith(message.format(path=path))
    result = CliRunner().invoke(main, ["--config", str(config_file), "web"])
    assert result.exit_code == 2
    assert result.stderr.startswith("postwarden: " + message.format(path=path))


def test_postwarden_web_command_serves(web_config: Config, tmp_path: Path) -> None:
    """`postwarden web` as the Procfile runs it: a real process on loopback, stopped by SIGTERM."""
    with web_process(tmp_path / "config" / "postwarden.toml") as web:
        response = httpx.get(f"{web.url}/health", timeout=10)
        assert response.json() == {"status": "ok", "database": "ok"}
    # uvicorn shuts down cleanly, then re-raises the signal so the exit status says what stopped it.
    assert "Application shutdown complete." in web.output
    assert web.process.returncode == -signal.SIGTERM, web.output
