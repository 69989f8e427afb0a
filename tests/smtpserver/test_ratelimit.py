"""The delivery rate limits' counting (app/smtpserver/ratelimit.py, SPEC R3.1), with a fixed clock:
windows that roll, each range with its own limits, octets, IPv4-mapped addresses, counts shared by
worker rows and across fork(), and memory that stays the same however many clients there are."""

from __future__ import annotations

import ipaddress
import os
import random
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import RateLimits
from app.smtpserver.ratelimit import CELL_FIELDS, CELLS, RateCounts, RateLimiter

DAY = 86400
MIDNIGHT = 20_000 * DAY  # a UTC midnight (2024-10-04)
OFF = {"messages_per_minute": 0, "messages_per_day": 0, "bytes_per_minute": 0, "bytes_per_day": 0}
RANGE_NAMES = ("ipv4_32", "ipv4_26", "ipv4_21", "ipv6_64", "ipv6_48", "ipv6_32")


def too_fast(range_label: str, limit: str) -> str:
    return f"452 4.3.2 Rate limit reached for your address range ({range_label}): {limit}; try again later"


class Clock:
    def __init__(self, now: float = MIDNIGHT + 30) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, counts: RateCounts | None = None, **ranges: dict[str, int]) -> RateLimiter:
    """Only the given limits, every other one off."""
    tables: dict[str, Any] = {name: {**OFF, **ranges.get(name, {})} for name in RANGE_NAMES}
    return RateLimiter(RateLimits.model_validate(tables), counts or RateCounts(), clock)


def deliver(rates: RateLimiter, ip: str, times: int = 1, size: int = 100) -> None:
    for _ in range(times):
        assert rates.refusal(ip) is None and rates.refusal(ip, size) is None
        rates.count(ip, size)


def test_a_minute_limit_holds_until_the_minute_is_over() -> None:
    clock = Clock()
    rates = limiter(clock, ipv4_32={"messages_per_minute": 3})
    deliver(rates, "192.0.2.1", 3)
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "3 messages per minute")
    clock.now = MIDNIGHT + 59.9
    assert rates.refusal("192.0.2.1") is not None
    clock.now = MIDNIGHT + 60
    deliver(rates, "192.0.2.1", 3)
    assert rates.refusal("192.0.2.1") is not None


def test_a_day_limit_holds_until_the_utc_day_is_over() -> None:
    clock = Clock()
    rates = limiter(clock, ipv4_32={"messages_per_day": 4, "messages_per_minute": 10})
    for hour in range(4):
        clock.now = MIDNIGHT + 3600 * hour
        deliver(rates, "192.0.2.1")
    clock.now = MIDNIGHT + DAY - 1
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "4 messages per day")
    clock.now = MIDNIGHT + DAY
    deliver(rates, "192.0.2.1", 4)
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "4 messages per day")


def test_each_ipv4_range_has_its_own_limits() -> None:
    rates = limiter(
        Clock(),
        ipv4_32={"messages_per_minute": 2},
        ipv4_26={"messages_per_minute": 5},
        ipv4_21={"messages_per_minute": 8},
    )
    deliver(rates, "192.0.2.1", 2)
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "2 messages per minute")
    for ip in ("192.0.2.2", "192.0.2.3", "192.0.2.63"):
        deliver(rates, ip)
    assert rates.refusal("192.0.2.4") == too_fast("IPv4 /26", "5 messages per minute")
    deliver(rates, "192.0.2.64", 2)  # another /26 of the same /21
    deliver(rates, "192.0.7.255")
    assert rates.refusal("192.0.2.70") == too_fast("IPv4 /21", "8 messages per minute")
    assert rates.refusal("192.0.0.1") == too_fast("IPv4 /21", "8 messages per minute")
    assert rates.refusal("192.0.8.1") is None, "another /21"


def test_each_ipv6_range_has_its_own_limits() -> None:
    rates = limiter(
        Clock(),
        ipv6_64={"messages_per_minute": 2},
        ipv6_48={"messages_per_minute": 3},
        ipv6_32={"messages_per_minute": 4},
    )
    deliver(rates, "2001:db8:1:2::1")
    deliver(rates, "2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert rates.refusal("2001:db8:1:2::9") == too_fast("IPv6 /64", "2 messages per minute")
    deliver(rates, "2001:db8:1:3::1")
    assert rates.refusal("2001:db8:1:4::1") == too_fast("IPv6 /48", "3 messages per minute")
    deliver(rates, "2001:db8:2::1")
    assert rates.refusal("2001:db8:3::1") == too_fast("IPv6 /32", "4 messages per minute")
    assert rates.refusal("2001:db9::1") is None
    assert rates.refusal("192.0.2.1") is None, "IPv4 ranges are counted apart"


def test_an_ipv4_mapped_ipv6_address_counts_as_the_ipv4_address() -> None:
    rates = limiter(Clock(), ipv4_32={"messages_per_minute": 2}, ipv6_32={"messages_per_minute": 1})
    deliver(rates, "::ffff:192.0.2.1")
    deliver(rates, "192.0.2.1")
    assert rates.refusal("::ffff:192.0.2.1") == too_fast("IPv4 /32", "2 messages per minute")
    assert rates.refusal("192.0.2.1") is not None


def test_octets_count_the_message_size() -> None:
    clock = Clock()
    rates = limiter(clock, ipv4_32={"bytes_per_minute": 1000, "bytes_per_day": 5000})
    deliver(rates, "192.0.2.1", size=600)
    assert rates.refusal("192.0.2.1", 400) is None
    assert rates.refusal("192.0.2.1", 401) == too_fast("IPv4 /32", "1000 octets per minute")
    assert rates.refusal("192.0.2.1") is None, "at MAIL FROM there is room for a small message"
    rates.count("192.0.2.1", 400)
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "1000 octets per minute")
    for _ in range(4):  # four more minutes
        clock.now += 60
        deliver(rates, "192.0.2.1", size=1000)
    clock.now += 60
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "5000 octets per day")


