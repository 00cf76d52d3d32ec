"""A worker's abstract Unix datagram socket, over which workers pass each other messages and
descriptors (SCM_RIGHTS): the one mechanism behind EVEN-PORT reservations and RFC 6062 data
connections crossing workers."""

from __future__ import annotations

import asyncio
import socket


class WorkerChannel:
    """Bound to ``\\0{base}{kind}{index}``; every message that arrives goes to
    :meth:`_on_message` with the descriptors it carried (the receiver owns them)."""

    #: Largest message read; longer ones are cut (and then refused by the reader's checks).
    MAX_MESSAGE = 64

    def __init__(
        self, base_name: str, kind: str, index: int, count: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._base = base_name
        self._kind = kind
        self.index = index
        self._count = count
        self._loop = loop
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(self._name(index))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def _name(self, index: int) -> str:
        return f"\0{self._base}{self._kind}{index}"

    def close(self) -> None:
        try:
            self._loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()

    def _on_readable(self) -> None:
        for _ in range(64):  # a bounded batch per wake-up
            try:
                message, fds, _, sender = socket.recv_fds(self.sock, self.MAX_MESSAGE, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self._on_message(message, fds, sender)

    def _on_message(self, message: bytes, fds: list[int], sender: str | bytes) -> None:
        raise NotImplementedError
