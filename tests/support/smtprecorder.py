"""A minimal SMTP server on loopback that records every command line exactly as it arrives (bytes), to
check what our SMTP client puts into MAIL FROM, RCPT TO and the other commands. It accepts everything
and offers no extension but 8BITMIME and SMTPUTF8. Reads are bounded in size, count and time."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import BinaryIO

MAX_LINE = 4096
MAX_DATA_LINES = 100_000
TIMEOUT = 10.0


class CommandRecorder:
    def __init__(self) -> None:
        self.lines: list[bytes] = []  # every command line, with its line end
        self.messages: list[bytes] = []  # the DATA of each transaction, dot-stuffing undone
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # the accept loop looks at the stop flag this often
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="smtp-recorder", daemon=True)

    def __enter__(self) -> CommandRecorder:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=TIMEOUT)
        self._listener.close()

    def commands(self, verb: str) -> list[bytes]:
        return [line for line in self.lines if line[: len(verb)].upper() == verb.encode()]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(TIMEOUT)
                # A client that goes away or times out ends its session; the next one gets a fresh one.
                with contextlib.suppress(OSError):
                    self._session(conn, conn.makefile("rb"))

    def _session(self, conn: socket.socket, reader: BinaryIO) -> None:
        conn.sendall(b"220 recorder.example ESMTP\r\n")
        while line := reader.readline(MAX_LINE):
            self.lines.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-recorder.example\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 Go ahead\r\n")
                self.messages.append(_read_data(reader))
                conn.sendall(b"250 2.0.0 Recorded\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                conn.sendall(b"250 2.0.0 OK\r\n")


def _read_data(reader: BinaryIO) -> bytes:
    lines = []
    for _ in range(MAX_DATA_LINES):
        line = reader.readline(MAX_LINE)
        if line in (b".\r\n", b""):
            break
        lines.append(line[1:] if line.startswith(b".") else line)
    return b"".join(lines)
