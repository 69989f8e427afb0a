"""The SMTP protocol layer shared by every listener: aiosmtpd's `SMTP`, with our limits and replies.

aiosmtpd parses commands and DATA; this subclass adds what RFC 5321/2034/2920 ask of a public server
and aiosmtpd leaves out: an enhanced status code (RFC 2034/3463) on every reply that can carry one,
a per-session error budget (too many errors → 421 4.7.0 and close), a 421 before an idle close, the
configured line length, and the PIPELINING / ENHANCEDSTATUSCODES extensions in the EHLO reply.
Command lines may end in a bare LF (as most servers accept); they carry no message content. What is
done with a transaction is the handler's (handler.py and its subclasses).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, syntax

from app.config import Limits
from app.smtpserver.data import read_message_data

log = logging.getLogger("app.smtpserver")

ENHANCED_CODE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}( |$)")
# Enhanced codes for aiosmtpd's own replies, by reply code (RFC 3463 X.5.x: protocol, X.7.0: security).
DEFAULT_ENHANCED = {
    "500": "5.5.2",  # syntax error, command unrecognised, line too long
    "501": "5.5.4",  # invalid arguments
    "502": "5.5.1",  # not implemented
    "503": "5.5.1",  # bad sequence
    "504": "5.5.4",
    "530": "5.7.0",  # STARTTLS or AUTH first
    "552": "5.3.4",  # message too big
    "554": "5.0.0",
    "555": "5.5.4",  # unknown MAIL/RCPT parameters
}
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
# "<" Dot-string "@" Domain ">" then the parameters (RFC 5321 4.1.2), ASCII only.
SIMPLE_PATH = re.compile(
    r"<(?P<address>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>"
    r"(?:[ \t]+(?P<rest>.*))?\Z"
)
# aiosmtpd closes after 5 unknown commands with this reply; it is our too-many-errors close too.
AIOSMTPD_BOGUS_CLOSE = "502 5.5.1 Too many unrecognized commands, goodbye."


def with_enhanced_code(reply: str) -> str:
    """`reply` with an enhanced status code after the reply code, unless it has one or cannot (3xx)."""
    code, _, text = reply.partition(" ")
    if code[:1] not in "245" or ENHANCED_CODE.match(text):
        return reply
    enhanced = DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code} {enhanced} {text}"


class PostwardenSMTP(SMTP):
    """One SMTP session. The handler (inbound or submission) decides what is accepted."""

    def __init__(
        self,
        handler: Any,
        *,
        limits: Limits,
        hostname: str,
        tls_context: Any = None,
        submission: bool = False,
    ) -> None:
        # aiosmtpd reads lines with a stream limit of `line_length_limit`; RFC 5321 4.5.3.1.6's 1000
        # octets is a minimum to accept, and the operator's limit is what we enforce.
        self.line_length_limit = limits.max_line_length
        super().__init__(
            handler,
            data_size_limit=limits.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="ESMTP Postwarden",
            tls_context=tls_context,
            # Submission (RFC 6409, 3207): nothing but EHLO/NOOP/QUIT before STARTTLS (530 5.7.0),
            # then AUTH before MAIL. Inbound: no AUTH at all (the handler answers 502).
            require_starttls=submission,
            timeout=limits.idle_timeout,
            auth_required=submission,
            auth_require_tls=submission,
        )
        self.limits = limits
        self.errors = 0
        self._greeted = False
        self._plain_replies = False  # replies to HELO/EHLO carry no enhanced code (RFC 2034)
        self._ehlo_lines: list[str] | None = None
        self._closing = False

    def __dir__(self) -> list[str]:
        # aiosmtpd builds its command and AUTH tables anew for every connection from dir(self),
        # keeping only smtp_* and auth_* names; listing just those (once per class) saves most of the
        # cost of opening a session.
        return _command_and_auth_names(type(self))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every MAIL/RCPT path with the email package's full RFC 5322 parser, a large
        # share of a session's cost. The common <local@domain> form is read here; anything else
        # (quoted or UTF-8 local parts, address literals, source routes, <>) still goes to aiosmtpd.
        match = SIMPLE_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        return match["address"], match["rest"] or ""

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None

    async def push(self, status: AnyStr) -> None:
        if self._closing:
            return
        reply = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if self._ehlo_lines is not None and reply.startswith("250"):
            self._ehlo_lines.append(reply)
            return
        if self._greeted and not self._plain_replies:
            reply = self._rewrite(reply)
        self._greeted = True
        if reply == AIOSMTPD_BOGUS_CLOSE:
            await self.close_with("421 4.7.0 Too many unrecognized commands, closing connection")
            return
        await super().push(reply)
        if reply[:1] in "45" and not reply.startswith(TOO_MANY_RECIPIENTS):
            # Too many recipients is not counted: RFC 5321 4.5.3.1.10 tells clients to go on with the
            # accepted ones, so a pipelining client gets one 452 per extra recipient.
            self.errors += 1
            if self.errors >= self.limits.max_errors:
                await self.close_with("421 4.7.0 Too many errors, closing connection")

    def _rewrite(self, reply: str) -> str:
        if reply.startswith("552 Error: message size exceeds"):
            return f"552 5.3.4 Declared SIZE exceeds the limit of {self.limits.max_message_size} octets"
        return with_enhanced_code(reply)

    async def close_with(self, reply: str) -> None:
        """Send a last reply (421) and close the connection; later replies are dropped."""
        log.info("closing session from %s: %s", self.peer_ip, reply)
        await super().push(reply)
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently; RFC 5321 4.5.3.2 servers may send 421 first, which tells the
        # client why, rather than leaving it to guess from a reset.
        if self.transport is not None and not self._closing:
            self._closing = True
            log.info("closing idle session from %s", self.peer_ip)
            self.transport.write(b"421 4.4.2 Idle timeout, closing connection\r\n")
        super()._timeout_cb()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with our reader (data.py): the same checks and replies, far less per line."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = await read_message_data(
            self._reader,
            max_size=self.limits.max_message_size,
            max_line_length=self.limits.max_line_length,
        )
        if data.problem is not None:
            self._set_post_data_state()
            await self.push(data.problem)
            return
        self.envelope.content = self.envelope.original_content = data.content
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._set_post_data_state()  # a failed transaction must not leave its envelope behind
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_EHLO(self, hostname: str) -> None:
        # aiosmtpd writes each EHLO line on its own (a send() each); one write is cheaper for both ends.
        self._plain_replies = True
        self._ehlo_lines = []
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False
            lines, self._ehlo_lines = self._ehlo_lines, None
        if lines:
            await super().push("\r\n".join(lines))

    @property
    def peer_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)


@functools.cache
def _command_and_auth_names(cls: type) -> list[str]:
    return [name for name in dir(cls) if name.startswith(("smtp_", "auth_"))]