def test_a_message_larger_than_a_byte_limit_passes_in_an_empty_window() -> None:
    rates = limiter(Clock(), ipv4_32={"bytes_per_minute": 1000})
    deliver(rates, "192.0.2.1", size=5000)
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "1000 octets per minute")


def test_zero_exempt_networks_and_non_ip_peers_are_not_limited() -> None:
    counts = RateCounts()
    rates = RateLimiter(RateLimits.model_validate({"ipv4_32": OFF}), counts, Clock())
    deliver(rates, "192.0.2.1", 299)  # the /32's limit is off, the /26's is 300 a minute
    deliver(rates, "192.0.2.2")
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /26", "300 messages per minute")
    deliver(rates, "127.0.0.1", 1000)
    deliver(rates, "::1", 1000)
    deliver(rates, "/run/postwarden.sock", 1000)
    strict = RateLimiter(RateLimits(exempt_networks=[]), RateCounts(), Clock())
    deliver(strict, "127.0.0.1", 100)
    assert strict.refusal("127.0.0.1") == too_fast("IPv4 /32", "100 messages per minute")


def test_counts_are_shared_by_worker_rows_and_across_fork() -> None:
    counts = RateCounts(workers=3)
    rates = limiter(Clock(), counts, ipv4_32={"messages_per_minute": 4})
    deliver(rates, "192.0.2.1")
    counts.slot = 1  # another worker, same memory
    deliver(rates, "192.0.2.1")
    pid = os.fork()
    if pid == 0:  # a forked worker writes its own row
        counts.slot = 2
        rates.count("192.0.2.1", 100)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    deliver(rates, "192.0.2.1")
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "4 messages per minute")


def test_memory_stays_the_same_with_many_distinct_clients() -> None:
    counts = RateCounts(workers=2)
    size = counts.size
    assert size == 2 * CELLS * CELL_FIELDS * 8
    per_minute = {"messages_per_minute": 100}
    rates = limiter(Clock(), counts, ipv4_32=per_minute, ipv6_64=per_minute)
    sample = random.Random(11)
    for _ in range(10_000):  # an attacker with many addresses, one message each (and 3 ranges each)
        rates.count(str(ipaddress.IPv4Address(sample.getrandbits(32))), 1000)
        rates.count(str(ipaddress.IPv6Address(sample.getrandbits(128))), 1000)
    assert counts.size == size
    # Other clients share cells with the attacker's ranges, which adds to their counts (never takes
    # away): with the default table, by far less than a sensible limit.
    deliver(rates, "198.51.100.7", 90)
    deliver(rates, "2001:db8:77::1", 90)
    deliver(rates, "198.51.100.8", 90)
    delivered = 90
    while rates.refusal("198.51.100.8") is None:
        rates.count("198.51.100.8", 100)
        delivered += 1
    assert delivered <= 100, "a limit is never missed"
    assert rates.refusal("198.51.100.8") == too_fast("IPv4 /32", "100 messages per minute")


def test_ranges_sharing_cells_only_make_limits_stricter() -> None:
    rates = limiter(Clock(), RateCounts(cells=1), ipv4_32={"messages_per_minute": 6})
    deliver(rates, "192.0.2.1", 2)  # its /32, /26 and /21 all count in the one cell: 6
    assert rates.refusal("192.0.2.1") == too_fast("IPv4 /32", "6 messages per minute")
    assert rates.refusal("198.51.100.1") == too_fast("IPv4 /32", "6 messages per minute")


def test_config_defaults_scale_with_the_range_and_tables_change_only_what_they_name() -> None:
    limits = RateLimits.model_validate({"ipv4_26": {"messages_per_minute": 5}})
    assert limits.ipv4_32.messages_per_minute == limits.ipv6_64.messages_per_minute == 100
    assert (limits.ipv4_26.messages_per_minute, limits.ipv4_26.messages_per_day) == (5, 30_000)
    assert limits.ipv4_21.bytes_per_day == limits.ipv6_32.bytes_per_day == 9 * 5 * 1024**3
    with pytest.raises(ValidationError, match=r"ipv4_26\.messages_per_mnute"):
        RateLimits.model_validate({"ipv4_26": {"messages_per_mnute": 5}})
    with pytest.raises(ValidationError, match=r"ipv6_48\.bytes_per_day"):
        RateLimits.model_validate({"ipv6_48": {"bytes_per_day": -1}})
