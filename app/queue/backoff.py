"""When to try a queued message again, and when its sender hears about the delay (SPEC R4.1)."""

from __future__ import annotations

from datetime import datetime, timedelta

# The wait after the n-th failed attempt: attempts happen at 0, then 7.5 min, 15 min, 30 min, 1 h,
# 2 h, 4 h, 8 h and 16 h after the previous one; further attempts (max_attempts above 9) wait 16 h.
RETRY_DELAYS = tuple(timedelta(minutes=m) for m in (7.5, 15, 30, 60, 120, 240, 480, 960))
# A delay DSN goes out after this many failed attempts (not for report messages).
DELAY_DSN_AFTER_ATTEMPTS = 5


def next_attempt_after(failed_attempts: int, now: datetime) -> datetime:
    """The time of the next attempt for a message that has failed `failed_attempts` times (>= 1)."""
    index = min(max(failed_attempts, 1), len(RETRY_DELAYS)) - 1
    return now + RETRY_DELAYS[index]


def wants_delay_dsn(failed_attempts: int, is_report: bool) -> bool:
    """True exactly once per message: after its 5th failed attempt, unless it is a report message."""
    return failed_attempts == DELAY_DSN_AFTER_ATTEMPTS and not is_report
