"""A real HTTPS server on loopback for MTA-STS policy fetches, with certificates from a trustme CA.

Each test says what a host serves (`serve`) and, if not a valid certificate for that name, which
certificate it presents (`certificate`); the certificate is chosen by SNI, as a real multi-domain
server does. Replies can be redirects, errors, any content type, bodies without a length, and slow
(headers delayed, or the body dripped out byte by byte), so every fetch failure is met for real.

Use it as a pytest plugin (`pytest_plugins = ["tests.support.httpsserver"]`): fixtures `https_ca` (the
session's CA; its PEM file is `https_ca_file`) and `https_server` (emptied for each test).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socket import socket
from typing import Any

import pytest
import trustme

POLICY_PATH = "/.well-known/mta-sts.txt"
# What tests allow HTTPS requests to reach (app/ssrf.py refuses non-public addresses by default).
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1")


@dataclass(frozen=True)
class Reply:
    body: bytes = b""
    status: int = 200
    content_type: str | None = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    # Without a Content-Length the body runs until the connection closes.
    send_length: bool = True
    # Seconds to wait before the status line, and between single body bytes.
    delay: float = 0.0
    drip: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HTTPSTestServer

    def setup(self) -> None:
        # The handshake runs here, in the request's own thread, not in the accept loop.
        self.request.settimeout(10)
        self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        self.server.requests.append((host, self.path))
        reply = self.server.replies.get(host) if self.path == POLICY_PATH else None
        if reply is None:
            reply = Reply(b"not found\n", status=404)
        if reply.delay:
            self.server.stopping.wait(reply.delay)
        self.send_response(reply.status)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.send_length:
            self.send_header("Content-Length", str(len(reply.body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._write_body(reply)

    def _write_body(self, reply: Reply) -> None:
        if not reply.drip:
            self.wfile.write(reply.body)
            return
        for i in range(len(reply.body)):
            if self.server.stopping.wait(reply.drip):
                return
            self.wfile.write(reply.body[i : i + 1])
            self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HTTPSTestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ca: trustme.CA) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ca = ca
        self.port: int = self.server_address[1]
        self.replies: dict[str, Reply] = {}
        self.requests: list[tuple[str, str]] = []
        self.stopping = threading.Event()
        self._certificates: dict[str, trustme.LeafCert] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._context = self._context_for("localhost")
        self._context.sni_callback = self._choose_certificate
        self._thread = threading.Thread(target=self.serve_forever, name="https-test-server", daemon=True)

    # Test-facing API.

    def serve(self, host: str, reply: Reply | bytes | str) -> None:
        """What GET https://<host>/.well-known/mta-sts.txt returns."""
        if isinstance(reply, str):
            reply = reply.encode()
        if isinstance(reply, bytes):
            reply = Reply(reply)
        self.replies[host.lower()] = reply

    def certificate(self, host: str, cert: trustme.LeafCert) -> None:
        """Present `cert` to clients asking for `host` (default: a valid cert for it from the CA)."""
        with self._lock:
            self._certificates[host.lower()] = cert
            self._contexts.pop(host.lower(), None)

    def clear(self) -> None:
        with self._lock:
            self.replies.clear()
            self.requests.clear()
            self._certificates.clear()
            self._contexts.clear()

    def start(self) -> HTTPSTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    # TLS.

    def get_request(self) -> tuple[socket, Any]:
        conn, address = self.socket.accept()
        return self._context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that reject our certificate or give up early are what the tests are about.
        pass

    def _choose_certificate(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        sock.context = self._context_for((server_name or "localhost").lower())

    def _context_for(self, host: str) -> ssl.SSLContext:
        with self._lock:
            if host not in self._contexts:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                cert = self._certificates.get(host) or self.ca.issue_cert(host)
                cert.configure_cert(context)
                self._contexts[host] = context
            return self._contexts[host]


@pytest.fixture(scope="session")
def https_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def https_ca_file(https_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("https-ca") / "ca.pem"
    https_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def https_server_session(https_ca: trustme.CA) -> Iterator[HTTPSTestServer]:
    server = HTTPSTestServer(https_ca).start()
    yield server
    server.stop()


@pytest.fixture
def https_server(https_server_session: HTTPSTestServer) -> Iterator[HTTPSTestServer]:
    """The HTTPS server, emptied for this test."""
    https_server_session.clear()
    yield https_server_session
    https_server_session.clear()
