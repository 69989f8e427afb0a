"""The IMAP listeners: plain with STARTTLS (143) and implicit TLS (993), sessions counted in total
and per client address, each served by an IMAPSession on the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import ssl
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass

from app import metrics
from app.config import Config, Listener
from app.imap.reader import Closed
from app.imap.session import IMAPSession
from app.imap.wakeup import Wakeups
from app.store.files import MessageStore

log = logging.getLogger("app.imap")


@dataclass(frozen=True)
class IMAPLimits:
    max_line: int = 64 * 1024
    # Literals of the commands served so far (LOGIN, AUTHENTICATE, names); APPEND will take more.
    max_literal: int = 64 * 1024
    # Seconds a client may stay silent before logging in, and after (RFC 9051 5.4: at least 30 min).
    login_timeout: float = 60.0
    idle_timeout: float = 30 * 60.0
    max_errors: int = 10  # bad commands before the connection is closed
    max_append: int = 50 * 1024 * 1024  # an APPENDed message: [limits] max_message_size
    # Seconds between looks at the selected mailbox during IDLE (SPEC R8.3: new mail within a second).
    idle_poll: float = 0.5
    max_sessions: int = 1000
    max_sessions_per_ip: int = 20

    @classmethod
    def of(cls, config: Config) -> IMAPLimits:
        settings = config.imap
        return cls(
            login_timeout=settings.login_timeout,
            idle_timeout=settings.idle_timeout,
            max_errors=settings.max_errors,
            max_sessions=settings.max_sessions,
            max_sessions_per_ip=settings.max_sessions_per_ip,
            max_append=config.limits.max_message_size,
        )


@dataclass(frozen=True)
class IMAPListener:
    address: str
    port: int
    implicit_tls: bool  # imaps (993); else plain with STARTTLS (143)
    tls: ssl.SSLContext

    @classmethod
    def of(cls, listener: Listener) -> IMAPListener:
        """From a [[listeners]] entry of kind imap or imaps; ValueError (for the operator) if its
        certificate cannot be loaded."""
        where = f"{listener.kind} listener {listener.address}:{listener.port}"
        if listener.tls_cert is None or listener.tls_key is None:  # the config refuses it already
            raise ValueError(f"{where}: needs tls_cert and tls_key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(listener.tls_cert, listener.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"{where}: cannot load its certificate: {e}") from None
        return cls(listener.address, listener.port, listener.kind == "imaps", context)


class IMAPServer:
    def __init__(self, config: Config, limits: IMAPLimits | None = None) -> None:
        self.config = config
        self.limits = limits or IMAPLimits()
        # APPEND writes through the store as SMTP does (file, rows, group commit).
        self.store = MessageStore.of(config)
        self.wakeups = Wakeups(config.resolved_database_url)
        self.servers: list[asyncio.Server] = []
        self.sessions: Counter[str] = Counter()
        self.connections: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}

    async def start(self, listeners: list[IMAPListener]) -> list[int]:
        """Listen on each listener; the ports bound (a port 0 gets one of the kernel's)."""
        await self.wakeups.start()
        ports = []
        for listener in listeners:
            server = await asyncio.start_server(
                functools.partial(self._connected, listener=listener),
                listener.address,
                listener.port,
                limit=self.limits.max_line + 2,
                ssl=listener.tls if listener.implicit_tls else None,
                ssl_handshake_timeout=self.limits.login_timeout if listener.implicit_tls else None,
            )
            self.servers.append(server)
            ports.append(int(server.sockets[0].getsockname()[1]))
            log.info(
                "imap listening on %s:%d (%s)",
                listener.address,
                ports[-1],
                "imaps" if listener.implicit_tls else "imap",
            )
        return ports

    async def _connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, listener: IMAPListener
    ) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else "unix"
        self.connections[writer] = asyncio.current_task()
        try:
            if self._full(ip):
                writer.write(b"* BYE Too many connections; try again later\r\n")
                return
            self.sessions[ip] += 1
            metrics.imap_session("imaps" if listener.implicit_tls else "imap")
            try:
                await IMAPSession(self, reader, writer, listener=listener, peer_ip=ip).run()
            except Closed:
                pass
            finally:
                self.sessions[ip] -= 1
                if not self.sessions[ip]:
                    del self.sessions[ip]
        finally:
            await _close(writer)
            del self.connections[writer]

    def _full(self, ip: str) -> bool:
        total = sum(self.sessions.values())
        return total >= self.limits.max_sessions or self.sessions[ip] >= self.limits.max_sessions_per_ip

    async def stop(self) -> None:
        """Stop listening and end the sessions."""
        for server in self.servers:
            server.close()
        # Aborting the connections ends each session as a client's leaving does (no cancelled task
        # left for asyncio's stream callback to complain about).
        sessions = [task for task in self.connections.values() if task is not None]
        for writer in list(self.connections):
            writer.transport.abort()
        if sessions:
            await asyncio.wait(sessions, timeout=10)
        for server in self.servers:
            await server.wait_closed()
        self.servers = []
        await self.wakeups.stop()
        await self.store.close()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(TimeoutError, OSError, ssl.SSLError):  # the client went away: nothing left to close
        await asyncio.wait_for(writer.wait_closed(), 5)


async def serve_until_stopped(server: IMAPServer, listeners: list[IMAPListener]) -> None:
    """`postwarden imap`: serve until SIGTERM or SIGINT, then end the sessions and stop."""
    stopping = stop_event()  # before "listening" is logged: a signal from then on is honoured
    await server.start(listeners)
    await stopping.wait()
    log.info("imap stopping")
    await server.stop()


async def idle_until_stopped() -> None:
    """`postwarden imap` without IMAP listeners: the Procfile starts it for every config, and an exit
    would make honcho stop every process (a config written before IMAP), so it waits for a signal."""
    stopping = stop_event()
    log.warning('imap: no [[listeners]] of kind "imap" or "imaps" configured; idle until stopped')
    await stopping.wait()


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (on the running loop)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping
