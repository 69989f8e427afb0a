"""Report intervals (SPEC R2.2): whole hours dividing 24, aligned to UTC midnight.

RFC 9989 dropped the `ri` tag; a legacy RFC 7489 `ri` (seconds) is still honoured by rounding it up to
whole hours and then down to a divisor of 24, so every interval boundary falls on a UTC hour that
every day shares, and reports from many receivers cover the same periods (RFC 9990 2.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DEFAULT_INTERVAL_HOURS = 24
INTERVAL_HOURS = (1, 2, 3, 4, 6, 8, 12, 24)


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime  # exclusive: the first second of the next interval

    @property
    def hours(self) -> int:
        return int((self.end - self.start) / timedelta(hours=1))


def interval_hours(ri: int | None) -> int:
    """The interval in hours for a record's legacy `ri` in seconds (None or nonsense: 24)."""
    if ri is None or ri <= 0:
        return DEFAULT_INTERVAL_HOURS
    hours = math.ceil(ri / 3600)
    return max(h for h in INTERVAL_HOURS if h <= hours) if hours < 24 else 24


def interval_at(moment: datetime, hours: int) -> Interval:
    """The interval of `hours` length that contains `moment` (UTC-aligned)."""
    if hours not in INTERVAL_HOURS:
        raise ValueError(f"an interval of {hours} hours does not divide a day")
    utc = moment.astimezone(UTC)
    midnight = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight + timedelta(hours=utc.hour - utc.hour % hours)
    return Interval(start, start + timedelta(hours=hours))


def whole_hour(moment: datetime) -> datetime:
    """The UTC hour `moment` falls in: the run hour of the report job."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
