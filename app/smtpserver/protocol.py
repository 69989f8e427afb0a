"""The SMTP protocol layer shared by every listener: aiosmtpd's `SMTP`, with our limits and replies.

aiosmtpd parses commands and DATA; this subclass adds what RFC 5321/2034/2920 ask of a public server
and aiosmtpd leaves out: an enhanced status code (RFC 2034/3463) on every reply that can carry one,
a per-session error budget (too many errors → 421 4.7.0 and close), a 421 before an idle close, the
configured line length, and the PIPELINING / ENHANCEDSTATUSCODES extensions in the EHLO reply.
Command lines may end in a bare LF (as most servers accept); they carry no message content. What is
done with a transaction is the handler's (handler.py and its subclasses).

Against hostile clients: a connection beyond the session caps gets 421 4.7.0 before any session
starts (admission.py); pipelined commands already buffered yield to the event loop every PACE replies
(aiosmtpd runs them back to back, so a million NOOPs would stall every other session), and once we
close a session (421) the commands still buffered are dropped, not run. DATA has its own timeouts:
`data_timeout` without any incoming data, `data_total_timeout` for all of it (aiosmtpd's idle timer
runs from the DATA command and would cut a long message that is still flowing). Message data held
in memory is charged to the process's MemoryBudget (data.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, syntax

from app import metrics
from app.config import Limits
from app.logs import RATE_LIMITED, escape_control, fields
from app.smtpserver.admission import SessionGate
from app.smtpserver.data import OVER_BUDGET, MemoryBudget, MessageData, read_message_data
from app.smtpserver.greeting import greeting_problem

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
SIZE_VALUE = re.compile(r"[0-9]{1,20}\Z")  # RFC 1870 size-value (str.isdigit() also takes "²")
# Any "<...>" path and what follows it, for paths that are handed on unparsed (see `_getaddr`).
BRACKETED_PATH = re.compile(r"<(?P<path>[^<>]*)>(?:[ \t]+(?P<rest>.*))?\Z", re.DOTALL)
# aiosmtpd closes after 5 unknown commands with this reply; it is our too-many-errors close too.
AIOSMTPD_BOGUS_CLOSE = "502 5.5.1 Too many unrecognized commands, goodbye."
PACE = 8  # replies between yields to the event loop (pipelined commands run back to back otherwise)
# After our last reply, how long a client that does not read may keep the connection (and its file).
CLOSE_GRACE = 10.0

# Every name of aiosmtpd's SMTP that is not its documented API and that we use, read, set or override
# (here and in submission.py). A release may rename any of them without notice, so pyproject.toml pins
# aiosmtpd's minor version and tests/smtpserver/test_aiosmtpd_contract.py checks that each still exists
# and that this list is complete.
AIOSMTPD_PRIVATE_NAMES = (
    "_original_transport",  # set after STARTTLS: connection_made admits a session only the first time
    "_tls_protocol",  # not None once TLS is on: our tls_active
    "_reader",  # the StreamReader: DATA (data.py) and the AUTH answer (submission.py) read from it
    "_getaddr",  # overridden: a fast path for <local@domain>, and unprintable paths handed on as sent
    "_getparams",  # overridden: SIZE= values str.isdigit() passes but int() or RFC 1870 does not
    "_handler_coroutine",  # the session task: close_with cancels it so pipelined commands are dropped
    "_timeout_cb",  # overridden: 421 before an idle close, and the DATA timeouts
    "_timeout_handle",  # set by _timeout_cb to look again when data came in since the timer was set
    "_reset_timeout",  # arms the idle timer with the DATA timeouts, then the idle timeout again
    "_call_handler_hook",  # our smtp_DATA hands the data to the handler's handle_DATA through it
    "_set_post_data_state",  # our smtp_DATA ends the transaction with it, as aiosmtpd's does
    "line_length_limit",  # class attribute: aiosmtpd's stream limit, set to our max_line_length
)


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
        gate: SessionGate | None = None,
        budget: MemoryBudget | None = None,
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
            loop=asyncio.get_running_loop(),  # else aiosmtpd looks it up through get_event_loop()
        )
        self.limits = limits
        self.gate = gate  # None: no caps (a session that is not served by SMTPService)
        self.budget = budget or MemoryBudget(limits.data_memory_budget)
        self.errors = 0
        self._greeted = False
        self._plain_replies = False  # replies to HELO/EHLO carry no enhanced code (RFC 2034)
        self._ehlo_lines: list[str] | None = None
        self._closing = False
        self._bucket: int | None = None  # the session's place in the gate's counts, once admitted
        self._replies = 0
        self._last_data = 0.0  # loop time anything last came in
        self._data_deadline: float | None = None  # while reading DATA: when it must be over

    def connection_made(self, transport: Any) -> None:
        # Called again with the TLS transport after STARTTLS; the session was admitted the first time.
        if self.gate is not None and self._original_transport is None:
            ip = _peer_ip(transport.get_extra_info("peername"))
            admitted = self.gate.admit(ip)
            if isinstance(admitted, str):
                log.info("refused connection from %s: %s", ip, admitted, extra=RATE_LIMITED)
                transport.write(f"{admitted}\r\n".encode())
                metrics.smtp_reply(self.event_handler.kind, admitted)
                transport.close()
                return  # no session, no handler task, no timer
            self._bucket = admitted
            metrics.smtp_session(self.event_handler.kind)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.session is None:
            return  # refused in connection_made: nothing was started
        if self._bucket is not None and self.gate is not None:
            self.gate.leave(self._bucket)
            self._bucket = None
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        super().data_received(data)

    def __dir__(self) -> list[str]:
        # aiosmtpd builds its command and AUTH tables anew for every connection from dir(self),
        # keeping only smtp_* and auth_* names; listing just those (once per class) saves most of the
        # cost of opening a session.
        # mypy checks the class object against Hashable with the instances' __hash__ (a false positive).
        return names_with_prefixes(type(self), ("smtp_", "auth_"))  # type: ignore[arg-type]

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every MAIL/RCPT path with the email package's full RFC 5322 parser, a large
        # share of a session's cost. The common <local@domain> form is read here; anything else
        # (quoted or UTF-8 local parts, address literals, source routes, <>) still goes to aiosmtpd.
        if not arg.isprintable():
            # aiosmtpd's parser reads TAB, CR, NEL or U+2028 inside <...> as white space and quietly
            # makes another address of it ("<eve\tx@...>" becomes '"eve x"@...'): the path goes to the
            # handler as sent, whose address check refuses it with the sender's or recipient's code.
            bracketed = BRACKETED_PATH.match(arg)
            return (bracketed["path"], bracketed["rest"] or "") if bracketed else (None, None)
        match = SIMPLE_PATH.match(arg)
        if match is None:
            try:
                return super()._getaddr(arg)
            except Exception:  # the email parser raises more than the HeaderParseError aiosmtpd expects
                return None, None  # (IndexError for "<", "<a@"): a malformed path, 553
        return match["address"], match["rest"] or ""

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        # aiosmtpd converts SIZE with int() after str.isdigit(), which passes "²" and numbers too long
        # for int(): refuse those as a syntax error (501) instead of failing with 451 and a traceback.
        result = super()._getparams(params)
        size = result.get("SIZE") if result is not None else None
        if isinstance(size, str) and not SIZE_VALUE.match(size):
            return None
        return result

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None

    async def push(self, status: AnyStr) -> None:
        if self._closing:
            await asyncio.sleep(0)  # let the close (and the cancelled session task) take effect
            return
        # aiosmtpd echoes client text in some replies (an unknown command's name, VRFY's argument):
        # escaped here, so no reply carries a control character or terminal escape back.
        reply = escape_control(status.decode("utf-8", "replace") if isinstance(status, bytes) else status)
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
        metrics.smtp_reply(self.event_handler.kind, reply)
        self._replies += 1
        if not self._replies % PACE:
            await asyncio.sleep(0)  # give other sessions a turn between pipelined commands
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
        """Send a last reply (421) and close the connection. The session task is cancelled, so commands
        the client pipelined after this one are not run (the CancelledError ends the session here,
        when called from it)."""
        log.info("closing session", extra=fields(ip=self.peer_ip, reply=reply))
        self._end_with(reply)
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        await asyncio.sleep(0)

    def _end_with(self, reply: str) -> None:
        """Write a last reply and close; a client that does not read it is cut off after CLOSE_GRACE
        (a transport waits for its buffer to drain before it closes, holding a file meanwhile)."""
        transport = self.transport
        # aiosmtpd types it as a BaseTransport; a connected socket's (TLS or not) is a full Transport.
        if not isinstance(transport, asyncio.Transport) or self._closing:
            return
        self._closing = True
        transport.write(f"{reply}\r\n".encode())
        metrics.smtp_reply(self.event_handler.kind, reply)
        transport.close()
        if transport.get_write_buffer_size():
            self.loop.call_later(CLOSE_GRACE, transport.abort)

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently; RFC 5321 4.5.3.2 servers may send 421 first, which tells the
        # client why, rather than leaving it to guess from a reset.
        reply = "421 4.4.2 Idle timeout, closing connection"
        if self._data_deadline is not None:
            now = self.loop.time()
            quiet_until = self._last_data + self.limits.data_timeout
            if now < min(quiet_until, self._data_deadline):
                # Data came in since the timer was set: look again when the pause could be too long.
                self._timeout_handle = self.loop.call_at(
                    min(quiet_until, self._data_deadline), self._timeout_cb
                )
                return
            if now >= self._data_deadline:
                reply = f"421 4.4.2 Message data not complete in {self.limits.data_total_timeout:g} s"
            else:
                reply = f"421 4.4.2 No message data for {self.limits.data_timeout:g} s"
        if self.transport is not None and not self._closing:
            log.info("closing session", extra=fields(ip=self.peer_ip, reply=reply))
        self._end_with(reply)

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
        if not self.budget.fits(max(1, self._declared_size())):
            await self.push(OVER_BUDGET)  # sessions hold what we allow for message data: not now
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self.push(await self._receive_data())

    def _declared_size(self) -> int:
        """MAIL FROM's SIZE= (RFC 1870), 0 if none (aiosmtpd refused one over the size limit)."""
        assert self.envelope is not None
        for option in self.envelope.mail_options:
            if option.startswith("SIZE=") and SIZE_VALUE.match(option[5:]):
                return int(option[5:])
        return 0

    async def _receive_data(self) -> str:
        """Read the data, hand it to the handler, and return the reply. The data is let go (and its
        budget given back) on return, not after the reply has been written to a slow client."""
        assert self.envelope is not None
        data = await self._read_data()
        if data.problem is not None:
            self._set_post_data_state()
            return data.problem
        self.envelope.content = self.envelope.original_content = data.content
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._set_post_data_state()  # a failed transaction must not leave its envelope behind
            self.budget.give_back(data.held)
        return "250 OK" if status is MISSING else status

    async def _read_data(self) -> MessageData:
        now = self.loop.time()
        self._last_data, self._data_deadline = now, now + self.limits.data_total_timeout
        self._reset_timeout(min(self.limits.data_timeout, self.limits.data_total_timeout))
        try:
            return await read_message_data(
                self._reader,
                max_size=self.limits.max_message_size,
                max_line_length=self.limits.max_line_length,
                budget=self.budget,
            )
        finally:
            self._data_deadline = None
            if self.transport is not None and not self._closing:
                self._reset_timeout()  # the idle timeout again, for the handler and the next command

    async def smtp_HELO(self, hostname: str | None) -> None:
        if await self._greeting_refused("HELO", hostname):
            return
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_EHLO(self, hostname: str | None) -> None:
        # aiosmtpd writes each EHLO line on its own (a send() each); one write is cheaper for both ends.
        if await self._greeting_refused("EHLO", hostname):
            return
        self._plain_replies = True
        self._ehlo_lines = []
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False
            lines, self._ehlo_lines = self._ehlo_lines, None
        if lines:
            await super().push("\r\n".join(lines))
            metrics.smtp_reply(self.event_handler.kind, lines[0])

    async def _greeting_refused(self, command: str, argument: str | None) -> bool:
        """Answer 501 to an unusable EHLO/HELO argument before aiosmtpd resets the session (greeting.py)."""
        argument = argument or ""  # aiosmtpd passes None for a command without one
        problem = greeting_problem(command, argument)
        if problem is None:
            return False
        self.event_handler.log_greeting_refused(self, command, argument)
        self._plain_replies = True
        try:
            await self.push(problem)
        finally:
            self._plain_replies = False
        return True

    @property
    def peer_ip(self) -> str:
        return _peer_ip(self.session.peer if self.session is not None else None)


def _peer_ip(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


@functools.cache
def names_with_prefixes(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    """The attribute names of `cls` that aiosmtpd looks for in `dir()` of a session or handler."""
    return [name for name in dir(cls) if name.startswith(prefixes)]
