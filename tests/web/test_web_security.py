"""The web app against a hostile browser or site, over a real uvicorn server: sessions that end when
they should, CSRF tokens and same-origin checks on every form, security headers on every response,
Secure cookies behind a TLS proxy; and a real browser (Debian's Chromium) logging in and out under the
Content-Security-Policy."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app.cli import main
from app.config import Config
from app.db import session_scope
from app.models import Account, LoginFailure, WebSession
from app.models.base import utcnow
from app.web.app import create_app
from app.web.security import CONTENT_SECURITY_POLICY, FORM_READ_SECONDS
from app.websessions import current_session, start_session
from tests.support.browser import launch_chromium
from tests.support.dnsserver import DNSTestServer
from tests.support.webclient import form_token, log_in, served, write_web_config

PASSWORD = "correct horse battery"
BOB_PASSWORD = "bob's own password"
SESSION = "postwarden_session"


@pytest.fixture
def web_config(tmp_path: Path, dns: DNSTestServer) -> Config:
    return write_web_config(tmp_path / "config", dns.port, {"admin": PASSWORD, "bob": BOB_PASSWORD})


@contextmanager
def web(config: Config) -> Iterator[str]:
    """A web app for `config` served by uvicorn; yields its base URL."""
    with served(create_app(config), config) as url:
        yield url


@pytest.fixture
def base_url(web_config: Config) -> Iterator[str]:
    with web(web_config) as url:
        yield url


def client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)


def web_session_count(config: Config) -> int:
    with session_scope(config.resolved_database_url) as session:
        return session.scalar(select(func.count()).select_from(WebSession)) or 0


def with_web(config: Config, **settings: object) -> Config:
    return config.model_copy(update={"web": config.web.model_copy(update=settings)})


def test_every_response_has_the_security_headers(base_url: str) -> None:
    with client(base_url) as http:
        responses = {path: http.get(path) for path in ("/login", "/", "/health", "/metrics", "/nowhere")}
        stylesheet = http.get("/static/style.css")
        assert log_in(http, "admin", PASSWORD).status_code == 303
        responses.update({f"{path} (logged in)": http.get(path) for path in ("/", "/dns")})
        responses["/logout"] = http.post("/logout", data={"csrf_token": form_token(http, "/")})
    assert [r.status_code for r in responses.values()] == [200, 303, 200, 200, 404, 200, 200, 303]
    assert {"script-src 'self'", "frame-ancestors 'none'"} <= set(CONTENT_SECURITY_POLICY.split("; "))
    assert stylesheet.status_code == 200 and stylesheet.headers["content-type"].startswith("text/css")
    for path, response in [*responses.items(), ("/static/style.css", stylesheet)]:
        headers = response.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert (headers["x-content-type-options"], headers["x-frame-options"]) == ("nosniff", "DENY"), path
        assert headers["referrer-policy"] == "same-origin", path
        assert headers.get("cache-control") == (None if path.startswith("/static/") else "no-store"), path
    for path in ("/login", "/ (logged in)", "/dns (logged in)"):
        page = responses[path].text
        assert '<link rel="stylesheet" href="/static/style.css">' in page
        assert not re.search(r"<style|<script|\sstyle=|\son\w+=", page), f"inline style or script on {path}"


def test_logging_out_ends_the_session_for_every_copy_of_the_cookie(base_url: str, web_config: Config) -> None:
    with client(base_url) as http, client(base_url) as thief:
        assert log_in(http, "admin", PASSWORD).status_code == 303
        token = http.cookies[SESSION]
        thief.cookies.set(SESSION, token)
        assert thief.get("/").status_code == 200
        with session_scope(web_config.resolved_database_url) as session:
            keys = list(session.scalars(select(WebSession.key)))
        assert len(keys) == 1 and token not in keys[0], "the table holds an HMAC, not the cookie"
        assert http.post("/logout", data={"csrf_token": form_token(http, "/")}).status_code == 303
        assert thief.get("/").status_code == 303, "a copy of the cookie must not outlive the logout"
    assert web_session_count(web_config) == 0


def test_a_password_change_ends_the_accounts_sessions(base_url: str, web_config: Config) -> None:
    with client(base_url) as admin, client(base_url) as bob:
        assert log_in(admin, "admin", PASSWORD).status_code == 303
        assert log_in(bob, "bob", BOB_PASSWORD).status_code == 303
        config_file = web_config.data_dir.parent / "postwarden.toml"
        changed = CliRunner().invoke(
            main,
            ["--config", str(config_file), "account", "set-password", "admin", "--password-stdin"],
            input="a new password\n",
        )
        assert changed.exit_code == 0, changed.output
        assert admin.get("/").status_code == 303, "admin's session ended with the old password"
        assert bob.get("/").status_code == 403, "bob is still logged in (not the admin: 403)"
        assert log_in(admin, "admin", "a new password").status_code == 303


def test_a_new_secret_ends_every_session(web_config: Config) -> None:
    with web(web_config) as url, client(url) as http:
        assert log_in(http, "admin", PASSWORD).status_code == 303
        cookie = http.cookies[SESSION]
    assert web_config.web.secret_key_file is not None
    web_config.web.secret_key_file.write_text("a-whole-new-secret-" * 3)
    with web(web_config) as url, client(url) as http:
        http.cookies.set(SESSION, cookie)
        assert http.get("/").status_code == 303


def test_login_needs_its_form_token_and_our_origin(base_url: str, web_config: Config) -> None:
    credentials = {"account": "admin", "password": PASSWORD, "next": "/"}
    with client(base_url) as http, client(base_url) as other:
        token = form_token(http, "/login")
        missing = http.post("/login", data=credentials)
        assert missing.status_code == 403
        assert "The login form has expired or did not come from this site" in missing.text
        # A token is worth something only with the cookie it was made for (another browser's is not).
        form_token(other, "/login")
        assert other.post("/login", data={**credentials, "csrf_token": token}).status_code == 403
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Origin": base_url.replace("http://", "https://")},
            {"Referer": "https://evil.example/login"},
        ):
            refused = http.post("/login", data={**credentials, "csrf_token": token}, headers=headers)
            assert refused.status_code == 403, headers
            assert "This form was sent from another site; it is refused." in refused.text
            assert SESSION not in refused.cookies
        # A forged token that is not ASCII is refused like any other (compare_digest on str raised: 500).
        forged = http.post("/login", data={**credentials, "csrf_token": "é" * 64})
        assert forged.status_code == 403
        ours = http.post("/login", data={**credentials, "csrf_token": token}, headers={"Origin": base_url})
        assert ours.status_code == 303 and SESSION in ours.cookies
    with session_scope(web_config.resolved_database_url) as session:
        assert session.scalar(select(func.count()).select_from(LoginFailure)) == 0, "no password was tried"


def test_logout_needs_the_sessions_token_and_our_origin(base_url: str) -> None:
    with client(base_url) as admin, client(base_url) as bob:
        assert log_in(admin, "admin", PASSWORD).status_code == 303
        assert log_in(bob, "bob", BOB_PASSWORD).status_code == 303
        token, bobs = form_token(admin, "/"), form_token(bob, "/")  # bob's page: a 403, with his logout form
        assert token != bobs
        for data, headers in (
            ({}, {}),
            ({"csrf_token": bobs}, {}),
            ({"csrf_token": token}, {"Origin": "https://evil.example"}),
        ):
            refused = admin.post("/logout", data=data, headers=headers)
            assert refused.status_code == 403, (data, headers)
            assert admin.get("/").status_code == 200, "still logged in"
        assert admin.post("/logout", data={"csrf_token": token}).status_code == 303
        assert admin.get("/").status_code == 303


def test_forms_are_bounded(base_url: str) -> None:
    with client(base_url) as http:
        token = form_token(http, "/login")
        huge = http.post("/login", data={"account": "admin", "password": "x" * 20000, "csrf_token": token})
        assert huge.status_code == 413 and "The form is too large." in huge.text
        many = http.post("/login", data={f"f{n}": "1" for n in range(20)} | {"csrf_token": token})
        assert many.status_code == 400
        as_json = http.post("/login", json={"account": "admin", "password": PASSWORD, "csrf_token": token})
        assert as_json.status_code == 415


def test_a_trickled_form_is_cut(base_url: str) -> None:
    """A client that sends its form a byte at a time does not hold the request open for ever."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /login HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: {base_url}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        started = time.monotonic()
        reply = b""
        while not reply and time.monotonic() - started < 25:
            sock.sendall(b"a")
            sock.settimeout(0.5)
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                continue
        assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
        assert time.monotonic() - started < FORM_READ_SECONDS + 5


