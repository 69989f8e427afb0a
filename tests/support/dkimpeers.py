"""Other DKIM implementations for tests to check ours against: dkimpy's own signer (pure Python), and
OpenDKIM's verifier `opendkim-testmsg` (libopendkim, C and OpenSSL; Debian package opendkim-tools)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from app.auth.dkimkeys import DKIMAlgorithm, load_private_key
from tests.support.dnsserver import DNSTestServer

OPENDKIM_TESTMSG = "/usr/sbin/opendkim-testmsg"
ROOT = Path(__file__).resolve().parents[2]


def dkimpy_private_key(pem: bytes, algorithm: DKIMAlgorithm) -> bytes:
    """The private key in the form `dkim.sign(privkey=...)` accepts for this algorithm: PKCS#1 PEM for
    RSA, the base64 of the raw 32-byte seed for ed25519 (dkimpy knows no PEM form for it)."""
    key = load_private_key(pem, algorithm)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return base64.b64encode(seed)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def opendkim_verify(messages: list[bytes], records: dict[str, str], workdir: Path) -> list[tuple[int, str]]:
    """opendkim-testmsg's verdict on each message: (exit status, error output); (0, "") when its
    signature verifies. libopendkim wants a Date field besides From, or it calls the message a syntax error.

    libopendkim looks keys up through the C library's resolver, which only reads /etc/resolv.conf and
    asks port 53. So it runs in network and mount namespaces of its own (util-linux `unshare`, as root),
    where /etc/resolv.conf names 127.0.0.1 and a DNSTestServer on 127.0.0.1:53 serves `records`
    (name -> TXT value).
    """
    (workdir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    (workdir / "records.json").write_text(json.dumps(records))
    for number, message in enumerate(messages):
        (workdir / f"{number}.eml").write_bytes(message)
    inside = 'ip link set lo up && mount --bind "$0" /etc/resolv.conf && exec "$@"'
    serve = (
        f"from tests.support.dkimpeers import verify_inside; verify_inside({str(workdir)!r}, {len(messages)})"
    )
    command = ["unshare", "--net", "--mount", "--fork", "sh", "-c", inside, str(workdir / "resolv.conf")]
    subprocess.run([*command, sys.executable, "-c", serve], check=True, cwd=ROOT, timeout=120)
    return [tuple(verdict) for verdict in json.loads((workdir / "verdicts.json").read_text())]


def verify_inside(workdir: str, count: int) -> None:
    """In the namespaces: serve the records on 127.0.0.1:53 and verify each message file."""
    folder = Path(workdir)
    server = DNSTestServer(port=53)
    for name, value in json.loads((folder / "records.json").read_text()).items():
        server.txt(name, value)
    server.start()
    verdicts = []
    try:
        for number in range(count):
            with (folder / f"{number}.eml").open("rb") as message:
                run = subprocess.run([OPENDKIM_TESTMSG], stdin=message, capture_output=True, timeout=60)
            verdicts.append((run.returncode, run.stderr.decode(errors="replace").strip()))
    finally:
        server.stop()
    (folder / "verdicts.json").write_text(json.dumps(verdicts))
