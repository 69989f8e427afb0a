"""First run: `make run` installs no test extras and ends with one "ready" block (app/firstrun.py)
once every process answers; kombu's no-hostname warning is not repeated for the filesystem broker."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from app.firstrun import FLOWER_PORT
from tests.support.configs import write_config

ROOT = Path(__file__).resolve().parents[2]
POSTWARDEN = str(Path(sys.executable).with_name("postwarden"))


def make_dry_run(target: str, tmp_path: Path) -> str:
    """What `make TARGET` would run for a fresh checkout (a venv and config that do not exist yet)."""
    venv, config = f"VENV={tmp_path / 'venv'}", f"CONFIG={tmp_path / 'c.toml'}"
    args = ["make", "-n", "-C", str(ROOT), target, venv, config]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout


def test_make_run_installs_postwarden_without_the_test_extras(tmp_path: Path) -> None:
    run = make_dry_run("run", tmp_path)
    assert "pip install -q --disable-pip-version-check -e .\n" in run and "PYTHONWARNINGS=ignore" in run
    assert "[test]" not in run
    assert "python -m app.firstrun" in run and "honcho start" in run
    assert "-e '.[test]'" in make_dry_run("test", tmp_path)


def test_the_procfile_serves_flower_where_the_block_says() -> None:
    assert f"--port={FLOWER_PORT}" in (ROOT / "Procfile").read_text()


@contextmanager
def listening(count: int) -> Iterator[list[int]]:
    """Real sockets listening on loopback ports, standing in for the started processes."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            ports.append(sock.getsockname()[1])
        yield ports


def quickstart_output(tmp_path: Path) -> tuple[Path, str]:
    """Real quickstart output (as the Makefile keeps it) and the password it printed."""
    output = tmp_path / "first-run"
    config = tmp_path / "qs" / "postwarden.toml"
    with output.open("w") as out:
        args = [POSTWARDEN, "--config", str(config), "quickstart", "admin@postwarden.localhost", "--dev"]
        subprocess.run(args, stdout=out, check=True, timeout=60)
    match = re.search(r"password: (\S+)", output.read_text())
    assert match
    return output, match[1]


def first_run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POSTWARDEN_CONFIG": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "app.firstrun", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_ready_block_once_everything_answers(tmp_path: Path) -> None:
    output, password = quickstart_output(tmp_path)
    tls = tmp_path / "qs" / "tls" / "mail.postwarden.localhost"  # quickstart's self-signed certificate
    with listening(6) as (inbound, submission, imaps, imap, web, flower):
        extra = (
            f'\n[web]\nport = {web}\n[[listeners]]\nkind = "inbound"\nport = {inbound}\n'
            f'[[listeners]]\nkind = "submission"\nport = {submission}\n'
            f'tls_cert = "{tls}.crt"\ntls_key = "{tls}.key"\n'
            f'[[listeners]]\nkind = "imaps"\nport = {imaps}\ntls_cert = "{tls}.crt"\ntls_key = "{tls}.key"\n'
            f'[[listeners]]\nkind = "imap"\nport = {imap}\ntls_cert = "{tls}.crt"\ntls_key = "{tls}.key"\n'
        )
        config = write_config(tmp_path / "config", extra)
        done = first_run(config, str(output), "--timeout", "20", "--flower-port", str(flower))
    assert done.returncode == 0, done.stderr
    block = done.stdout.strip().splitlines()
    assert block[0] == "=" * 20 + " Postwarden is ready " + "=" * 20 and set(block[-1]) == {"="}
    text = done.stdout
    assert f"inbound SMTP     127.0.0.1:{inbound}\n" in text
    assert f"submission SMTP  127.0.0.1:{submission} (STARTTLS, AUTH)\n" in text
    assert f"imaps IMAP       127.0.0.1:{imaps} (TLS)\n" in text
    assert f"imap IMAP        127.0.0.1:{imap} (STARTTLS)\n" in text
    client = (
        f"  mail client      IMAP server 127.0.0.1, port {imaps} with TLS or {imap} with STARTTLS\n"
        f"                   SMTP server 127.0.0.1, port {submission} with STARTTLS\n"
        "                   user admin (or admin@postwarden.localhost), the password below\n"
        "                   the certificate is self-signed (--dev): accept it in the client\n"
    )
    assert client in text
    assert f"web              http://127.0.0.1:{web}/\n" in text
    assert f"flower           http://127.0.0.1:{flower}/" in text
    assert f"login            admin (admin@postwarden.localhost), password: {password}\n" in text
    assert f"config           {config.resolve()}\n" in text
    assert not output.exists()  # the password file is gone once shown


def test_the_block_waits_for_the_imap_listeners(tmp_path: Path) -> None:
    """The imap process of the Procfile is waited for like the others, and named when silent."""
    tls = tmp_path / "qs" / "tls" / "mail.postwarden.localhost"
    quickstart_output(tmp_path)
    with listening(1) as (imaps,):
        pass  # closed again: nothing answers there
    with listening(2) as (web, flower):
        extra = f'\n[web]\nport = {web}\n[[listeners]]\nkind = "imaps"\nport = {imaps}\n'
        config = write_config(tmp_path / "config", extra + f'tls_cert = "{tls}.crt"\ntls_key = "{tls}.key"\n')
        done = first_run(config, "--timeout", "1", "--flower-port", str(flower))
    assert done.returncode == 1
    assert f"not ready after 1 s: imaps IMAP on 127.0.0.1:{imaps} not answering" in done.stdout


def test_not_ready_names_what_does_not_answer(tmp_path: Path) -> None:
    with listening(1) as (web,):
        config = write_config(tmp_path / "config", f"\n[web]\nport = {web}\n")
    # The socket is closed again: nothing answers on the web port nor on flower's.
    done = first_run(config, "--timeout", "1", "--flower-port", str(web))
    assert done.returncode == 1
    silent = f"web on 127.0.0.1:{web}, flower on 127.0.0.1:{web} not answering"
    assert f"not ready after 1 s: {silent}" in done.stdout
    assert "Postwarden is ready" not in done.stdout


def test_no_hostname_warning_is_dropped_for_the_filesystem_broker(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config")
    code = (
        "import logging\n"
        "logging.basicConfig()\n"
        "from tasks.celery_app import app\n"
        "app.conf.broker_url\n"  # configures the app from the config file
        "kombu = logging.getLogger('kombu.connection')\n"
        "kombu.warning(\"No hostname was supplied. Reverting to default 'x'\")\n"
        "kombu.warning('another warning')\n"
    )
    env = {**os.environ, "POSTWARDEN_CONFIG": str(config)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "No hostname" not in done.stderr and "another warning" in done.stderr
