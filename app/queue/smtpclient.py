"""SMTP client for outgoing delivery, with independent TLS settings per attempt (SPEC R4.2, R4.5).

Built on smtplib, synchronously: a delivery worker process runs one delivery at a time, so a blocking
socket costs nothing and saves a thread hop per command. `open_session` connects to one IP of one
host and negotiates TLS as the policy decision's `TLSSettings` (app/queue/tlspolicy.py) say;
`Session.send` transfers one message. Every failure is a `DeliveryError` that says whether it is
permanent, with an RFC 3463 status and the SMTP diagnostic; TLS failures carry their RFC 8460
result type.

Bounds, since the server is whoever the recipient domain names: every read and write waits at most
`command_timeout` for progress and, in total, each step at most `transaction_timeout` (opening the
session with any fallbacks, one message's transaction; QUIT gets what the last step left, at most
QUIT_WAIT), however the server paces its bytes. A reply line is at most REPLY_LINE_MAX octets, a
reply at most REPLY_MAX. Past a bound the connection is dropped with a transient error. Reply text
is kept (DSNs, logs, database) as printable ASCII on one line, at most REPLY_TEXT_MAX characters.

TLS failure handling: a failed certificate verification (PKIX or DANE) is recorded and, when
`ignore_verification_errors` is set or STARTTLS is not required, the host is retried with TLS but
without verification. Any other TLS failure (no STARTTLS, a failed handshake, or an alert on the
first read after it, R4.5) is recorded and, unless STARTTLS is required, the host is retried in
plain text. Otherwise the attempt to this host fails.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.queue.dane import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    VALIDATION_FAILURE,
    check_chain,
)
from app.queue.tlspolicy import CERTIFICATE_NOT_TRUSTED, TLSFailure, TLSSettings

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; servers send longer ones, so be generous.
REPLY_LINE_MAX = 4096
REPLY_MAX = 64 * 1024  # one reply, every line (an EHLO reply is a few hundred octets)
REPLY_TEXT_MAX = 1000  # characters of reply text kept
HELO_NAME_MAX = 255  # the server's name from its EHLO reply, as TLS reports keep it (a host name)
QUIT_WAIT = 10.0  # seconds at most: QUIT is a courtesy, not worth a long wait
_RECV_SIZE = 16 * 1024
_MIN_WAIT = 0.001  # a socket timeout of 0 would mean non-blocking, not "no time left"

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) and the RFC 8460 result type each one means.
_VERIFY_CODE_RESULTS = {
    10: CERTIFICATE_EXPIRED,  # CERT_HAS_EXPIRED
    62: CERTIFICATE_HOST_MISMATCH,  # HOSTNAME_MISMATCH
    2: CERTIFICATE_NOT_TRUSTED,  # UNABLE_TO_GET_ISSUER_CERT
    18: CERTIFICATE_NOT_TRUSTED,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: CERTIFICATE_NOT_TRUSTED,  # SELF_SIGNED_CERT_IN_CHAIN
    20: CERTIFICATE_NOT_TRUSTED,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: CERTIFICATE_NOT_TRUSTED,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    27: CERTIFICATE_NOT_TRUSTED,  # CERT_UNTRUSTED
}


@dataclass(frozen=True)
class ClientOptions:
    helo: str
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    transaction_timeout: float = 540.0
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class Target:
    """One connection target: the MX host name (for reports and logs), an IP, a port."""

    host: str
    ip: str
    port: int


class DeliveryError(Exception):
    """A failed delivery step. `status` is an RFC 3463 code; `diagnostic` the DSN Diagnostic-Code."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        status: str,
        diagnostic: str | None = None,
        tls_failure: TLSFailure | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status
        self.diagnostic = diagnostic
        self.tls_failure = tls_failure
        # What was known of the session when it failed (for the TLS result of a failed attempt).
        self.session_info: SessionInfo | None = None


