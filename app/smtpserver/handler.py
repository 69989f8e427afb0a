"""What the inbound and submission handlers share: EHLO, address checks, the DATA step, log lines.

Message data rules (RFC 5321 2.3.8, 4.1.1.4): the data ends only at CRLF "." CRLF (data.py); a bare LF
or CR anywhere in the data is refused (500 5.5.2), not normalised: the two readings of such data are
what SMTP smuggling exploits, and DKIM canonicalisation of bare line ends differs between verifiers.
A NUL octet is refused (554 5.6.0; RFC 5322 2.1 and RFC 6152 forbid it in messages).

The inbound listener's delivery rate limits (ratelimit.py, SPEC R3.1) are checked at MAIL FROM (by
the inbound handler) and again here before a message is handed to `receive`, and an accepted message
is counted here; a handler without a rate limiter (submission) is not limited.

Text from the client never goes back out or into storage unchecked: the EHLO/HELO argument must be a
domain name or an address literal (else 501, nothing echoed), and every MAIL/RCPT address passes the
strict check of app/address.py before it is stored, logged or queued.
"""

from __future__ import annotations

import inspect
import logging
import time

from aiosmtpd.smtp import Envelope, Session

from app import metrics
from app.address import AddressError, NeedsSMTPUTF8, validate_address
from app.config import Config
from app.logs import RATE_LIMITED, cid_scope, fields
from app.smtpserver.headers import received_header, smtp_protocol, tls_description
from app.smtpserver.protocol import TOO_MANY_RECIPIENTS, PostwardenSMTP, names_with_prefixes
from app.smtpserver.ratelimit import RateLimiter
from app.store.files import new_file_id

log = logging.getLogger("app.smtpserver")

# How much of a refused argument goes into the log line (escaped): enough to recognise the client.
LOGGED_ARGUMENT = 100


