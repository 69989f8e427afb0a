"""Accepting connections on a listening socket, in place of asyncio's Server.

asyncio's accept loop (Python 3.11, selector_events) handles a full file-descriptor table badly: on
EMFILE it logs a traceback and schedules a retry in a second, then goes on calling accept() for the
rest of its batch (the backlog, 100), each failure logging another traceback and scheduling another
retry: hundreds of tracebacks a second per listener and process for as long as the table stays full
(measured: 800 in 3 s for one listener). Here an accept() that fails (for lack of resources or any
other reason) pauses accepting for ACCEPT_PAUSE seconds with one warning line; connections wait in
the kernel's backlog meanwhile. Also, the socket is listened on only once, by
bind_listeners with the configured backlog: `loop.create_server(sock=...)` listens again with its own
default of 100, and a burst beyond that waits for the client's SYN retries (1 s, 3 s, 7 s...).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("app.smtpserver")

ACCEPT_PAUSE = 0.5
# accept() errors that mean the process or the system is out of something (pause); others are the
# connection's own.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Connections taken per readiness event: a burst is accepted in a few rounds, each followed by
# the sessions' own work, rather than in one long turn of the event loop.
ACCEPT_BATCH = 32


class Acceptor:
    """Accepts on one listening socket for the running event loop; each connection gets a protocol
    from `factory` and a plain socket transport."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        self.sock = sock
        self.factory = factory
        self._loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._resume = None
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close this process's copy of the socket (other workers keep theirs)."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # nothing more queued (or another worker took it)
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as error:
                if error.errno in OUT_OF_RESOURCES:
                    self._pause(error)
                    return
                continue  # an error of that one connection (Linux passes on ENETDOWN, EPROTO, ...)
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _pause(self, error: OSError) -> None:
        log.warning(
            "accept() on %s failed (%s); not accepting for %g s",
            self.sock.getsockname(),
            error.strerror or error,
            ACCEPT_PAUSE,
        )
        self._loop.remove_reader(self.sock.fileno())
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self.start)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self.factory, conn)
        except Exception as error:  # a connection that fails to start must not disturb the others
            conn.close()
            log.warning("could not start a session: %s", error)
