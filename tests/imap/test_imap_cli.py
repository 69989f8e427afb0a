"""`postwarden imap` as a process: it binds the [[listeners]] of kind imap/imaps, serves IMAP over TLS,
waits idle without any, and stops cleanly on SIGTERM; the config refuses what would not start, and the
SMTP side leaves the IMAP listeners alone."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from app.cli import main
from app.config import ConfigError, load_config
from app.quickstart import DEV_PORTS
from app.smtpserver.server import bind_listeners
from tests.imap.conftest import EXTRA, PASSWORD, imap_config
from tests.support.configs import write_config
from tests.support.smtpfixtures import client_tls_context


def listener_toml(kind: str, cert: Path | None = None, key: Path | None = None, port: int = 0) -> str:
    tls = f'tls_cert = "{cert}"\ntls_key = "{key}"\n' if cert and key else ""
    return f'\n[[listeners]]\nkind = "{kind}"\nport = {port}\n{tls}'


def start_imap(path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "POSTWARDEN_CONFIG": str(path), "PYTHONPATH": str(Path.cwd())}
    return subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", "imap"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_postwarden_imap_serves_the_imaps_listener_and_stops_on_sigterm(
    tmp_path: Path, tls_files: tuple[Path, Path], tls_ca: trustme.CA
) -> None:
    config = imap_config(tmp_path / "config")  # the database, the accounts and their passwords
    path = tmp_path / "config" / "postwarden.toml"
    path.write_text(path.read_text() + listener_toml("imaps", *tls_files) + listener_toml("inbound"))
    assert [x.kind for x in load_config(path).imap_listeners] == ["imaps"]
    process = start_imap(path)
    try:
        (port,) = log_lines(process, r"imap listening on 127\.0\.0\.1:(\d+)")
        client = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=client_tls_context(tls_ca), timeout=10)
        assert client.login("admin", PASSWORD)[0] == "OK"
        assert client.select("INBOX")[0] == "OK"
        client.logout()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
    assert config.imap_listeners == []  # the fixture's config itself has none


def test_the_dev_quickstart_config_serves_imap_on_its_ports(tmp_path: Path) -> None:
    """`make run`'s config: `postwarden imap` serves it on loopback 1993 (TLS) and 1143 (STARTTLS),
    with quickstart's self-signed certificate and the password it printed."""
    for port in (DEV_PORTS["imaps"], DEV_PORTS["imap"]):
        if not port_free(port):
            pytest.skip(f"port {port} is in use on this machine (a `make run`?)")
    config_file = tmp_path / "config" / "postwarden.toml"
    args = ["--config", str(config_file), "quickstart", "admin@postwarden.localhost", "--dev"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    password = re.findall(r"password: (\S+)", done.output)[0]
    # The client trusts exactly quickstart's certificate (it names mail.postwarden.localhost).
    context = ssl.create_default_context(cafile=config_file.parent / "tls" / "mail.postwarden.localhost.crt")
    context.check_hostname = False
    process = start_imap(config_file)
    try:
        log_lines(process, rf"imap listening on 127\.0\.0\.1:{DEV_PORTS['imap']} \(imap\)")
        with imaplib.IMAP4_SSL("127.0.0.1", DEV_PORTS["imaps"], ssl_context=context, timeout=10) as client:
            assert client.login("admin@postwarden.localhost", password)[0] == "OK"
            assert client.select("INBOX")[0] == "OK"
        with imaplib.IMAP4("127.0.0.1", DEV_PORTS["imap"], timeout=10) as client:
            assert client.starttls(ssl_context=context)[0] == "OK"
            assert client.login("admin", password)[0] == "OK"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_without_imap_listeners_it_waits_idle_until_stopped(tmp_path: Path) -> None:
    """The Procfile starts it for every config; exiting would make honcho stop every process."""
    path = write_config(tmp_path / "config", EXTRA + listener_toml("inbound"))
    process = start_imap(path)
    try:
        log_lines(
            process, r"no \[\[listeners\]\] of kind \"imap\" or \"imaps\" configured; idle until stopped"
        )
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()


def log_lines(process: subprocess.Popen[str], pattern: str) -> tuple[str, ...]:
    """The groups of the first log line matching `pattern` (the server binds port 0, for one)."""
    assert process.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        found = re.search(pattern, line)
        if found:
            return found.groups()
        if not line and process.poll() is not None:
            break
    pytest.fail(f"postwarden imap logged no line matching {pattern!r}")


def test_the_smtp_supervisor_binds_only_the_smtp_listeners(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    kinds = ["imap", "inbound", "imaps", "submission"]
    extra = "".join(listener_toml(kind, *tls_files) for kind in kinds)
    bound = bind_listeners(load_config(write_config(tmp_path / "config", EXTRA + extra)))
    try:
        assert [b.listener.kind for b in bound] == ["inbound", "submission"]
    finally:
        for each in bound:
            each.sock.close()


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        (
            listener_toml("imaps"),
            "key 'listeners[0]': a listener of kind 'imaps' needs tls_cert and tls_key "
            "(IMAP takes passwords only over TLS)",
        ),
        (listener_toml("imap"), "key 'listeners[0]': a listener of kind 'imap' needs tls_cert and tls_key"),
        (
            listener_toml("pop3", port=110),
            "key 'listeners[0].kind': Input should be 'inbound', 'submission', 'imap' or 'imaps'",
        ),
        (
            '\n[imap]\n[[imap.listeners]]\nkind = "imaps"\nport = 993\n',
            'key \'imap\': [[imap.listeners]] is now [[listeners]] with kind = "imap" or "imaps"',
        ),
    ],
)
def test_the_config_refuses_imap_listeners_that_would_not_serve(
    tmp_path: Path, listener: str, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write_config(tmp_path / "config", EXTRA + listener))
    assert message in str(refused.value)


def test_the_config_checks_imap_certificates_and_ports(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    missing = listener_toml("imaps", tmp_path / "missing.pem", key)
    with pytest.raises(ConfigError, match=r"key 'listeners\[0\]\.tls_cert': file .*missing\.pem' does not"):
        load_config(write_config(tmp_path / "a", EXTRA + missing))
    with pytest.raises(ConfigError, match=r"key 'listeners\[0\]\.tls_cert': .* is not a PEM certificate"):
        load_config(write_config(tmp_path / "b", EXTRA + listener_toml("imap", key, key)))
    clash = listener_toml("imaps", cert, key, port=8080)  # the web's default port
    with pytest.raises(ConfigError, match="both listen on port 8080"):
        load_config(write_config(tmp_path / "c", EXTRA + clash))
    clash = listener_toml("submission", port=1143) + listener_toml("imap", cert, key, port=1143)
    with pytest.raises(
        ConfigError, match=r"keys 'listeners\[0\]' and 'listeners\[1\]' both listen on port 1143"
    ):
        load_config(write_config(tmp_path / "d", EXTRA + clash))