class BaseHandler:
    """aiosmtpd handler hooks common to both listeners; subclasses decide MAIL, RCPT and `receive`."""

    kind = "smtp"
    offers_auth = False
    rate_limiter: RateLimiter | None = None  # the inbound listener's (set by SMTPService)

    def __init__(self, config: Config) -> None:
        self.config = config

    def __dir__(self) -> list[str]:
        # aiosmtpd's SMTP.__init__ looks through every member of the handler (inspect.getmembers) for
        # its hooks and AUTH mechanisms at each connection; listing just those (once per class) saves
        # most of that. Handlers keep no hooks in instance attributes.
        return names_with_prefixes(type(self), ("handle_", "auth_"))  # type: ignore[arg-type]

    async def handle_EHLO(
        self,
        server: PostwardenSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has an EHLO hook
        return ehlo_reply(server, hostname, self.offers_auth)

    def log_greeting_refused(self, server: PostwardenSMTP, command: str, argument: str) -> None:
        refused = fields(ip=server.peer_ip, argument=argument[:LOGGED_ARGUMENT])
        log.info("%s %s refused", self.kind, command, extra=refused)

    async def handle_exception(self, error: Exception) -> str:
        log.exception("%s session error", self.kind, exc_info=error)
        return "451 4.3.0 Internal error; try again later"

    async def handle_DATA(self, server: PostwardenSMTP, session: Session, envelope: Envelope) -> str:
        """Check the data, let `receive` act on it, log one line for the transaction, reply.

        The transaction id is also the stored file's id (the queue file's, for submissions), so the
        id the 250 reply names is what `postwarden message show` and `queue show` look up."""
        with cid_scope(new_file_id()) as transaction_id:
            started = time.monotonic()
            content = envelope.original_content or b""
            problem = content_problem(content)
            if problem:
                result, reply = "refused", problem
            elif limited := self.rate_refusal(server, len(content)):
                result, reply = "rate-limited", limited
            else:
                result, reply = await self.receive(server, session, envelope, content, transaction_id)
                self.count_delivery(server, reply, len(content))
            self.log_transaction(server, session, envelope, result, reply, transaction_id)
            metrics.smtp_transaction(self.kind, result, time.monotonic() - started)
            return reply

    async def receive(
        self,
        server: PostwardenSMTP,
        session: Session,
        envelope: Envelope,
        content: bytes,
        transaction_id: str,
    ) -> tuple[str, str]:
        """(result for the log, SMTP reply) for a message whose data passed the checks."""
        raise NotImplementedError

    def rate_refusal(self, server: PostwardenSMTP, size: int = 0) -> str | None:
        """The 452 reply if the client's address range has no room for one more message of `size`
        octets (0 at MAIL FROM: not known yet), else None. Logged rate-limited: a flood of refusals
        must not flood the log."""
        refusal = None if self.rate_limiter is None else self.rate_limiter.refusal(server.peer_ip, size)
        if refusal is not None:
            limited = fields(ip=server.peer_ip, reply=refusal)
            log.info("%s rate limit", self.kind, extra={**RATE_LIMITED, **limited})
        return refusal

    def count_delivery(self, server: PostwardenSMTP, reply: str, size: int) -> None:
        """Count a message against the rate limits once it is accepted (stored, 2xx)."""
        if self.rate_limiter is not None and reply.startswith("2"):
            self.rate_limiter.count(server.peer_ip, size)

    def sender_problem(self, envelope: Envelope, address: str) -> str | None:
        """The reply refusing a MAIL FROM address (the null sender "" passes), or None."""
        return address_problem(address, envelope.smtp_utf8, "5.1.7") if address else None

    def recipient_problem(self, envelope: Envelope, address: str) -> str | None:
        """The reply refusing one more RCPT TO for this envelope (limit or syntax), or None."""
        if len(envelope.rcpt_tos) >= self.config.limits.max_recipients:
            return TOO_MANY_RECIPIENTS
        return address_problem(address, envelope.smtp_utf8, "5.1.3")

    def trace_header(
        self, server: PostwardenSMTP, session: Session, envelope: Envelope, transaction_id: str
    ) -> bytes:
        """The Received field for this transaction."""
        protocol = smtp_protocol(
            smtputf8=envelope.smtp_utf8,
            extended=session.extended_smtp,
            tls=server.tls_active,
            authenticated=bool(session.authenticated),
        )
        return received_header(
            helo=session.host_name or "",
            remote_ip=server.peer_ip,
            hostname=self.config.hostname,
            protocol=protocol,
            transaction_id=transaction_id,
            recipients=envelope.rcpt_tos,
            tls=tls_description(session.ssl),
        )

    def log_transaction(
        self,
        server: PostwardenSMTP,
        session: Session,
        envelope: Envelope,
        result: str,
        reply: str,
        transaction_id: str,
    ) -> None:
        account = {"account": session.auth_data} if session.authenticated else {}
        transaction = fields(
            message_id=transaction_id,
            ip=server.peer_ip,
            helo=session.host_name,
            mail_from=f"<{envelope_sender(envelope)}>",
            rcpts=",".join(f"<{r}>" for r in envelope.rcpt_tos),
            result=result,
            reply=reply,
            **account,
        )
        log.info("%s transaction", self.kind, extra=transaction)


# aiosmtpd's SMTP.__init__ inspects the EHLO hook's signature for every connection (to tell its old
# 4-argument form): computed here once, inspect.signature returns it at once.
BaseHandler.handle_EHLO.__signature__ = inspect.signature(BaseHandler.handle_EHLO)  # type: ignore[attr-defined]


def ehlo_reply(server: PostwardenSMTP, hostname: str, offer_auth: bool) -> list[str]:
    """The EHLO reply lines: aiosmtpd's extensions, plus PIPELINING and ENHANCEDSTATUSCODES."""
    extensions = [f"SIZE {server.limits.max_message_size}", "8BITMIME", "SMTPUTF8", "PIPELINING"]
    extensions.append("ENHANCEDSTATUSCODES")
    if server.tls_context is not None and not server.tls_active:
        extensions.append("STARTTLS")
    if offer_auth and server.tls_active:
        extensions.append("AUTH PLAIN LOGIN")
    lines = [f"{server.hostname} Hello {hostname}", *extensions]
    return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]


def content_problem(content: bytes) -> str | None:
    """The reply refusing message data that breaks the rules in the module doc, or None if it is fine."""
    if b"\0" in content:
        return "554 5.6.0 Message data contains a NUL octet, which mail must not contain (RFC 5322 2.1)"
    if content.count(b"\n") != content.count(b"\r\n") or content.count(b"\r") != content.count(b"\r\n"):
        return "500 5.5.2 Message data contains a bare LF or CR; lines must end with CRLF (RFC 5321 2.3.8)"
    return None


def envelope_sender(envelope: Envelope) -> str:
    """MAIL FROM's address; "" for the null reverse-path `<>` (aiosmtpd gives the text "<>")."""
    sender = envelope.mail_from or ""
    return "" if sender == "<>" else sender


def address_problem(address: str, smtputf8: bool, code: str) -> str | None:
    """Reply refusing a MAIL/RCPT address, or None. `code`: 5.1.7 for senders, 5.1.3 for recipients."""
    try:
        validate_address(address, smtputf8=smtputf8)
    except NeedsSMTPUTF8:
        return "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM (RFC 6531)"
    except AddressError as e:
        return f"553 {code} Address refused: {e}"
    return None
