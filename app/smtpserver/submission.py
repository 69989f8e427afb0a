"""The submission handler (RFC 6409): authenticated users send mail to anyone, from their own addresses.

AUTH PLAIN and LOGIN only after STARTTLS (the protocol layer answers 530 5.7.0 before it), passwords
checked against the scrypt hashes in a worker thread (a check takes ~0.1 s of CPU) with failed logins
throttled (app/throttle.py), MAIL FROM limited
to the account's configured addresses, any recipient accepted. The message must have exactly one
From field, counting those in obsolete syntax (`From : ...`, RFC 5322 4.5.3, which some readers show),
naming one of the account's addresses; a message with any field in that syntax is refused, as DKIM
signers do not read it alike. A missing Date or Message-ID is added (RFC 6409 8.2, 8.3) and the
message is DKIM-signed with every selector of the From domain. It is stored as one file plus one
outgoing queue row per recipient; delivery is the queue's work.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from base64 import b64decode, b64encode
from collections.abc import Callable
from email.utils import format_datetime, make_msgid

from aiosmtpd.smtp import AuthResult, Envelope, Session
from sqlalchemy.exc import SQLAlchemyError

from app.accounts import account_for_login, owns_address
from app.address import address_domain, normalize_address
from app.auth.dkim import DKIMMessageError, DKIMSigningError, header_problem, sign
from app.auth.message import author, header_fields, obsolete_field_names
from app.config import Config
from app.logs import fields
from app.models.base import utcnow
from app.queue.enqueue import Queued
from app.smtpserver.handler import BaseHandler, envelope_sender
from app.smtpserver.protocol import PostwardenSMTP
from app.store.files import MessageStore, StoreError
from app.throttle import attempt_login

log = logging.getLogger("app.smtpserver")

BAD_BASE64 = "501 5.5.2 Cannot decode the base64 argument"
FROM_REFUSED = "550 5.7.1 The message must have exactly one From field, naming one of your own addresses"
OBSOLETE_FIELD_REFUSED = (
    "554 5.6.0 A header field has white space before its colon (obsolete syntax, RFC 5322 4.5.3); "
    "write the name and the colon together"
)
MAX_SHOWN_FIELD_NAME = 40
# A permanent problem of the message itself: a 4xx would have the client retry it for days.
MALFORMED_HEADER = "554 5.6.0 The message header section is malformed"
# An answer to a 334 challenge (base64): 1024 octets carry credentials of up to 768 bytes.
MAX_AUTH_ANSWER = 1024
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"
TOO_MANY_FAILURES = "454 4.7.0 Too many failed logins; try again later"
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure; try again later"
LOGGED_LOGIN_LENGTH = 100  # a login is logged (repr) up to this many characters


class SubmissionHandler(BaseHandler):
    kind = "submission"
    offers_auth = True

    def __init__(
        self,
        config: Config,
        store: MessageStore,
        database_url: str,
        wake_queue: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.store = store
        self.database_url = database_url
        # Tells delivery workers that mail is waiting, so it goes now rather than at the next sweep.
        self.wake_queue = wake_queue

    # AUTH mechanisms (aiosmtpd calls `auth_<NAME>` methods of the handler in place of its own).

    async def auth_PLAIN(self, server: PostwardenSMTP, args: list[str]) -> AuthResult:
        """RFC 4616: base64 of `authzid NUL authcid NUL password`, inline or after a 334."""
        blob = await _initial_or_challenge(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 AUTH PLAIN needs authzid, user name and password separated by NUL")
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        if authzid and authzid != login:  # acting for another user is not supported
            return AuthResult(success=False, handled=False)
        return await self._check(server, login, password)

    async def auth_LOGIN(self, server: PostwardenSMTP, args: list[str]) -> AuthResult:
        """The de-facto LOGIN mechanism: user name (inline or asked for), then password, each base64."""
        login = await _initial_or_challenge(server, args, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await _challenge(server, "Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def _check(self, server: PostwardenSMTP, login_raw: bytes, password_raw: bytes) -> AuthResult:
        try:
            login, password = login_raw.decode("utf-8"), password_raw.decode("utf-8")
        except UnicodeDecodeError:
            log.info(
                "submission auth failed: login or password is not UTF-8", extra=fields(ip=server.peer_ip)
            )
            return AuthResult(success=False, handled=False)
        account = account_for_login(self.config, login)
        settings = self.config.login_throttle
        try:
            # Unknown logins cost one scrypt too (~0.1 s of CPU, in a thread) and are counted alike.
            result = await asyncio.to_thread(
                attempt_login, self.database_url, settings, account, login, password, server.peer_ip
            )
        except SQLAlchemyError as e:
            problem = str(e).partition("\n")[0]
            log.error("submission auth: database problem", extra=fields(ip=server.peer_ip, error=problem))
            return AuthResult(success=False, handled=False, message=AUTH_UNAVAILABLE)
        shown = login[:LOGGED_LOGIN_LENGTH]
        if result.retry_after is not None:
            log.warning(
                "submission auth refused: too many failed logins",
                extra=fields(ip=server.peer_ip, login=shown, retry_after=result.retry_after),
            )
            return AuthResult(success=False, handled=False, message=TOO_MANY_FAILURES)
        if result.account is None:
            log.info(
                "submission auth failed",
                extra=fields(ip=server.peer_ip, login=shown, failures=result.failures),
            )
            await asyncio.sleep(result.delay)  # a growing delay slows a guesser that waits for replies
            return AuthResult(success=False, handled=False)  # aiosmtpd replies 535 5.7.8
        log.info("submission auth ok", extra=fields(ip=server.peer_ip, account=account))
        return AuthResult(success=True, auth_data=account)

    # The transaction.

    async def handle_MAIL(
        self, server: PostwardenSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        sender = "" if address == "<>" else address
        problem = self.sender_problem(envelope, sender)
        if problem:
            return problem
        account = str(session.auth_data)
        if not sender or not owns_address(self.config, account, sender):
            log.info(
                "submission sender refused",
                extra=fields(ip=server.peer_ip, account=account, mail_from=f"<{sender}>"),
            )
            return f"550 5.7.1 <{sender}> is not one of your addresses; send from your own address"
        envelope.mail_from = normalize_address(sender)
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: PostwardenSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        problem = self.recipient_problem(envelope, address)
        if problem:
            return problem
        envelope.rcpt_tos.append(normalize_address(address))
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    async def receive(
        self,
        server: PostwardenSMTP,
        session: Session,
        envelope: Envelope,
        content: bytes,
        transaction_id: str,
    ) -> tuple[str, str]:
        account = str(session.auth_data)
        sender = author(content)
        from_address = sender.address
        if not from_address or not owns_address(self.config, account, from_address):
            log.info(
                "submission From refused",
                extra=fields(
                    ip=server.peer_ip, account=account, header_from=from_address, problem=sender.problem
                ),
            )
            # The problem text is ours (no message text in it): it tells the user what to change.
            found = f" ({sender.problem})" if sender.problem else ""
            return "from-refused", f"{FROM_REFUSED}{found}"
        obsolete = obsolete_field_names(content)
        if obsolete:
            # Readers differ on such fields (DKIM signers skip them): nothing we sign may have one.
            name = obsolete[0][:MAX_SHOWN_FIELD_NAME]
            return "obsolete-syntax", f"{OBSOLETE_FIELD_REFUSED} (the first is {name!r})"
        try:
            # Signing with an RSA key costs milliseconds of CPU: off the event loop.
            added = await asyncio.to_thread(self.prepare, content, from_address)
        except DKIMMessageError as e:  # the text is ours, naming the line, never the message's text
            log.info(
                "submission malformed header", extra=fields(ip=server.peer_ip, account=account, error=str(e))
            )
            return "malformed-header", f"{MALFORMED_HEADER}: {e}"
        except DKIMSigningError as e:
            log.error("submission not signed", extra=fields(ip=server.peer_ip, account=account, error=str(e)))
            return "sign-failed", "451 4.3.0 The message could not be signed; try again later"
        trace = self.trace_header(server, session, envelope, transaction_id)
        message = Queued(content, envelope_sender(envelope), tuple(envelope.rcpt_tos))
        try:
            await self.store.enqueue_outgoing(
                message,
                account=account,
                default_max_attempts=self.config.delivery.max_attempts,
                prefix=trace + added,
                file_id=transaction_id,
            )
        except StoreError:
            return "store-failed", "451 4.3.0 The message could not be queued; try again later"
        if self.wake_queue is not None:
            self.wake_queue()
        return "queued", f"250 2.0.0 Message queued, id {transaction_id}"

    def prepare(self, content: bytes, from_address: str) -> bytes:
        """The header fields to put before the content: what RFC 6409 lets a submission server complete,
        and before them the DKIM signatures of the From domain (none when it has no selectors). The
        content itself is not copied unless fields are added, which the signature must cover.
        DKIMMessageError if the header section is malformed, whether or not the domain signs."""
        problem = header_problem(content)
        if problem is not None:
            raise DKIMMessageError(problem)
        domain = address_domain(from_address)
        present = {name.lower() for name, _ in header_fields(content)}
        added = b""
        if "date" not in present:
            added += f"Date: {format_datetime(utcnow())}\r\n".encode()
        if "message-id" not in present:
            added += f"Message-ID: {make_msgid(domain=self.config.hostname)}\r\n".encode()
        selectors = self.config.domains[domain].dkim if domain in self.config.domains else []
        if not selectors:
            return added
        return sign(added + content if added else content, domain, selectors) + added


async def _initial_or_challenge(server: PostwardenSMTP, args: list[str], prompt: str) -> bytes | None:
    """The decoded initial response given with AUTH, else the client's answer to a 334 `prompt`."""
    if len(args) == 1:
        return await _challenge(server, prompt)
    try:
        return b64decode(args[1], validate=True)
    except binascii.Error:
        await server.push(BAD_BASE64)
        return None


