"""The SMTP listeners: TLS contexts, one aiosmtpd server per configured listener, start and stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from app.accounts import sync_from_config
from app.config import Config, Listener
from app.db import session_scope
from app.dns import Resolver, resolver_from_config
from app.smtpserver.evaluation import RecordEvaluation
from app.smtpserver.inbound import InboundHandler
from app.smtpserver.protocol import BaseHandler, PostwardenSMTP
from app.smtpserver.submission import SubmissionHandler
from app.store import MessageStore

log = logging.getLogger("app.smtpserver")


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
class RunningListener:
    listener: Listener
    server: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


class SMTPService:
    """Every configured listener over one store, one resolver and one evaluation sink."""

    def __init__(
        self,
        config: Config,
        *,
        store: MessageStore | None = None,
        resolver: Resolver | None = None,
        record_evaluation: RecordEvaluation | None = None,
    ) -> None:
        self.config = config
        self.database_url = config.resolved_database_url
        self.store = store or MessageStore(config.data_dir, self.database_url)
        self.resolver = resolver or resolver_from_config(config.dns)
        self.record_evaluation = record_evaluation
        self.listeners: list[RunningListener] = []

    def prepare(self) -> None:
        """Before accepting mail: settle files a crash left behind, create account and mailbox rows."""
        report = self.store.recover()
        if report.completed or report.removed:
            log.info(
                "store recovery: %d message(s) completed, %d unacknowledged file(s) removed",
                report.completed,
                report.removed,
            )
        with session_scope(self.database_url) as session:
            sync_from_config(session, self.config)

    def handler_for(self, listener: Listener) -> BaseHandler:
        if listener.kind == "submission":
            return SubmissionHandler(self.config, self.store, self.database_url)
        return InboundHandler(self.config, self.store, self.resolver, self.record_evaluation)

    async def start(self) -> list[RunningListener]:
        loop = asyncio.get_running_loop()
        for index, listener in enumerate(self.config.listeners):
            context = tls_context(listener)
            if listener.kind == "submission" and context is None:
                log.warning(
                    "listeners[%d]: submission without tls_cert/tls_key: AUTH is only offered over TLS, "
                    "so no one can submit mail on %s:%d",
                    index,
                    listener.address,
                    listener.port,
                )
            try:
                server = await loop.create_server(
                    self._protocol_factory(listener, context), host=listener.address, port=listener.port
                )
            except OSError as e:
                await self.stop()
                raise ListenerError(
                    f"listeners[{index}] ({listener.kind}): cannot listen on "
                    f"{listener.address}:{listener.port}: {e.strerror or e}"
                ) from None
            running = RunningListener(listener, server)
            self.listeners.append(running)
            log.info("smtp %s listening on %s:%d", listener.kind, listener.address, running.port)
        return self.listeners

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
            )

        return new_session

    async def stop(self) -> None:
        """Stop accepting, then let messages already handed to the store finish committing."""
        for running in self.listeners:
            running.server.close()
        for running in self.listeners:
            await running.server.wait_closed()
        self.listeners = []
        await self.store.close()


def quiet_aiosmtpd_logging() -> None:
    # aiosmtpd logs every command line at INFO and a deprecation warning on each AUTH: noise, and
    # costly at volume. Our handlers log one line per transaction and per refusal instead.
    logging.getLogger("mail.log").setLevel(logging.ERROR)


async def serve(service: SMTPService) -> None:
    """Prepare, start every listener, and run until SIGTERM or SIGINT; then stop cleanly."""
    quiet_aiosmtpd_logging()
    await asyncio.get_running_loop().run_in_executor(None, service.prepare)
    await service.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("smtp ready")
    await stopping.wait()
    log.info("smtp stopping")
    await service.stop()