@pytest.mark.parametrize(
    ("settings", "forwarded_proto", "secure"),
    [
        ({}, None, False),
        ({}, "https", True),  # from 127.0.0.1, a trusted proxy by default
        ({"trusted_proxies": ["192.0.2.1"]}, "https", False),  # not from a trusted proxy: ignored
        ({"secure_cookies": "always"}, None, True),
        ({"secure_cookies": "never"}, "https", False),
    ],
)
def test_secure_cookies(
    web_config: Config, settings: dict[str, object], forwarded_proto: str | None, secure: bool
) -> None:
    headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
    with web(with_web(web_config, **settings)) as url, client(url) as http:
        form = http.get("/login", headers=headers)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        data = {"account": "admin", "password": PASSWORD, "csrf_token": token.group(1)}
        # As a browser on https would (httpx keeps a Secure cookie off plain http): the form's cookie back.
        login_cookie = form.headers["set-cookie"].partition(";")[0]
        response = http.post("/login", data=data, headers={**headers, "Cookie": login_cookie})
    assert response.status_code == 303
    for cookie in (form.headers["set-cookie"], response.headers["set-cookie"]):
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in attributes and "samesite=lax" in attributes
        assert ("secure" in attributes) is secure, cookie


def test_sessions_expire(sqlite_url: str) -> None:
    secret, start = "s3cret-" * 8, utcnow()
    with session_scope(sqlite_url) as session:
        account = Account(name="admin")
        session.add(account)
        session.flush()
        token = start_session(session, secret, account.id, start)
        assert current_session(session, secret, token, start + timedelta(hours=23)) is not None
        assert current_session(session, secret + "x", token, start) is None
        # Seen at 23 h: alive a day after that, but never past a week after login.
        assert current_session(session, secret, token, start + timedelta(days=1, hours=22)) is not None
        assert current_session(session, secret, token, start + timedelta(days=2, hours=23)) is None
        assert session.scalar(select(func.count()).select_from(WebSession)) == 0
        old = start_session(session, secret, account.id, start)
        for visit in range(1, 8):  # used every 23 hours: still the week's limit
            alive = current_session(session, secret, old, start + timedelta(hours=23 * visit))
            assert alive is not None, visit
        assert current_session(session, secret, old, start + timedelta(days=7)) is None