async def _challenge(server: PostwardenSMTP, prompt: str) -> bytes | None:
    """Send `334 base64(prompt)`; the decoded answer, or None (replied to here) if the client aborted
    with "*", or sent bad base64 or a line over MAX_AUTH_ANSWER octets.

    aiosmtpd's own challenge_auth reads the answer with StreamReader.readline, which fails on a line
    over the stream's limit after dropping only part of it: the session got a 451 and the rest of the
    line was taken for commands. Here an over-long line is read to its end and refused with a 500.
    """
    await server.push("334 " + b64encode(prompt.encode()).decode("ascii"))
    line = await _bounded_line(server._reader)
    if line is None:
        await server.push(AUTH_LINE_TOO_LONG)
        return None
    answer = line.strip()
    if answer == b"*":
        await server.push("501 5.7.0 Authentication aborted")
        return None
    try:
        return b64decode(answer, validate=True)
    except binascii.Error:
        await server.push(BAD_BASE64)
        return None


async def _bounded_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line, or None if it is longer than MAX_AUTH_ANSWER (then read to its end and dropped:
    the next line is the client's next command). The session's idle timeout bounds the time taken."""
    too_long = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
            break
        except asyncio.LimitOverrunError as e:
            await reader.readexactly(e.consumed)  # over the stream's limit: drop what came, read on
            too_long = True
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("connection closed during AUTH") from None
    if too_long or len(line.rstrip(b"\r\n")) > MAX_AUTH_ANSWER:
        return None
    return line
