"""`postwarden smtp` as a process tree: one supervisor, several workers serving the same sockets.

Authenticating a message (DKIM above all) is CPU work in Python, so one event loop is one core. The
supervisor settles the store (recovery, account rows) and binds every listener, then forks workers
that serve the inherited sockets, each with its own event loop, store committer and resolver (the
kernel hands each connection to one of them). SQLite serialises their commits; group commit still
works within each worker. A worker that dies is replaced; the workers die with the supervisor
(Linux PR_SET_PDEATHSIG), so a killed supervisor leaves nothing running.

The session caps hold across workers: each worker counts its sessions in its own slot of memory
shared with the others (admission.py); the supervisor raises the open-file limit before forking and
clears a dead worker's slot before a new worker takes it. The delivery rate counts (ratelimit.py) are
shared the same way, but a dead worker's are kept: the messages it accepted still count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from app.config import Config
from app.db import engine_for
from app.metrics import process_ended
from app.process import die_with_parent
from app.smtpserver.admission import SessionCounts, open_file_session_cap, raise_open_file_limit
from app.smtpserver.handoff import Handoff
from app.smtpserver.ratelimit import RateCounts
from app.smtpserver.server import (
    BoundListener,
    SMTPService,
    bind_listeners,
    prepare_storage,
    quiet_aiosmtpd_logging,
    serve_worker,
)
from app.store.files import MessageStore

log = logging.getLogger("app.smtpserver")

SUPERVISE_INTERVAL = 0.2
RESTART_INTERVAL = 1.0
STOP_TIMEOUT = 30.0


def default_worker_count() -> int:
    """Half the CPUs: the machine also runs the evaluation publisher, Celery workers and the database,
    and on two cores a second SMTP worker costs more CPU per message than it gains (measured, again on
    2026-12-03 with tests/bench/inbound.py --workers 1|2: smtp-source at about the same rate, 4.7-5.0
    ms against 5.5-6.3 ms server CPU per message)."""
    return max(1, (os.cpu_count() or 1) // 2)


class Supervisor:
    def __init__(self, config: Config, workers: int) -> None:
        self.config = config
        self.count = workers
        self.workers: dict[int, int] = {}  # pid -> slot in the session counts
        self.missing: list[int] = []  # slots of workers that died, still to be replaced
        self.counts = SessionCounts(workers)
        self.rate_counts = RateCounts(workers)
        self.last_start = 0.0
        self.stopping = False
        self.stop_deadline = 0.0
        self.bound: list[BoundListener] = []
        self.handoff: Handoff | None = None
        self.on_worker_exit: Callable[[], None] | None = None
        self.tend: Callable[[], None] | None = None

    def prepare(self) -> None:
        """Settle the store and bind every listener (ListenerError if one cannot be bound)."""
        quiet_aiosmtpd_logging()
        self._raise_open_file_limit()
        prepare_storage(self.config, MessageStore.of(self.config))
        self.bound = bind_listeners(self.config)
        engine_for(self.config.resolved_database_url).dispose()  # no pooled connection crosses a fork

    def _raise_open_file_limit(self) -> None:
        limit = raise_open_file_limit()
        cap = open_file_session_cap()
        log.info("open-file limit %d: at most %d sessions per worker process", limit, cap)
        if cap * self.count < self.config.limits.max_sessions:
            log.warning(
                "limits.max_sessions is %d, but the open-file limit allows %d sessions over %d worker(s); "
                "raise the hard limit (e.g. LimitNOFILE=) for more",
                self.config.limits.max_sessions,
                cap * self.count,
                self.count,
            )

    def serve(
        self,
        handoff: Handoff | None,
        *,
        on_worker_exit: Callable[[], None] | None = None,
        tend: Callable[[], None] | None = None,
    ) -> None:
        """Fork the workers and supervise them until SIGTERM/SIGINT. `on_worker_exit` runs in a worker
        before it exits (e.g. flush a queue); `tend` runs in the supervisor every tick."""
        self.handoff, self.on_worker_exit, self.tend = handoff, on_worker_exit, tend
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for slot in range(self.count):
            self._fork_worker(slot)
        log.info("smtp ready (%d worker process%s)", self.count, "" if self.count == 1 else "es")
        self._supervise()
        log.info("smtp stopped")

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("smtp stopping (%s)", signal.Signals(signum).name)
        self.stopping = True
        for pid in self.workers:
            _kill(pid, signal.SIGTERM)

    def _supervise(self) -> None:
        while self.workers or self.missing:
            self._reap()
            if self.stopping:
                self._kill_if_overdue()
            else:
                self._replace_missing()
                if self.tend is not None:
                    self.tend()
            time.sleep(SUPERVISE_INTERVAL)

    def _reap(self) -> None:
        for pid in [pid for pid in self.workers if _reaped(pid)]:
            slot = self.workers.pop(pid)
            self.counts.clear(slot)  # its sessions ended with it
            process_ended(pid)
            if not self.stopping:
                log.error("smtp worker %d exited unexpectedly; starting a new one", pid)
                self.missing.append(slot)

    def _replace_missing(self) -> None:
        # At most one new worker a second: one that dies at once (say, the database is gone) must
        # not turn into a fork loop.
        if self.missing and time.monotonic() - self.last_start >= RESTART_INTERVAL:
            self._fork_worker(self.missing.pop())

    def _kill_if_overdue(self) -> None:
        self.missing = []
        self.stop_deadline = self.stop_deadline or time.monotonic() + STOP_TIMEOUT
        if time.monotonic() > self.stop_deadline:
            log.warning("smtp workers did not stop in %.0f s; killing them", STOP_TIMEOUT)
            for pid in self.workers:
                _kill(pid, signal.SIGKILL)

    def _fork_worker(self, slot: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.workers[pid] = slot
            self.last_start = time.monotonic()
            log.info("smtp worker %d started", pid)
            return
        code = 1
        try:
            die_with_parent(parent)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)  # the worker's event loop installs its own
            self.counts.slot = self.rate_counts.slot = slot
            service = SMTPService(
                self.config, handoff=self.handoff, session_counts=self.counts, rate_counts=self.rate_counts
            )
            asyncio.run(serve_worker(service, self.bound))
            if self.on_worker_exit is not None:
                self.on_worker_exit()
            code = 0
        except BaseException:
            log.exception("smtp worker %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)  # never return into the supervisor's code


def _reaped(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, sig)
