"""Keeping a delivery run's lease on its queue rows while the run works (issue 9).

The lease is short (`delivery.lease_seconds`, 30 s by default), so the rows of a worker that was
killed are free again for the sweep within that time. A run may wait much longer than that in one
step (a slow server: up to `transaction_timeout` per step), so a heartbeat thread renews the lease
every third of it, on its own database connection, whatever the run's thread is waiting for.

A run that is stuck rather than slow must not keep its rows forever: every step is bounded, so the
heartbeat stops renewing once the current step has gone on longer than any step can (`stall_after`),
and the lease then lapses as if the worker had died.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from types import TracebackType

from app.db import engine_for
from app.queue import outgoing

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews the lease of the rows `owner` holds, from its own thread, until stopped."""

    def __init__(self, url: str, owner: str, lease: timedelta, stall_after: float) -> None:
        self._url = url
        self._owner = owner
        self._lease = lease
        self._stall_after = stall_after
        self._step_started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="queue-lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        # A renewal stuck on the database must not hold the run: the thread is a daemon, and its
        # rows' leases simply run out.
        self._thread.join(timeout=self._lease.total_seconds())

    def step(self) -> None:
        """The run starts a step (a connection, a transaction, a lookup): it is alive."""
        self._step_started = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(self._lease.total_seconds() / 3):
            stalled = time.monotonic() - self._step_started
            if stalled > self._stall_after:
                log.error(
                    "queue lease %s: no progress for %.0f s, no longer renewed (the rows go to another run)",
                    self._owner,
                    stalled,
                )
                return
            self._renew()

    def _renew(self) -> None:
        try:
            with engine_for(self._url).begin() as connection:
                outgoing.renew_lease(connection, self._owner, self._lease)
        except Exception as e:  # the database may be back by the next beat; the lease has 2/3 left
            log.warning("queue lease %s not renewed: %s", self._owner, outgoing.database_error(e))