def test_flower_listens_on_loopback_only() -> None:
    procfile = (Path(__file__).resolve().parents[2] / "Procfile").read_text()
    flower = next(line for line in procfile.splitlines() if line.startswith("flower:"))
    assert "--address=127.0.0.1" in flower.split()


def test_browser_logs_in_and_out_under_the_csp(base_url: str, tmp_path: Path) -> None:
    """Debian's Chromium through Playwright: the login form, the status page and logging out work, the
    stylesheet applies, and the console shows no Content-Security-Policy violation (or any error)."""
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            page.goto(f"{base_url}/")
            assert page.url == f"{base_url}/login?next=/"
            page.fill('input[name="account"]', "admin")
            page.fill('input[name="password"]', PASSWORD)
            page.click('button[type="submit"]')
            page.wait_for_url(f"{base_url}/")
            assert page.inner_text("h1") == "mail.example.org"
            header_colour = page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor")
            assert header_colour == "rgb(35, 57, 93)", "the stylesheet applies"
            page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
            page.click("text=Log out admin")
            page.wait_for_url(f"{base_url}/login")
            page.goto(f"{base_url}/")
            assert page.url == f"{base_url}/login?next=/", "logged out"
        finally:
            browser.close()
    assert (tmp_path / "status.png").stat().st_size > 1000
    assert console == [], console
