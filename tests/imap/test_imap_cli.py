"""`postwarden imap` as a process: it reads [[imap.listeners]] from the config, serves IMAP over TLS,
and stops cleanly on SIGTERM; the config refuses what would not start."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from app.config import ConfigError, load_config
from tests.imap.conftest import EXTRA, PASSWORD, imap_config
from tests.support.configs import write_config
from tests.support.smtpfixtures import client_tls_context


def imap_toml(cert: Path, key: Path, kind: str = "imaps", port: int = 0) -> str:
    listener = f'kind = "{kind}"\nport = {port}\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    return "\n[imap]\n\n[[imap.listeners]]\n" + listener


def test_postwarden_imap_serves_the_configured_listener_and_stops_on_sigterm(
    tmp_path: Path, tls_files: tuple[Path, Path], tls_ca: trustme.CA
) -> None:
    config = imap_config(tmp_path / "config")  # the database, the accounts and their passwords
    path = tmp_path / "config" / "postwarden.toml"
    path.write_text(path.read_text() + imap_toml(*tls_files))
    assert load_config(path).imap.listeners[0].kind == "imaps"
    env = {**os.environ, "POSTWARDEN_CONFIG": str(path), "PYTHONPATH": str(Path.cwd())}
    process = subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", "imap"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = listening_port(process)
        client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls_context(tls_ca), timeout=10)
        assert client.login("admin", PASSWORD)[0] == "OK"
        assert client.select("INBOX")[0] == "OK"
        client.logout()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
    assert config.imap.listeners == []  # the fixture's config itself has none


def listening_port(process: subprocess.Popen[str]) -> int:
    """The port from the server's "imap listening on" log line (it binds port 0)."""
    assert process.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        found = re.search(r"imap listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return int(found.group(1))
        if not line and process.poll() is not None:
            break
    pytest.fail("postwarden imap did not start listening")


def test_the_config_checks_imap_certificates_and_ports(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    with pytest.raises(ConfigError, match=r"imap\.listeners\[0\]\.tls_cert"):
        load_config(write_config(tmp_path / "a", EXTRA + imap_toml(tmp_path / "missing.pem", key)))
    with pytest.raises(ConfigError, match="imap"):
        load_config(write_config(tmp_path / "b", EXTRA + imap_toml(cert, key, kind="pop3")))
    clash = imap_toml(cert, key, port=8080)  # the web's default port
    with pytest.raises(ConfigError, match="both listen on port 8080"):
        load_config(write_config(tmp_path / "c", EXTRA + clash))
