"""Delivery rate limits on the inbound (MX) listener, per client address range (SPEC R3.1).

Each message a client delivers counts, with its size, against the client's IPv4 /32, /26 and /21, or
its IPv6 /64, /48 and /32 (an IPv4-mapped IPv6 address counts as the IPv4 address); each range has
limits of its own (`[ratelimits]`, app/config.py) on messages and octets per minute and per UTC day.
The windows are fixed: the minute and the UTC day of the wall clock, the same in every process. Over a
limit the client gets TOO_FAST (452 4.3.2, naming the range and the limit; the sender retries later):
at MAIL FROM when the range has no room for one more message, and after DATA when this message's size
would take it over a byte limit. A message larger than a byte limit still passes in a window that has
counted nothing yet, so no limit turns a message away for good. Submission is not limited here.

What counts: a message accepted (a 2xx reply after DATA, so stored); not one we refused, also not a
reject kept in Rejects (a sender retries those, and each retry would count again). A message counts
once, whatever its number of recipients. The check comes before and the count after the message is
stored, so a range can go past a limit by the transactions it has in flight at that moment.

The counts live in anonymous shared memory mapped before the supervisor forks its workers (like the
session counts of admission.py), so the limits hold across workers. Memory is fixed whatever the
number of clients: each worker has a row of CELLS cells that only it writes, and a range's key (its
prefix and network, hashed with a key chosen at start, so no one can pick the cells of another's
range) selects two cells of the row. A message is added to both; a range's count is the smaller of
the two sums over the workers' rows (a count-min sketch). Keys sharing a cell only add to each other's
counts, so a limit is never missed, and it takes traffic in both cells to limit a range early. A cell
holds a window's number with its counts and starts again at zero when its window is over. There is
no lock: each worker writes only its own row, and a count another worker is just writing may be
missed by one message.
"""

from __future__ import annotations

import hashlib
import ipaddress
import mmap
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.config import RangeRateLimits, RateLimits
from app.ipaddr import client_address

CELLS = 65536  # per worker; 48 octets each
WINDOWS = (("minute", 60), ("day", 86400))  # POSIX time has 86400 s a day: day numbers are UTC days
CELL_FIELDS = 3 * len(WINDOWS)  # per window: its number, messages, octets
TOO_FAST = "452 4.3.2 Rate limit reached for your address range ({range}): {limit}; try again later"
KNOWN_KEYS = 4096  # client addresses whose range keys a limiter keeps (then it starts over)


@dataclass(frozen=True)
class Range:
    setting: str  # its limits in RateLimits
    version: int
    prefix: int

    @property
    def label(self) -> str:
        return f"IPv{self.version} /{self.prefix}"


RANGES = tuple(Range(f"ipv{v}_{p}", v, p) for v, p in ((4, 32), (4, 26), (4, 21), (6, 64), (6, 48), (6, 32)))
# Per window of WINDOWS: a range's message and octet limits in it (0: no limit).
WindowLimits = tuple[tuple[int, int], ...]
# Per window of WINDOWS: messages and octets counted in it.
Usage = list[tuple[int, int]]


def window_limits(limits: RangeRateLimits) -> WindowLimits:
    return (
        (limits.messages_per_minute, limits.bytes_per_minute),
        (limits.messages_per_day, limits.bytes_per_day),
    )


