"""Reading one IMAP command off the connection: its lines and literals, every part bounded.

A line is at most `max_line` octets; a literal at most `max_literal` (an APPEND's, a message, the
store's message size limit); the whole command at most one literal plus `max_line` more. A synchronizing
literal `{n}` is only read after our `+` continuation, so one that is too large is refused before the
client sends it, and the session goes on. A non-synchronizing one `{n+}` (LITERAL+, RFC 7888) is sent
at once: one too large is refused and the connection closed, as its octets would be taken for commands.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.imap.parser import tag_of

_LITERAL_AT_END = re.compile(rb"\{([0-9]{1,10})(\+?)\}\Z")
_APPEND = re.compile(rb"[^ ]+ APPEND ", re.IGNORECASE)
# An over-long line is read to its end and dropped, up to this much; then the connection is closed.
MAX_DISCARD = 1024 * 1024


@dataclass(frozen=True)
class ReadLimits:
    max_line: int
    max_literal: int
    timeout: float  # seconds any one read may wait for the client
    max_append: int = 0  # the literal of an APPEND (a message): the store's message size limit

    def literal_limit(self, command: bytes) -> int:
        """The largest literal `command` (as read so far) may carry."""
        return max(self.max_literal, self.max_append) if _APPEND.match(command) else self.max_literal


class Rejected(Exception):
    """The command was refused before it was read whole: answer BAD (tagged when `tag` is known)
    with `text`; with `close`, then close the connection (its rest cannot be told from commands)."""

    def __init__(self, tag: str | None, text: str, *, close: bool = False) -> None:
        super().__init__(text)
        self.tag, self.text, self.close = tag, text, close


class Closed(Exception):
    """The client closed the connection, or sent nothing for `timeout` seconds."""


async def read_command(
    reader: asyncio.StreamReader, send: Callable[[bytes], Awaitable[None]], limits: ReadLimits
) -> bytes:
    """The next command: its lines joined by CRLF, each literal's octets after its announcement's
    CRLF, without the final CRLF (what app/imap/parser.py parses)."""
    command = bytearray()
    while True:
        line = await _line(reader, limits, command)
        command += line
        found = _LITERAL_AT_END.search(line)
        if found is None:
            return bytes(command)
        size, synchronizing = int(found.group(1)), not found.group(2)
        tag = tag_of(bytes(command))
        largest = limits.literal_limit(bytes(command))
        if size > largest or len(command) + size > largest + limits.max_line:
            text = f"literal too large (at most {largest} octets)"
            raise Rejected(tag, text, close=not synchronizing)
        if synchronizing:
            await send(b"+ Ready for literal data\r\n")
        command += b"\r\n" + await _timed(reader.readexactly(size), limits)


async def _line(reader: asyncio.StreamReader, limits: ReadLimits, command: bytearray) -> bytes:
    """One line without its end of line (CRLF, or a bare LF from a lax client)."""
    try:
        line = await _timed(reader.readuntil(b"\n"), limits)
    except asyncio.LimitOverrunError as e:
        head = await _timed(reader.readexactly(e.consumed), limits)
        await _discard_line(reader, limits)
        raise Rejected(
            tag_of(bytes(command) or head), f"line too long (at most {limits.max_line} octets)"
        ) from None
    if len(line) > limits.max_line + 2:
        raise Rejected(tag_of(bytes(command) or line), f"line too long (at most {limits.max_line} octets)")
    return line.removesuffix(b"\n").removesuffix(b"\r")


async def _discard_line(reader: asyncio.StreamReader, limits: ReadLimits) -> None:
    dropped = 0
    while dropped <= MAX_DISCARD:
        try:
            await _timed(reader.readuntil(b"\n"), limits)
            return
        except asyncio.LimitOverrunError as e:
            dropped += len(await _timed(reader.readexactly(e.consumed), limits))
    raise Rejected(None, "line too long", close=True)


async def _timed(read: Awaitable[bytes], limits: ReadLimits) -> bytes:
    try:
        async with asyncio.timeout(limits.timeout):  # not wait_for: that makes a task per read
            return await read
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        raise Closed() from None
