"""Reading the message data after DATA's 354 (RFC 5321 4.1.1.4, 4.5.2).

aiosmtpd reads the data a line at a time; this reads it in large pieces up to each ".\\r\\n" and checks
the limits on the whole, which costs a fraction as much for ordinary mail. The data ends only at
CRLF "." CRLF (a "." line directly after DATA's CRLF included); what follows stays in the stream for
the next (pipelined) command. Data over the size limit is read to its end and dropped as it arrives.

The bytes held are charged to the process's MemoryBudget as they arrive: sessions that together
would hold more than the budget get 452 4.3.1 (their data is dropped as it arrives, like data over
the size limit) instead of the process growing until the kernel kills it. Each piece is unstuffed
as it comes (no copy when it has no stuffed dot) and appended to a BytesIO, whose getvalue() hands
over its buffer without a copy: the message is never held twice here (joining a list of pieces
would, for a moment).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field

END_OF_LINE_DOT = b".\r\n"
OVER_BUDGET = "452 4.3.1 Insufficient system storage: too much mail in progress; try again later"


class MemoryBudget:
    """Bytes of message data held in memory at once by one process's sessions (one event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit

    def take(self, size: int) -> bool:
        """Charge `size` bytes, or return False (and charge nothing) if that would exceed the budget."""
        if not self.fits(size):
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


@dataclass(frozen=True)
class MessageData:
    content: bytes  # dot-unstuffed (RFC 5321 4.5.2); empty if `problem` is set
    problem: str | None = None  # the reply refusing the data
    held: int = 0  # bytes charged to the budget for `content`; give them back when done with it


@dataclass
class _Progress:
    """What has been read so far: sizes, line lengths, the data kept and the bytes charged for it."""

    budget: MemoryBudget
    max_size: int
    size: int = 0
    longest: int = 0  # longest line so far (without CRLF)
    open_line: int = 0  # length of the unfinished line
    held: int = 0
    over_budget: bool = False
    kept: io.BytesIO = field(default_factory=io.BytesIO)

    def add(self, piece: bytes, at_line_start: bool) -> None:
        self.size += len(piece)
        lines = piece.split(b"\r\n")
        self.open_line += len(lines[0])
        if len(lines) > 1:
            self.longest = max(self.longest, self.open_line, *map(len, lines[1:-1]))
            self.open_line = len(lines[-1])
        if self.size > self.max_size or self.over_budget:
            self.drop()
        elif self.budget.take(len(piece)):
            self.held += len(piece)
            self.kept.write(_unstuff(piece, at_line_start))
        else:
            self.over_budget = True
            self.drop()

    def drop(self) -> None:
        """Give back what is held and keep nothing more (the rest is read and dropped)."""
        self.kept = io.BytesIO()
        self.budget.give_back(self.held)
        self.held = 0


async def read_message_data(
    reader: asyncio.StreamReader,
    *,
    max_size: int,
    max_line_length: int,
    budget: MemoryBudget | None = None,
) -> MessageData:
    """Read up to the end-of-data marker. Raises ConnectionResetError if the client goes away."""
    progress = _Progress(budget or MemoryBudget(max_size), max_size)
    try:
        await _read_pieces(reader, progress)
    except BaseException:
        progress.drop()
        raise
    if progress.size > max_size:
        return MessageData(b"", f"552 5.3.4 Message too big: the limit is {max_size} octets")
    if max(progress.longest, progress.open_line) + 2 > max_line_length:  # counting the CRLF
        progress.drop()
        return MessageData(b"", f"500 5.5.2 Line too long: the limit is {max_line_length} octets")
    if progress.over_budget:
        return MessageData(b"", OVER_BUDGET)
    return MessageData(progress.kept.getvalue(), held=progress.held)


async def _read_pieces(reader: asyncio.StreamReader, progress: _Progress) -> None:
    tail = b"\r\n"  # the CRLF that ended the DATA command: a "." line right after it ends the data
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
        progress.add(piece, at_line_start=tail == b"\r\n")
        tail = piece[-2:] if len(piece) >= 2 else (tail + piece)[-2:]
        if ends_data:
            return


def _unstuff(piece: bytes, at_line_start: bool) -> bytes:
    """Remove the leading "." the client added to each line that starts with one (RFC 5321 4.5.2).
    A piece never ends inside a CRLF, so a stuffed dot is never split from the CRLF before it."""
    if at_line_start and piece.startswith(b"."):
        piece = piece[1:]
    return piece.replace(b"\r\n.", b"\r\n")  # the same object when there is nothing to replace


def _preceded_by_crlf(tail: bytes, piece: bytes) -> bool:
    """Whether the ".\r\n" ending `piece` starts a line: a CRLF (or DATA's own) comes right before it."""
    if len(piece) >= 5:
        return piece[-5:-3] == b"\r\n"
    return (tail + piece[:-3]).endswith(b"\r\n")
