"""How many SMTP sessions may be open: in all, per client address, and within a process's open files.

`postwarden smtp` forks worker processes that accept from the same sockets, so the counts the caps
compare against are shared: SessionCounts lives in anonymous shared memory that the supervisor maps
before it forks. Each worker has a row of its own (its slot) that only it writes: its number of
sessions, and its number per address bucket (a keyed hash of the IPv4 address or IPv6 /64; two
addresses in one bucket share a cap, which only makes it stricter, and the per-start hash key keeps
an attacker from choosing a victim's bucket). The caps compare against the sum of the rows. There
is no lock: two workers admitting at the same instant may each miss the other's newest session, so
a cap can be passed by at most one session per worker. The supervisor zeroes the row of a worker
that died (its sessions died with it) before another worker takes the slot.

Each worker also keeps its own sessions below its open-file limit, with a quarter of the limit (and
room for one batch of connections being accepted) left for DNS sockets, message files and the
database: a worker out of file descriptors cannot even accept a connection to refuse it.
"""

from __future__ import annotations

import mmap
import resource

from app.config import Limits
from app.ipaddr import client_address
from app.smtpserver.acceptor import ACCEPT_BATCH

BUCKETS = 65536
TOO_MANY_SESSIONS = "421 4.7.0 Too many connections; try again later"
TOO_MANY_FROM_ADDRESS = "421 4.7.0 Too many connections from your address; try again later"
MIN_SPARE_FILES = 32


class SessionCounts:
    """Open sessions per worker slot, in total and per address bucket, shared across fork()."""

    def __init__(self, slots: int = 1, buckets: int = BUCKETS) -> None:
        self.buckets = buckets
        self._stride = buckets + 1  # a row: the slot's total, then one count per bucket
        # mmap(-1, ...) is MAP_SHARED | MAP_ANONYMOUS: forked children see and change the same pages.
        self._memory = mmap.mmap(-1, slots * self._stride * 4)
        self._counts = memoryview(self._memory).cast("i")
        self.slot = 0  # the row this process writes (set in a worker after fork)

    def bucket(self, ip: str) -> int:
        """The bucket of a client address: the IPv4 address, or the /64 of an IPv6 one."""
        address = client_address(ip)
        if address is None:  # not an IP (a Unix socket): one bucket for all such peers
            return 0
        key = address.packed if address.version == 4 else address.packed[:8]
        return hash(key) % self.buckets  # bytes hashing is keyed per interpreter start (SipHash)

    def total(self) -> int:
        return sum(self._counts[:: self._stride])

    def in_bucket(self, bucket: int) -> int:
        return sum(self._counts[1 + bucket :: self._stride])

    def own(self) -> int:
        return self._counts[self.slot * self._stride]

    def add(self, bucket: int, delta: int) -> None:
        row = self.slot * self._stride
        self._counts[row] += delta
        self._counts[row + 1 + bucket] += delta

    def clear(self, slot: int) -> None:
        """Forget every session of a slot (its worker is gone)."""
        start = slot * self._stride * 4
        self._memory[start : start + self._stride * 4] = bytes(self._stride * 4)


class SessionGate:
    """Admits the sessions of one process against the shared counts and its own open-file cap."""

    def __init__(self, limits: Limits, counts: SessionCounts, open_file_cap: int) -> None:
        self.max_sessions = limits.max_sessions
        self.max_per_address = limits.max_sessions_per_ip
        self.counts = counts
        self.open_file_cap = open_file_cap

    def admit(self, ip: str) -> int | str:
        """The client's bucket if the session may start (counted until `leave`), else the 421 reply."""
        bucket = self.counts.bucket(ip)
        if self.counts.own() >= self.open_file_cap or self.counts.total() >= self.max_sessions:
            return TOO_MANY_SESSIONS
        if self.counts.in_bucket(bucket) >= self.max_per_address:
            return TOO_MANY_FROM_ADDRESS
        self.counts.add(bucket, 1)
        return bucket

    def leave(self, bucket: int) -> None:
        self.counts.add(bucket, -1)


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (forked workers inherit it); return
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_file_session_cap() -> int:
    """Most sessions one process may hold with its open-file limit (see the module doc)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 2**31 - 1
    return max(1, soft - max(MIN_SPARE_FILES, soft // 4) - ACCEPT_BATCH)
