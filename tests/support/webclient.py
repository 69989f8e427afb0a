"""Helpers for web tests: the app served by a real uvicorn server, and logging in as a browser does
(fetch the form, post it with its CSRF token)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from app.accounts import set_password, sync_from_config
from app.config import Config, load_config
from app.db import session_scope
from app.migrate import upgrade_database
from tests.support.configs import write_config

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
WEB_EXTRA = """
[web]
secret_key_file = "web-secret.key"

[accounts.bob]
addresses = ["bob@example.org"]
"""


def write_web_config(
    directory: Path,
    dns_port: int,
    passwords: dict[str, str],
    database_url: str | None = None,
    extra: str = "",
) -> Config:
    """The test config plus a second (non-admin) account bob and a session secret (and `extra`
    TOML), migrated, with the given account passwords set (on SQLite in the directory, unless
    `database_url` is given)."""
    directory.mkdir(parents=True)
    (directory / "web-secret.key").write_text("s3cret-" * 8)
    path = write_config(directory, WEB_EXTRA + extra, dns_port=dns_port, database_url=database_url)
    config = load_config(path)
    upgrade_database(config.resolved_database_url)
    with session_scope(config.resolved_database_url) as session:
        sync_from_config(session, config)
        for account, password in passwords.items():
            set_password(session, account, password)
    return config


@contextmanager
def served(app: Starlette, config: Config) -> Iterator[str]:
    """`app` served by uvicorn on a loopback port in a thread, as `postwarden web` runs it (the proxy
    headers of web.trusted_proxies believed); yields the base URL."""
    settings = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        lifespan="off",
        proxy_headers=True,
        forwarded_allow_ips=list(config.web.trusted_proxies),
    )
    server = uvicorn.Server(settings)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WebProcess:
    url: str
    process: subprocess.Popen[str]
    output: str = ""  # everything it printed, once stopped


@contextmanager
def web_process(config_file: Path) -> Iterator[WebProcess]:
    """`postwarden web` as the Procfile runs it, in its own process on a free loopback port, once it
    answers /health; stopped by SIGTERM on leaving (its output and exit status kept)."""
    port = free_port()
    postwarden = Path(sys.executable).parent / "postwarden"
    process = subprocess.Popen(
        [postwarden, "--config", config_file, "web", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    web = WebProcess(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                httpx.get(f"{web.url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "postwarden web did not answer"
                time.sleep(0.05)
        yield web
    finally:
        process.terminate()
        web.output, _ = process.communicate(timeout=10)


def form_token(client: TestClient | httpx.Client, path: str) -> str:
    """The CSRF token of the form on the page at `path` (the login form, or the logout button)."""
    page = client.get(path)
    match = CSRF_FIELD.search(page.text)
    assert match, f"no CSRF token on {path} ({page.status_code})"
    return match.group(1)


def log_in(
    client: TestClient | httpx.Client,
    account: str,
    password: str,
    next_page: str = "/",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    token = form_token(client, "/login")
    data = {"account": account, "password": password, "next": next_page, "csrf_token": token}
    return client.post("/login", data=data, headers=headers)
