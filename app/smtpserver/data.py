"""Reading the message data after DATA's 354 (RFC 5321 4.1.1.4, 4.5.2).

aiosmtpd reads the data a line at a time; this reads it in large pieces up to each ".\\r\\n" and checks
the limits on the whole, which costs a fraction as much for ordinary mail. The data ends only at
CRLF "." CRLF (a "." line directly after DATA's CRLF included); what follows stays in the stream for
the next (pipelined) command. Data over the size limit is read to its end and dropped as it arrives.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

END_OF_LINE_DOT = b".\r\n"


@dataclass(frozen=True)
class MessageData:
    content: bytes  # dot-unstuffed (RFC 5321 4.5.2); empty if `problem` is set
    problem: str | None = None  # the reply refusing the data


async def read_message_data(
    reader: asyncio.StreamReader, *, max_size: int, max_line_length: int
) -> MessageData:
    """Read up to the end-of-data marker. Raises ConnectionResetError if the client goes away."""
    pieces: list[bytes] = []
    size = 0
    tail = b"\r\n"  # the CRLF that ended the DATA command: a "." line right after it ends the data
    longest = open_line = 0  # longest line so far (without CRLF); length of the unfinished one
    while True:
        try:
            piece = await reader.readuntil(END_OF_LINE_DOT)
            ends_data = _preceded_by_crlf(tail, piece)
        except asyncio.LimitOverrunError as e:
            # No ".\r\n" within the stream's limit: take what was scanned (never half a CRLF), go on.
            piece = await reader.read(e.consumed)
            if piece.endswith(b"\r"):
                piece += await reader.readexactly(1)
            ends_data = False
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("connection closed during DATA") from None
        if ends_data:
            piece = piece[: -len(END_OF_LINE_DOT)]
        size += len(piece)
        lines = piece.split(b"\r\n")
        open_line += len(lines[0])
        if len(lines) > 1:
            longest = max(longest, open_line, *map(len, lines[1:-1]))
            open_line = len(lines[-1])
        if size <= max_size:
            pieces.append(piece)
        elif pieces:
            pieces = []  # over the limit: drop what we hold, read on to the end
        tail = piece[-2:] if len(piece) >= 2 else (tail + piece)[-2:]
        if ends_data:
            break
    if size > max_size:
        return MessageData(b"", f"552 5.3.4 Message too big: the limit is {max_size} octets")
    if max(longest, open_line) + 2 > max_line_length:  # counting the CRLF
        return MessageData(b"", f"500 5.5.2 Line too long: the limit is {max_line_length} octets")
    return MessageData(_unstuff(b"".join(pieces)))


def _unstuff(content: bytes) -> bytes:
    """Remove the leading "." the client added to each line that starts with one (RFC 5321 4.5.2)."""
    if content.startswith(b"."):
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n")


def _preceded_by_crlf(tail: bytes, piece: bytes) -> bool:
    """Whether the ".\r\n" ending `piece` starts a line: a CRLF (or DATA's own) comes right before it."""
    if len(piece) >= 5:
        return piece[-5:-3] == b"\r\n"
    return (tail + piece[:-3]).endswith(b"\r\n")
