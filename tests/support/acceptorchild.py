"""Child process for the accept-pause test (`python -m tests.support.acceptorchild`): an Acceptor on a
loopback socket in a process that has used up its file descriptors, until a line on stdin frees them.

Prints the port on stdout once every descriptor is taken. Each accepted connection is greeted with
"220 ready". Run with a low RLIMIT_NOFILE (the parent sets it), so filling the table is quick. Logs
go to stderr without the rate limiter of app.logs: the test counts what the Acceptor itself logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

from app.smtpserver.acceptor import Acceptor


class Greeter(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"220 ready\r\n")


def take_every_descriptor() -> list[int]:
    taken = []
    while True:
        try:
            taken.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return taken


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    Acceptor(sock, Greeter).start()
    taken = take_every_descriptor()
    print(sock.getsockname()[1], flush=True)
    await stdin.readline()
    for fd in taken:
        os.close(fd)
    await stdin.readline()  # until the parent closes stdin or kills us


if __name__ == "__main__":
    asyncio.run(main())
