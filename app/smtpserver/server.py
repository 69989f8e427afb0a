"""The SMTP listeners: TLS contexts, bound sockets, and one aiosmtpd server per listener in a process."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.accounts import sync_from_config
from app.config import SMTP_KINDS, Config, Listener
from app.db import session_scope
from app.dns import Resolver, resolver_from_config
from app.smtpserver.acceptor import Acceptor
from app.smtpserver.admission import SessionCounts, SessionGate, open_file_session_cap
from app.smtpserver.data import MemoryBudget
from app.smtpserver.handler import BaseHandler
from app.smtpserver.handoff import Handoff
from app.smtpserver.inbound import InboundHandler
from app.smtpserver.protocol import PostwardenSMTP
from app.smtpserver.ratelimit import RateCounts, RateLimiter
from app.smtpserver.submission import SubmissionHandler
from app.store.files import MessageStore

log = logging.getLogger("app.smtpserver")

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


class ListenerError(Exception):
    """A listener could not be started; the message is for the operator."""


def tls_context(listener: Listener) -> ssl.SSLContext | None:
    """A server context from the listener's certificate chain and key, or None without them."""
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(listener.tls_cert, listener.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ListenerError(
            f"listener {listener.kind} {listener.address}:{listener.port}: cannot load tls_cert "
            f"{listener.tls_cert} / tls_key {listener.tls_key}: {e}"
        ) from None
    return context


@dataclass
class BoundListener:
    listener: Listener
    sock: socket.socket
    tls: ssl.SSLContext | None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def bind_listeners(config: Config) -> list[BoundListener]:
    """A listening socket per SMTP listener (inbound, submission; `postwarden imap` binds the
    others); ListenerError names the one that cannot be bound.

    Binding comes first and apart from serving, so worker processes can share the sockets."""
    backlog = config.limits.listen_backlog
    warn_if_backlog_capped(backlog)
    bound: list[BoundListener] = []
    for index, listener in enumerate(config.listeners):
        if listener.kind not in SMTP_KINDS:
            continue
        context = tls_context(listener)
        family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((listener.address, listener.port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            for other in bound:
                other.sock.close()
            raise ListenerError(
                f"listeners[{index}] ({listener.kind}): cannot listen on "
                f"{listener.address}:{listener.port}: {e.strerror or e}"
            ) from None
        bound.append(BoundListener(listener, sock, context))
        if listener.kind == "submission" and context is None:
            log.warning(
                "listeners[%d]: submission without tls_cert/tls_key: AUTH is only offered over TLS, "
                "so no one can submit mail on %s:%d",
                index,
                listener.address,
                bound[-1].port,
            )
        log.info("smtp %s listening on %s:%d", listener.kind, listener.address, bound[-1].port)
    return bound


def warn_if_backlog_capped(backlog: int) -> None:
    """The kernel silently caps a listen backlog at net.core.somaxconn: say so when it does."""
    try:
        somaxconn = int(SOMAXCONN.read_text())
    except (OSError, ValueError):
        return  # not Linux, or not readable: nothing to compare with
    if backlog > somaxconn:
        log.warning(
            "limits.listen_backlog is %d but the kernel caps it at net.core.somaxconn = %d; "
            "raise that sysctl for a longer queue",
            backlog,
            somaxconn,
        )


class SMTPService:
    """Every configured listener over one store, one resolver and one hand-off to Celery (one process)."""

    def __init__(
        self,
        config: Config,
        *,
        store: MessageStore | None = None,
        resolver: Resolver | None = None,
        handoff: Handoff | None = None,
        session_counts: SessionCounts | None = None,
        rate_counts: RateCounts | None = None,
    ) -> None:
        self.config = config
        self.database_url = config.resolved_database_url
        self.store = store or MessageStore.of(config)
        self.resolver = resolver or resolver_from_config(config.dns)
        self.handoff = handoff
        # Session counts shared with the other workers (a process of its own: counts of its own).
        counts = session_counts or SessionCounts()
        self.gate = SessionGate(config.limits, counts, open_file_session_cap())
        # Delivery counts per address range, shared with the other workers the same way.
        self.rate_limiter = RateLimiter(config.ratelimits, rate_counts or RateCounts())
        self.budget = MemoryBudget(config.limits.data_memory_budget)
        self.acceptors: list[Acceptor] = []

    def prepare(self) -> None:
        """Before accepting mail: settle files a crash left behind, create account and mailbox rows."""
        prepare_storage(self.config, self.store)

    def handler_for(self, listener: Listener) -> BaseHandler:
        handoff = self.handoff
        if listener.kind == "submission":
            wake_queue = None if handoff is None else handoff.wake_queue
            return SubmissionHandler(self.config, self.store, self.database_url, wake_queue)
        record_evaluation = None if handoff is None else handoff.record_evaluation
        parse_report = None if handoff is None else handoff.parse_report
        inbound = InboundHandler(self.config, self.store, self.resolver, record_evaluation, parse_report)
        inbound.rate_limiter = self.rate_limiter  # SPEC R3.1: the MX listener only
        return inbound

    async def start(self, bound: list[BoundListener] | None = None) -> list[BoundListener]:
        """Serve on the given sockets (bound now if none are given)."""
        bound = bind_listeners(self.config) if bound is None else bound
        for each in bound:
            acceptor = Acceptor(each.sock, self._protocol_factory(each.listener, each.tls))
            acceptor.start()
            self.acceptors.append(acceptor)
        return bound

    def _protocol_factory(
        self, listener: Listener, context: ssl.SSLContext | None
    ) -> Callable[[], PostwardenSMTP]:
        handler = self.handler_for(listener)
        submission = listener.kind == "submission"

        def new_session() -> PostwardenSMTP:
            return PostwardenSMTP(
                handler,
                limits=self.config.limits,
                hostname=self.config.hostname,
                tls_context=context,
                submission=submission,
                gate=self.gate,
                budget=self.budget,
            )

        return new_session

    async def stop(self) -> None:
        """Stop accepting, then let messages already handed to the store finish committing."""
        for acceptor in self.acceptors:
            acceptor.close()
        self.acceptors = []
        await self.store.close()


def prepare_storage(config: Config, store: MessageStore) -> None:
    """Settle what a crash left in the store's tmp dir, then create the configured account rows."""
    report = store.recover()
    if report.completed or report.removed:
        log.info(
            "store recovery: %d message(s) completed, %d unacknowledged file(s) removed",
            report.completed,
            report.removed,
        )
    with session_scope(config.resolved_database_url) as session:
        sync_from_config(session, config)


def quiet_aiosmtpd_logging() -> None:
    # aiosmtpd logs every command line at INFO and a deprecation warning on each AUTH: noise, and
    # costly at volume. Our handlers log one line per transaction and per refusal instead.
    logging.getLogger("mail.log").setLevel(logging.ERROR)


async def serve_worker(service: SMTPService, bound: list[BoundListener]) -> None:
    """One worker: serve the shared sockets until SIGTERM or SIGINT, then stop cleanly."""
    quiet_aiosmtpd_logging()
    await service.start(bound)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await service.stop()