class RateCounts:
    """Messages and octets per range key and window, per worker row, in memory shared across fork()."""

    def __init__(self, workers: int = 1, cells: int = CELLS) -> None:
        self.cells = cells
        self._stride = cells * CELL_FIELDS
        # mmap(-1, ...) is MAP_SHARED | MAP_ANONYMOUS: forked children see and change the same pages.
        self._memory = mmap.mmap(-1, workers * self._stride * 8)
        self._values = memoryview(self._memory).cast("q")
        self._hash_key = secrets.token_bytes(16)
        self.slot = 0  # the row this process writes (set in a worker after fork)

    @property
    def size(self) -> int:
        """Octets of shared memory: fixed when made."""
        return len(self._memory)

    def _cells(self, key: bytes) -> set[int]:
        """The offsets in a row of the key's two cells (one if both hashes agree)."""
        digest = hashlib.blake2b(key, digest_size=8, key=self._hash_key).digest()
        return {int.from_bytes(half) % self.cells * CELL_FIELDS for half in (digest[:4], digest[4:])}

    def usage(self, key: bytes, windows: list[int]) -> Usage:
        """Per window (by its current number): the least over the key's cells of the counts in all rows."""
        per_cell = [self._cell_usage(cell, windows) for cell in self._cells(key)]
        return [min(counts) for counts in zip(*per_cell, strict=True)]

    def _cell_usage(self, cell: int, windows: list[int]) -> Usage:
        usage = [(0, 0)] * len(windows)
        for row in range(0, len(self._values), self._stride):
            values = self._values[row + cell : row + cell + CELL_FIELDS].tolist()
            for w, number in enumerate(windows):
                if values[3 * w] == number:
                    messages, octets = usage[w]
                    usage[w] = (messages + values[3 * w + 1], octets + values[3 * w + 2])
        return usage

    def add(self, key: bytes, windows: list[int], size: int) -> None:
        """Count one message of `size` octets for the key in this process's row."""
        row = self.slot * self._stride
        for cell in self._cells(key):
            for w, number in enumerate(windows):
                at = row + cell + 3 * w
                if self._values[at] != number:  # the window this cell counted is over: start again
                    self._values[at + 1] = self._values[at + 2] = 0
                    self._values[at] = number
                self._values[at + 1] += 1
                self._values[at + 2] += size


class RateLimiter:
    """Checks and counts the deliveries of client addresses against the configured limits."""

    def __init__(
        self, limits: RateLimits, counts: RateCounts, clock: Callable[[], float] = time.time
    ) -> None:
        self.counts = counts
        self.clock = clock
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in limits.exempt_networks]
        self._known_keys: dict[str, list[tuple[Range, bytes]]] = {}  # _keys's, by client address
        self.limits = {r: window_limits(getattr(limits, r.setting)) for r in RANGES}

    def refusal(self, ip: str, size: int = 0) -> str | None:
        """The 452 reply if one more message of `size` octets (0: not known yet, at MAIL FROM) from
        `ip` would go over a limit of one of its ranges, else None."""
        windows = self._windows()
        for range_, key in self._keys(ip):
            limit = over_limit(self.limits[range_], self.counts.usage(key, windows), size)
            if limit is not None:
                return TOO_FAST.format(range=range_.label, limit=limit)
        return None

    def count(self, ip: str, size: int) -> None:
        """Count a message of `size` octets accepted from `ip` in each of its ranges."""
        windows = self._windows()
        for _range, key in self._keys(ip):
            self.counts.add(key, windows, size)

    def _windows(self) -> list[int]:
        now = self.clock()
        return [int(now // seconds) for _name, seconds in WINDOWS]

    def _keys(self, ip: str) -> list[tuple[Range, bytes]]:
        """The ranges of a client address with their keys; none for an exempt address or a peer that
        is not an IP address (a Unix socket). Kept per address: asked three times per message."""
        keys = self._known_keys.get(ip)
        if keys is None:
            if len(self._known_keys) >= KNOWN_KEYS:
                self._known_keys.clear()
            keys = self._known_keys[ip] = self._ranges_of(ip)
        return keys

    def _ranges_of(self, ip: str) -> list[tuple[Range, bytes]]:
        address = client_address(ip)
        if address is None:
            return []
        if any(address in network for network in self.exempt):
            return []
        return [(r, range_key(address, r)) for r in RANGES if r.version == address.version]


def range_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address, range_: Range) -> bytes:
    """The key of the address's network of that range: version, prefix length, network address."""
    network = ipaddress.ip_network(f"{address}/{range_.prefix}", strict=False)
    return bytes((range_.version, range_.prefix)) + network.network_address.packed


def over_limit(limits: WindowLimits, usage: Usage, size: int) -> str | None:
    """The limit ("300 messages per minute") one more message of `size` octets would go over, or None.
    The octets of a message count only when the window has counted some already (see the module doc)."""
    for (window, _seconds), (max_messages, max_octets), (messages, octets) in zip(
        WINDOWS, limits, usage, strict=True
    ):
        if max_messages and messages >= max_messages:
            return f"{max_messages} messages per {window}"
        if max_octets and octets and octets + max(size, 1) > max_octets:
            return f"{max_octets} octets per {window}"
    return None