class TLSError(DeliveryError):
    """TLS could not be used as required; `verification` tells a certificate check from other failures."""

    def __init__(self, failure: TLSFailure, *, verification: bool, missing: bool = False) -> None:
        # X.7.10 "encryption needed" when TLS is missing; X.7.5 "cryptographic failure" otherwise.
        super().__init__(
            f"TLS failure: {failure.result_type}: {failure.reason}",
            permanent=False,
            status="4.7.10" if missing else "4.7.5",
            tls_failure=failure,
        )
        self.failure = failure
        self.verification = verification


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def permanent(self) -> bool:
        return 500 <= self.code <= 599

    @property
    def status(self) -> str:
        """The enhanced status code the server gave (RFC 2034), else one derived from the reply code."""
        first = self.text.split(" ", 1)[0]
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] == str(self.code // 100):
            return first
        klass = self.code // 100
        return f"{klass if klass in (2, 4, 5) else 4}.0.0"

    @property
    def diagnostic(self) -> str:
        return f"smtp; {self.code} {self.text}".strip()

    def error(self, what: str) -> DeliveryError:
        return DeliveryError(
            f"{what}: {self.code} {self.text}",
            permanent=self.permanent,
            status=self.status,
            diagnostic=self.diagnostic,
        )


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    reply: Reply

    @property
    def delivered(self) -> bool:
        return 200 <= self.reply.code <= 299


@dataclass
class SessionInfo:
    """What TLS reporting needs to know about the session (RFC 8460 failure details)."""

    target: Target
    sending_ip: str | None = None
    receiving_helo: str | None = None
    tls_version: str | None = None
    # Set when TLS failed but the session went on without it (or unverified); None: no failure.
    tls_failure: TLSFailure | None = None


class _Mode(Enum):
    """How far one connection goes with TLS: as the settings say, unverified, or not at all."""

    AS_SET = "as set"
    UNVERIFIED = "unverified"
    PLAIN = "plain"


class StepTimeout(TimeoutError):
    """A step of the session (its opening, a transaction, QUIT) ran past its deadline."""


class ReplyTooLong(smtplib.SMTPException):
    """A reply line or a whole reply beyond our bounds: the server is broken or hostile."""


@dataclass(frozen=True)
class _Deadline:
    """When the current step must be done, by the monotonic clock."""

    step: str
    seconds: float
    at: float

    @classmethod
    def start(cls, step: str, seconds: float) -> _Deadline:
        return cls(step, seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def error(self) -> StepTimeout:
        return StepTimeout(f"{self.step} not done within {self.seconds:g} s")


class _Client(smtplib.SMTP):
    """smtplib connected to a chosen IP while `server_name` is used for SNI and verification.

    Every byte in or out goes through `send` and `_recv` here, and replies are read by `getreply`
    here, so the module's bounds hold for everything smtplib does (greeting, EHLO, STARTTLS, QUIT).
    """

    def __init__(self, target: Target, server_name: str, options: ClientOptions, deadline: _Deadline) -> None:
        self._address = target.ip
        self._connect_timeout = options.connect_timeout
        self._command_timeout = options.command_timeout
        self.transaction_timeout = options.transaction_timeout
        self.deadline = deadline
        self._buffer = bytearray()  # received, not yet read as reply lines
        # smtplib uses the host given here as the TLS server_hostname.
        super().__init__(
            server_name, target.port, local_hostname=options.helo, timeout=options.command_timeout
        )

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), self._wait(self._connect_timeout))

    def _wait(self, limit: float) -> float:
        """How long the next socket operation may wait: `limit`, or less as the deadline nears."""
        left = self.deadline.remaining()
        if left <= 0:
            self.close()
            raise self.deadline.error()
        return min(limit, left)

    def _timed_out(self, doing: str) -> TimeoutError:
        self.close()
        if self.deadline.remaining() <= 0:
            return self.deadline.error()
        return TimeoutError(f"{doing}: nothing for {self._command_timeout:g} s")

    def send(self, s: Buffer | str) -> None:
        """Write all of `s`; each wait for the socket is bounded (SSLSocket.sendall's is not in total)."""
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        view = memoryview(s.encode(self.command_encoding) if isinstance(s, str) else s)
        while len(view):
            self.sock.settimeout(self._wait(self._command_timeout))
            try:
                view = view[self.sock.send(view) :]
            except TimeoutError:
                raise self._timed_out("sending") from None
            except OSError as e:
                self.close()
                raise smtplib.SMTPServerDisconnected(f"Server not connected: {e}")  # noqa: B904

    def getreply(self) -> tuple[int, bytes]:
        """One reply as smtplib returns it (code, the lines' text joined by LF), bounded in size.

        A code that is not three digits ends the reply with code -1, as in smtplib.
        """
        lines: list[bytes] = []
        size = 0
        while True:
            line = self._read_line()
            size += len(line)
            if size > REPLY_MAX:
                self.close()
                raise ReplyTooLong(f"reply longer than {REPLY_MAX} octets")
            lines.append(line[4:].strip(b" \t\r\n"))
            code = int(line[:3]) if line[:3].isdigit() else -1
            if code == -1 or line[3:4] != b"-":
                break
        if self.sock is not None:
            # smtplib may go on with the socket by itself (the TLS handshake after STARTTLS's 220):
            # bound that too. Not an error here when time is up: this reply arrived in time.
            left = self.deadline.remaining()
            self.sock.settimeout(max(min(self._command_timeout, left), _MIN_WAIT))
        return code, b"\n".join(lines)

    def _read_line(self) -> bytes:
        """The next line from the server, LF included; the buffer never exceeds a line and a read."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= REPLY_LINE_MAX or (end < 0 and len(self._buffer) >= REPLY_LINE_MAX):
                self.close()
                raise ReplyTooLong(f"reply line longer than {REPLY_LINE_MAX} octets")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            start = len(self._buffer)
            self._buffer += self._recv()

    def _recv(self) -> bytes:
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        self.sock.settimeout(self._wait(self._command_timeout))
        try:
            data = self.sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise self._timed_out("waiting for a reply") from None
        except OSError as e:
            self.close()
            # Raised here, so the OSError stays its context (_ssl_reason reads a TLS alert from it).
            raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {e}")  # noqa: B904
        if not data:
            self.close()
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return data

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        reply = super().starttls(*args, **kwargs)
        # Anything the server sent in plain text after its 220 must not pass for a reply under TLS
        # (response injection); smtplib drops its read buffer here too.
        self._buffer.clear()
        return reply


class Session:
    """An open SMTP session with one host; `send` as many messages as needed, then `close`.

    With PIPELINING (RFC 2920) the MAIL, RCPT and DATA commands of a message go out in one write and
    their replies are read together: one round trip instead of two plus one per recipient.
    """

    def __init__(self, client: _Client, info: SessionInfo) -> None:
        self._client = client
        self.info = info

    def send(self, sender: str, recipients: Sequence[str], content: bytes) -> list[RecipientResult]:
        """One transaction; a result per recipient. Raises DeliveryError if the session broke."""
        envelope = self._envelope(sender, recipients, content)
        self._client.deadline = _Deadline.start("transaction", self._client.transaction_timeout)
        try:
            return self._transaction(envelope, recipients, content)
        except (smtplib.SMTPException, OSError) as e:
            raise _connection_error(self.info.target, e) from e

    def _envelope(self, sender: str, recipients: Sequence[str], content: bytes) -> list[bytes]:
        """MAIL FROM and one RCPT TO per recipient, encoded, with the parameters the message needs."""
        parameters = ""
        if self._client.has_extn("size"):
            parameters += f" SIZE={len(content)}"
        if not content.isascii():
            if not self._client.has_extn("8bitmime"):
                # RFC 6152: 8-bit data only to servers that announce 8BITMIME.
                raise DeliveryError(
                    "message has 8-bit data, server does not support 8BITMIME", permanent=True, status="5.6.3"
                )
            parameters += " BODY=8BITMIME"
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        if utf8:
            if not self._client.has_extn("smtputf8"):
                raise DeliveryError(
                    "UTF-8 address, server does not support SMTPUTF8", permanent=True, status="5.6.7"
                )
            parameters += " SMTPUTF8"
        commands = [f"MAIL FROM:<{sender}>{parameters}", *(f"RCPT TO:<{r}>" for r in recipients)]
        return [f"{command}\r\n".encode("utf-8" if utf8 else "ascii") for command in commands]

    def _transaction(
        self, envelope: list[bytes], recipients: Sequence[str], content: bytes
    ) -> list[RecipientResult]:
        client = self._client
        if client.has_extn("pipelining"):
            client.send(b"".join(envelope) + b"DATA\r\n")
            replies = [_reply(*client.getreply()) for _ in envelope]
            data: Reply | None = _reply(*client.getreply())
        else:
            replies = []
            for command in envelope:
                client.send(command)
                replies.append(_reply(*client.getreply()))
            data = None
        mail, rcpts = replies[0], replies[1:]
        if not _ok(mail):
            rcpts = [mail] * len(recipients)
        accepted = [_ok(r) for r in rcpts]
        if data is None and any(accepted):
            client.send(b"DATA\r\n")
            data = _reply(*client.getreply())
        if data is not None and data.code == 354:
            # With nothing accepted, the pipelined DATA still needs its (empty) end (RFC 2920 §3.1).
            client.send(_dot_stuffed(content) if any(accepted) else b".\r\n")
            data = _reply(*client.getreply())
        if not (data is not None and _ok(data)):
            self._reset()
            # Recipients that were accepted fail with the DATA reply.
            rcpts = [data if ok and data is not None else r for r, ok in zip(rcpts, accepted, strict=True)]
            return [RecipientResult(r, reply) for r, reply in zip(recipients, rcpts, strict=True)]
        return [
            RecipientResult(r, data if ok else reply)
            for r, reply, ok in zip(recipients, rcpts, accepted, strict=True)
        ]

    def _reset(self) -> None:
        """RSET after a failed transaction, so the next one starts clean (a 421 has closed it anyway)."""
        if self._client.sock is not None:
            self._client.rset()

    def peer_chain(self) -> list[bytes]:
        """The certificate chain the server presented (DER, leaf first); empty without TLS."""
        sock = self._client.sock
        return peer_chain(sock) if isinstance(sock, ssl.SSLSocket) else []

    def close(self) -> None:
        """QUIT politely; the connection is gone either way."""
        # Within what is left of the last step, so a step and the QUIT after it fit the lease.
        quit_by = min(self._client.deadline.at, time.monotonic() + QUIT_WAIT)
        self._client.deadline = _Deadline("QUIT", QUIT_WAIT, quit_by)
        try:
            self._client.quit()
        except (smtplib.SMTPException, OSError):
            self._client.close()


def _ok(reply: Reply) -> bool:
    return 200 <= reply.code <= 299


def _dot_stuffed(content: bytes) -> bytes:
    """The message as DATA sends it: a leading dot doubled, CRLF at the end, then the lone dot."""
    stuffed = _LEADING_DOT.sub(b"..", content)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def open_session(target: Target, tls: TLSSettings, options: ClientOptions) -> Session:
    """Connect and negotiate TLS per `tls`, falling back as the module doc describes."""
    deadline = _Deadline.start("opening the session", options.transaction_timeout)
    try:
        return _establish(target, tls, options, _Mode.AS_SET, deadline)
    except TLSError as e:
        fallback = _fallback(tls, e)
        if fallback is None:
            raise
        failure = e.failure
    try:
        session = _establish(target, tls, options, fallback, deadline)
    except TLSError as e:
        plain = _fallback(tls, e)
        if plain is None:
            raise
        session = _establish(target, tls, options, _Mode.PLAIN, deadline)
    session.info.tls_failure = failure
    return session


def _fallback(tls: TLSSettings, error: TLSError) -> _Mode | None:
    """The next way to try the host after a TLS failure, or None when the attempt must fail."""
    if error.verification and (tls.ignore_verification_errors or not tls.starttls_required):
        return _Mode.UNVERIFIED
    return None if tls.starttls_required else _Mode.PLAIN


def _establish(
    target: Target, tls: TLSSettings, options: ClientOptions, mode: _Mode, deadline: _Deadline
) -> Session:
    try:
        client = _Client(target, tls.server_name or target.host, options, deadline)
    except smtplib.SMTPConnectError as e:
        raise _reply(e.smtp_code, e.smtp_error).error(f"greeting from {target.host}") from e
    except (smtplib.SMTPException, OSError) as e:
        raise _connection_error(target, e) from e
    assert client.sock is not None  # smtplib.SMTP connects in its constructor or raises
    info = SessionInfo(target, sending_ip=client.sock.getsockname()[0])
    try:
        _ehlo(client, info)
        if mode is not _Mode.PLAIN:
            _starttls(client, tls, options, info, verify=mode is _Mode.AS_SET)
        return Session(client, info)
    except DeliveryError as e:
        e.session_info = info
        client.close()
        raise
    except BaseException:
        client.close()
        raise


def _ehlo(client: _Client, info: SessionInfo) -> None:
    try:
        code, text = client.ehlo()
        if not 200 <= code <= 299:
            code, text = client.helo()
    except (smtplib.SMTPException, OSError) as e:
        raise _connection_error(info.target, e) from e
    if not 200 <= code <= 299:
        raise _reply(code, text).error(f"EHLO to {info.target.host}")
    info.receiving_helo = _first_word(text)


def _starttls(
    client: _Client, tls: TLSSettings, options: ClientOptions, info: SessionInfo, verify: bool
) -> None:
    if not client.has_extn("starttls"):
        _tls_missing(tls, info, TLSFailure(tls.starttls_missing_result, "STARTTLS not offered by the server"))
        return
    context = _tls_context(verify and tls.verify_pkix, options.ca_bundle)
    try:
        client.starttls(context=context)
    except smtplib.SMTPResponseException as e:
        reply = _reply(e.smtp_code, e.smtp_error)
        failure = TLSFailure(tls.starttls_missing_result, f"STARTTLS refused: {reply.code} {reply.text}")
        _tls_missing(tls, info, failure)
        return
    except ssl.SSLCertVerificationError as e:
        raise TLSError(certificate_failure(e), verification=True) from e
    except (ssl.SSLError, OSError, smtplib.SMTPServerDisconnected) as e:
        failure = TLSFailure(VALIDATION_FAILURE, f"TLS handshake: {_ssl_reason(e)}")
        raise TLSError(failure, verification=False) from e
    sslsock = client.sock
    assert isinstance(sslsock, ssl.SSLSocket)
    info.tls_version = sslsock.version()
    if verify and tls.verify_dane:
        _check_dane(sslsock, tls, info)
    try:
        # The first read after the handshake: TLS 1.3 servers report certificate problems here.
        client.ehlo()
    except (smtplib.SMTPException, OSError) as e:
        failure = TLSFailure(VALIDATION_FAILURE, f"TLS error after the handshake: {_ssl_reason(e)}")
        raise TLSError(failure, verification=False) from e


def _check_dane(sslsock: ssl.SSLSocket, tls: TLSSettings, info: SessionInfo) -> None:
    """Verify the presented chain against the TLSA records (RFC 7672 §3); PKIX plays no part."""
    check = check_chain(peer_chain(sslsock), tls.tlsa_records, tls.dane_hostnames)
    if check.ok:
        return
    failure = TLSFailure(check.result_type, check.detail)
    if not tls.ignore_verification_errors:
        raise TLSError(failure, verification=True)
    info.tls_failure = failure


def _tls_missing(tls: TLSSettings, info: SessionInfo, failure: TLSFailure) -> None:
    """No TLS on this connection: fatal when STARTTLS is required, else recorded and the session goes on."""
    if tls.starttls_required:
        raise TLSError(failure, verification=False, missing=True)
    info.tls_failure = failure


@lru_cache(maxsize=8)
def _tls_context(verify_pkix: bool, ca_bundle: Path | None) -> ssl.SSLContext:
    """Contexts are reusable and loading CAs is slow, so one per (verification, bundle)."""
    if verify_pkix:
        context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def peer_chain(sslsock: ssl.SSLSocket) -> list[bytes]:
    """The chain the peer presented (DER, leaf first), whether or not it was verified."""
    # Public as SSLSocket.get_unverified_chain() from Python 3.13; the C object has it on 3.11. The
    # stubs list neither that private `_sslobj` nor the C module `ssl._ssl`, hence the two ignores.
    chain = sslsock._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in chain or []]  # type: ignore[attr-defined]


def certificate_failure(error: ssl.SSLCertVerificationError) -> TLSFailure:
    result = _VERIFY_CODE_RESULTS.get(error.verify_code, VALIDATION_FAILURE)
    return TLSFailure(result, f"{error.verify_message} (X509 error {error.verify_code})")


def _ssl_reason(error: BaseException) -> str:
    """OpenSSL's reason (e.g. "tlsv13 alert certificate required"), also when smtplib wrapped it."""
    cause = error
    if isinstance(error, smtplib.SMTPServerDisconnected) and error.__context__ is not None:
        cause = error.__context__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return cause.reason.lower().replace("_", " ")
    return str(cause) or type(cause).__name__


def _connection_error(target: Target, error: BaseException) -> DeliveryError:
    """Refused, timed out, reset, closed: transient (RFC 3463 4.4.1 no answer, 4.4.2 bad connection)."""
    refused = isinstance(error, ConnectionRefusedError | TimeoutError | socket.timeout)
    return DeliveryError(
        f"{target.host} [{target.ip}]:{target.port}: {error or type(error).__name__}",
        permanent=False,
        status="4.4.1" if refused else "4.4.2",
    )


_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _reply(code: int, text: bytes | str) -> Reply:
    return Reply(code, _printable(text, REPLY_TEXT_MAX))


def _printable(text: bytes | str, limit: int) -> str:
    """Remote text as kept for DSN fields, logs and the database: printable ASCII on one line (each
    run of whitespace and control characters one space, other characters "?"), at most `limit`."""
    value = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    value = " ".join(_NON_ASCII.sub("?", _CONTROLS.sub(" ", value)).split())
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _first_word(text: bytes) -> str | None:
    words = _printable(text, REPLY_TEXT_MAX).split()
    return words[0][:HELO_NAME_MAX] if words else None
