"""`python -m app.firstrun [QUICKSTART_OUTPUT]`: wait until `make run`'s processes answer, then print
one "ready" block: the listeners, how a mail client connects, the web and flower URLs, the admin
password if quickstart has just made it, and where the config and the data are.

`make run` starts it in the background beside honcho, so the block comes after the processes' start-up
lines. Quickstart's output, kept by the Makefile in a file of mode 0600, is read for the password and
then removed: the password is shown in the block once, as quickstart shows it once.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from pathlib import Path

from cryptography import x509

from app.config import IMAP_KINDS, Config, ConfigError, Listener, config_path, load_config

# The Procfile's flower port (tests/cli/test_first_run.py checks they agree).
FLOWER_PORT = 5555
READY_TIMEOUT = 90.0
PASSWORD_LINE = re.compile(r"^Account '([^']{1,64})' \(([^)]{1,320})\), password: (\S{1,128})$", re.MULTILINE)


def endpoints(config: Config, flower_port: int) -> list[tuple[str, str, int]]:
    """What must answer before the block is printed: (what, address, port)."""
    found = [(_label(lst), lst.address, lst.port) for lst in config.listeners if lst.port]
    found.append(("web", config.web.address, config.web.port))
    found.append(("flower", "127.0.0.1", flower_port))
    return found


def answers(address: str, port: int) -> bool:
    host = "127.0.0.1" if address in ("0.0.0.0", "") else "::1" if address == "::" else address
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(points: list[tuple[str, str, int]], timeout: float) -> list[tuple[str, str, int]]:
    """Poll until every endpoint accepts a connection or the deadline passes; those still silent."""
    deadline = time.monotonic() + timeout
    silent = list(points)
    while silent and time.monotonic() < deadline:
        silent = [point for point in silent if not answers(point[1], point[2])]
        if silent:
            time.sleep(0.5)
    return silent


def take_password(quickstart_output: Path | None) -> tuple[str, str, str] | None:
    """(account, address, password) from quickstart's output, which is then removed."""
    if quickstart_output is None or not quickstart_output.is_file():
        return None
    text = quickstart_output.read_text(encoding="utf-8", errors="replace")[:65536]
    quickstart_output.unlink()
    match = PASSWORD_LINE.search(text)
    return (match[1], match[2], match[3]) if match else None


def url(address: str, port: int) -> str:
    host = "127.0.0.1" if address in ("0.0.0.0", "") else f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/"


def _label(listener: Listener) -> str:
    return f"{listener.kind} {'IMAP' if listener.kind in IMAP_KINDS else 'SMTP'}"


def _offers(listener: Listener) -> str:
    if listener.kind == "imaps":
        return " (TLS)"
    if listener.tls_cert is None:
        return ""
    return " (STARTTLS, AUTH)" if listener.kind == "submission" else " (STARTTLS)"


def client_lines(config: Config, password: tuple[str, str, str] | None) -> list[str]:
    """How a mail client connects: the IMAP and submission servers, the user name and password."""
    imap = {x.kind: x for x in config.imap_listeners}
    submission = next((x for x in config.smtp_listeners if x.kind == "submission" and x.tls_cert), None)
    if not imap:
        return []
    ports = [
        f"{x.port} with {'TLS' if kind == 'imaps' else 'STARTTLS'}"
        for kind, x in sorted(imap.items(), reverse=True)
    ]
    first = next(iter(imap.values()))
    lines = [f"IMAP server {_host(config, first.address)}, port {' or '.join(ports)}"]
    if submission is not None:
        lines.append(f"SMTP server {_host(config, submission.address)}, port {submission.port} with STARTTLS")
    if password:
        lines.append(f"user {password[0]} (or {password[1]}), the password below")
    else:
        lines.append("user an account's name or address, its password (`postwarden account set-password`)")
    if first.tls_cert is not None and _self_signed(first.tls_cert):
        lines.append("the certificate is self-signed (--dev): accept it in the client")
    return [f"  {'mail client' if i == 0 else '':<17}{line}" for i, line in enumerate(lines)]


def _host(config: Config, address: str) -> str:
    """What a client connects to: the mail host's name for a wildcard listener, else its address."""
    return config.hostname if address in ("0.0.0.0", "::", "") else address


def _self_signed(cert: Path) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return False
    return certificate.issuer == certificate.subject


def ready_block(config: Config, path: Path, password: tuple[str, str, str] | None, flower_port: int) -> str:
    lines = ["", "=" * 20 + " Postwarden is ready " + "=" * 20]
    for lst in config.listeners:
        lines.append(f"  {_label(lst):<17}{lst.address}:{lst.port}{_offers(lst)}")
    lines += client_lines(config, password)
    lines.append(f"  {'web':<17}{url(config.web.address, config.web.port)}")
    lines.append(f"  {'flower':<17}{url('127.0.0.1', flower_port)} (Celery tasks)")
    if password is not None:
        account, address, secret = password
        lines.append(f"  {'login':<17}{account} ({address}), password: {secret}")
        lines.append(f"  {'':<17}shown once, stored only as a hash: note it now")
    lines.append(f"  {'config':<17}{path.resolve()}")
    lines.append(f"  {'data':<17}{config.data_dir}")
    lines.append("  Stop with Ctrl-C. `postwarden check-config` checks the config after an edit.")
    lines.append("=" * 61)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.firstrun")
    parser.add_argument("quickstart_output", nargs="?", type=Path, help="quickstart's output, if just run")
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT, help="seconds to wait")
    parser.add_argument("--flower-port", type=int, default=FLOWER_PORT, help="flower's port")
    args = parser.parse_args(argv)
    path = config_path()
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"postwarden: {e}", file=sys.stderr)
        return 2
    silent = wait_for(endpoints(config, args.flower_port), args.timeout)
    password = take_password(args.quickstart_output)
    if silent:
        names = ", ".join(f"{what} on {address}:{port}" for what, address, port in silent)
        print(f"\npostwarden: not ready after {args.timeout:.0f} s: {names} not answering (see the log)")
        if password is not None:
            print(f"  the {password[0]} account's password: {password[2]} (shown once: note it now)")
        return 1
    print(ready_block(config, path, password, args.flower_port), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
