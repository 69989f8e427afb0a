"""SMTP servers on loopback for delivery tests: aiosmtpd with STARTTLS and certificates of our choosing.

A peer records what it received (and whether over TLS), can leave out STARTTLS or 8BITMIME from
its EHLO reply, and reject chosen recipients or the DATA. `AlertingPeer` demands a client certificate,
so as a TLS 1.3 server it completes the handshake and then sends a certificate alert on the first read
(what SPEC R4.5 is about; `AlertingPeer`). Certificates come from trustme CAs or `self_signed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from app.quickstart import self_signed_certificate


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    session: int = 0  # which SMTP session (connection) it came over


@dataclass
class PeerHandler:
    starttls: bool = True
    eightbitmime: bool = True
    pipelining: bool = False  # aiosmtpd handles pipelined commands; it just does not announce it
    # Hang up after this many messages in one session, as servers with such a limit do.
    messages_per_session: int | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        dropped = set()
        if not self.starttls:
            dropped.add("250-STARTTLS")
        if not self.eightbitmime:
            dropped.add("250-8BITMIME")
        kept = [r for r in responses if r not in dropped]
        return [*kept[:-1], "250-PIPELINING", kept[-1]] if self.pipelining else kept

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or envelope.content
        self.received.append(
            Received(
                envelope.mail_from, list(envelope.rcpt_tos), content, session.ssl is not None, id(session)
            )
        )
        in_session = sum(r.session == id(session) for r in self.received)
        if self.messages_per_session and in_session >= self.messages_per_session:
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the 250 is written
        return "250 2.0.0 OK queued"


class _LoopbackController(Controller):
    """Binds the port given, or a free one (port 0) without a race, and learns which."""

    def _create_server(self) -> Any:
        async def create() -> asyncio.AbstractServer:
            server = await self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context
            )
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()


@dataclass(frozen=True)
class Peer:
    address: str
    port: int
    handler: PeerHandler

    @property
    def received(self) -> list[Received]:
        return self.handler.received


@contextmanager
def smtp_peer(
    cert: trustme.LeafCert | tuple[Path, Path] | None = None,
    *,
    hostname: str = "mx.example.net",
    address: str = "127.0.0.1",
    port: int = 0,
    handler: PeerHandler | None = None,
) -> Iterator[Peer]:
    """An SMTP server on `address`; with `cert` (trustme leaf or (cert file, key file)) it offers STARTTLS."""
    handler = handler or PeerHandler()
    tls_context = _server_context(cert) if cert is not None else None
    controller = _LoopbackController(
        handler,
        hostname=address,
        port=port,
        server_hostname=hostname,
        tls_context=tls_context,
        enable_SMTPUTF8=True,
    )
    controller.start()
    try:
        yield Peer(address, controller.port, handler)
    finally:
        controller.stop()


def _server_context(
    cert: trustme.LeafCert | tuple[Path, Path], require_client_cert: bool = False
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if isinstance(cert, tuple):
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    else:
        cert.configure_cert(context)
    if require_client_cert:
        # TLS 1.3: the client finishes its handshake before the server has checked the client's
        # (missing) certificate, so the server's alert arrives on the client's first read.
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        trustme.CA().configure_trust(context)
    return context


def self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate (and key) for `hostname`, written as PEM files; (cert, key)."""
    cert_pem, key_pem = self_signed_certificate(hostname)
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{hostname}.crt", directory / f"{hostname}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    return cert_file, key_file


def spki_sha256(cert: trustme.LeafCert | tuple[Path, Path]) -> str:
    """The `3 1 1` TLSA data (SHA-256 of the SubjectPublicKeyInfo) of a peer certificate, in hex."""
    pem = cert[0].read_bytes() if isinstance(cert, tuple) else cert.cert_chain_pems[0].bytes()
    public = x509.load_pem_x509_certificate(pem).public_key()
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return digest.finalize().hex()


def expired_cert(ca: trustme.CA, hostname: str) -> trustme.LeafCert:
    now = datetime.now(UTC)
    return ca.issue_cert(hostname, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))


class AlertingPeer:
    """A plain-socket SMTP server whose STARTTLS demands a client certificate (TLS 1.3).

    Unlike asyncio's TLS, a blocking server writes its alert before the connection closes, so the
    client gets a real `certificate required` alert on its first read after the handshake. Without
    STARTTLS it is a minimal working SMTP server (for the plain-text retry).
    """

    def __init__(self, cert: trustme.LeafCert, hostname: str = "mx.example.net") -> None:
        self.hostname = hostname
        self.received: list[Received] = []
        self.tls_attempts = 0
        self._context = _server_context(cert, require_client_cert=True)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address, self.port = self._listener.getsockname()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> AlertingPeer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self._listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            # OSError: the client gave up, or the handshake failed as intended.
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                self._session(conn, conn.makefile("rb"))

    def _session(self, conn: socket.socket, lines: Any) -> None:
        conn.sendall(f"220 {self.hostname} ESMTP\r\n".encode())
        mail_from, rcpts = "", []
        while line := lines.readline():
            command = line.decode().strip()
            verb = command[:4].upper()
            if verb == "EHLO":
                conn.sendall(f"250-{self.hostname}\r\n250-8BITMIME\r\n250 STARTTLS\r\n".encode())
            elif verb == "STAR":
                conn.sendall(b"220 2.0.0 go ahead\r\n")
                self.tls_attempts += 1
                tls = self._context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                try:
                    tls.do_handshake()
                except ssl.SSLError:
                    # The alert is out. Close as real servers do: after the client's last words, so
                    # its write succeeds and its read gets the alert (not a reset connection).
                    tls.shutdown(socket.SHUT_WR)
                    while tls.recv(4096):
                        pass
                    return
            elif verb == "MAIL":
                mail_from, rcpts = command.partition(":")[2].strip("<> "), []
                conn.sendall(b"250 2.1.0 OK\r\n")
            elif verb == "RCPT":
                rcpts.append(command.partition(":")[2].strip("<> "))
                conn.sendall(b"250 2.1.5 OK\r\n")
            elif verb == "DATA":
                conn.sendall(b"354 go ahead\r\n")
                content = b"".join(iter(lines.readline, b".\r\n"))
                self.received.append(Received(mail_from, rcpts, content, tls=False))
                conn.sendall(b"250 2.0.0 OK\r\n")
            elif verb == "QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.2 not implemented\r\n")
