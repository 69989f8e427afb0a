"""Time bounds for properties about large inputs: a parser must finish well within a bound.

The bound is enforced with SIGALRM, so a parser that would run for hours (a backtracking regular
expression, a quadratic loop) is interrupted and the example fails, instead of hanging the run.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Large inputs are the size of the largest text a peer can hand these parsers: a TXT record over DNS
# (a TCP answer is at most 64 KiB) or an MTA-STS policy file (we read at most 64 KiB).
LARGE = 64 * 1024
# A linear parser takes milliseconds on LARGE input; a quadratic one, seconds to minutes. The bound is
# generous for a busy shared machine.
LARGE_INPUT_SECONDS = 2.0


class Hang(AssertionError):
    """An example ran past its time bound."""


@contextmanager
def finishes_within(seconds: float) -> Iterator[None]:
    """Fail (raise Hang) if the block runs longer than `seconds`; interrupt it if it runs on."""

    def interrupt(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.monotonic() - start
    if elapsed > seconds:
        raise Hang(f"took {elapsed:.2f} s, over the bound of {seconds} s")
