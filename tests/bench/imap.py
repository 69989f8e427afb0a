"""The IMAP server against Dovecot on one large mailbox: 50,000 messages (the MIME corpus of
tests/imap/corpus.py, each with its own Subject and Message-ID) in our store and in a Dovecot Maildir
(tests/support/dovecot.py), both served over loopback TLS. `--smoke` runs 300 messages in seconds
(tests/test_bench_smoke.py does, in `make test`).

Our server runs as `postwarden imap` (its own process, SQLite store), so its peak RSS (VmHWM) is its
own. One imaplib client times, against each server in turn, after a first SELECT that lets both
build their indexes and caches: SELECT, FETCH 1:* (FLAGS), 1,000 full-message fetches (BODY.PEEK[],
one command each, spread over the mailbox), 1,000 BODYSTRUCTUREs the same way, and SEARCH SUBJECT
(header SEARCH is not built yet: SUBJECT is the header key our server has; the best of 3 runs).
Printed: each step's time on both and the ratio; the last line
`imap: worst ratio X (step), peak RSS N MB (target < 3x)`.
Not a pytest test: `.venv/bin/python tests/bench/imap.py [messages]`.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `app` and `tests` importable

import trustme  # noqa: E402

from app.accounts import account_id  # noqa: E402
from app.db import session_scope  # noqa: E402
from app.store.files import message_path, new_file_id  # noqa: E402
from app.store.mailboxes import add_messages, new_message_row, uid_state  # noqa: E402
from tests.bench.args import count  # noqa: E402
from tests.imap.conftest import PASSWORD, imap_config  # noqa: E402
from tests.imap.corpus import CORPUS  # noqa: E402
from tests.support.dovecot import Dovecot, dovecot, free_port  # noqa: E402

MESSAGES = count(1, smoke=300, full=50_000)
SAMPLE = min(1000, MESSAGES)
TARGET_RATIO = 3.0
SHAPES = list(CORPUS.values())


def message(n: int) -> bytes:
    """Corpus message n % 8 with a Subject and Message-ID of its own."""
    shape = SHAPES[n % len(SHAPES)]
    shape = re.sub(
        rb"(?m)^Subject: [^\r]*", b"Subject: bench %d shape %d" % (n, n % len(SHAPES)), shape, count=1
    )
    return re.sub(rb"(?m)^Message-ID: [^\r]*", b"Message-ID: <bench%d@example.net>" % n, shape, count=1)


def load_ours(url: str, data_dir: Path, n: int) -> None:
    """The messages as files and rows, through the store's own add_messages (1,000 rows a statement)."""
    with session_scope(url) as session:
        account = account_id(session, "admin")
        assert account is not None
        state = uid_state(session, account, "Inbox")
        assert state is not None
    for start in range(0, n, 1000):
        rows = []
        for i in range(start, min(n, start + 1000)):
            content = message(i)
            path = message_path(new_file_id())
            (data_dir / path).parent.mkdir(parents=True, exist_ok=True)
            (data_dir / path).write_bytes(content)
            columns = {"subject": f"bench {i} shape {i % len(SHAPES)}", "seen": i % 3 == 0}
            rows.append(
                new_message_row(
                    columns,
                    account_id=account,
                    mailbox_id=state.mailbox_id,
                    destined_mailbox_id=None,
                    path=path,
                    size=len(content),
                )
            )
        with session_scope(url) as session:
            add_messages(session, rows)


def load_dovecot(server: Dovecot, n: int) -> None:
    """The same messages as Maildir files (Dovecot indexes them at the first SELECT)."""
    cur = server.maildir / "cur"
    for i in range(n):
        path = cur / f"{1_700_000_000 + i}.M{i}P1.bench:2,{'S' if i % 3 == 0 else ''}"
        path.write_bytes(message(i))
        os.chown(path, *server.owner)


def start_ours(directory: Path, cert: Path, key: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = imap_config(directory)
    load_ours(config.resolved_database_url, config.data_dir, MESSAGES)
    port = free_port()
    path = directory / "postwarden.toml"
    listener = (
        f'kind = "imaps"\nport = {port}\naddress = "127.0.0.1"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    path.write_text(path.read_text() + "\n[[listeners]]\n" + listener)
    env = {**os.environ, "POSTWARDEN_CONFIG": str(path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", "imap"],
        env=env,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("postwarden imap did not listen")


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def ok(answer: tuple[str, object]) -> object:
    assert answer[0] == "OK", answer
    return answer[1]


def run_steps(port: int, tls: ssl.SSLContext) -> dict[str, float]:
    """The steps' wall times against the server on `port`."""
    client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls, timeout=600)
    ok(client.login("admin", PASSWORD))
    ok(client.select("INBOX"))  # the first look: indexes and caches are built
    ok(client.unselect())
    sample = [1 + i * MESSAGES // SAMPLE for i in range(SAMPLE)]
    times = {"SELECT": timed(lambda: ok(client.select("INBOX")))}
    flags = ok(client.fetch("1:*", "(FLAGS)"))
    assert isinstance(flags, list) and len(flags) == MESSAGES, "FETCH 1:* FLAGS answered every message"
    times["FETCH 1:* FLAGS"] = timed(lambda: ok(client.fetch("1:*", "(FLAGS)")))
    times[f"{SAMPLE} x BODY[]"] = timed(lambda: [ok(client.fetch(str(n), "(BODY.PEEK[])")) for n in sample])
    times[f"{SAMPLE} x BODYSTRUCTURE"] = timed(
        lambda: [ok(client.fetch(str(n), "(BODYSTRUCTURE)")) for n in sample]
    )
    found = ok(client.search(None, "SUBJECT", '"shape 3"'))
    assert isinstance(found, list) and len(found[0].split()) == len(range(3, MESSAGES, len(SHAPES)))
    times["SEARCH SUBJECT"] = min(
        timed(lambda: ok(client.search(None, "SUBJECT", '"shape 3"'))) for _ in range(3)
    )
    client.logout()
    return times


def peak_rss_mb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+)", status)
    assert found is not None
    return int(found.group(1)) // 1024


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="pw-bench-imap-"))
    try:
        compare(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def compare(directory: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", common_name="127.0.0.1")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = ssl.create_default_context()
    ca.configure_trust(tls)
    print(f"imap: {MESSAGES} messages, {SAMPLE} sampled fetches", flush=True)
    process, port = start_ours(directory / "ours", cert_file, key_file)
    try:
        ours = run_steps(port, tls)
        rss = peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    with dovecot(cert_file, key_file, "admin", PASSWORD, {}) as reference:
        load_dovecot(reference, MESSAGES)
        theirs = run_steps(reference.port, tls)
    ratios = {step: ours[step] / max(theirs[step], 1e-6) for step in ours}
    for step, ratio in ratios.items():
        print(f"  {step:<22} ours {ours[step]:8.3f} s   dovecot {theirs[step]:8.3f} s   ratio {ratio:6.2f}")
    worst = max(ratios, key=lambda step: ratios[step])
    print(f"imap: worst ratio {ratios[worst]:.2f} ({worst}), peak RSS {rss} MB (target < {TARGET_RATIO:g}x)")


if __name__ == "__main__":
    main()
