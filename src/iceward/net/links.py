"""Connected "link" sockets that share a listener's or relay's port (see udp.py and relay.py).

A link is bound to the same address as its parent (which is bound exclusively, then marked
SO_REUSEPORT) and connected to one client or peer, so the kernel hands that sender's datagrams
to it and sends need no address. Listener and relay sockets make and drop links the same way,
and are read the same way (:class:`LinkedSocket`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from iceward.net.fastpath import FastPath, Handler
from iceward.turn.allocation import Address

_IP_MTU_DISCOVER = 10  # Linux; DONT-FRAGMENT set on the parent holds for its links too


def open_link(parent: socket.socket, target: Address) -> socket.socket | None:
    """A non-blocking socket on ``parent``'s address connected to ``target``; None if refused."""
    sock = socket.socket(parent.family, socket.SOCK_DGRAM)
    try:
        if parent.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        else:
            mtu = parent.getsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER)
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, mtu)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # a burst queues as on the parent
            sock.setsockopt(socket.SOL_SOCKET, opt, parent.getsockopt(socket.SOL_SOCKET, opt) // 2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(parent.getsockname())
        sock.connect(target)
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock


class Links:
    """The links of one parent socket, each read by ``reader(sock, target)`` on the loop."""

    def __init__(
        self,
        parent: socket.socket,
        loop: asyncio.AbstractEventLoop,
        reader: Callable[[socket.socket, Address], None],
    ) -> None:
        self._parent = parent
        self._loop = loop
        self._reader = reader
        self._socks: dict[Any, socket.socket] = {}

    def send_to(self, target: Address) -> Callable[..., Any] | None:
        """The ``send`` of ``target``'s link, made on first use; None if the kernel says no."""
        sock = self._socks.get(target)
        if sock is None:
            sock = open_link(self._parent, target)
            if sock is None:
                return None
            self._socks[target] = sock
            self._loop.add_reader(sock.fileno(), self._reader, sock, target)
        return sock.send

    def drop(self, target: Address) -> None:
        sock = self._socks.pop(target, None)
        if sock is not None:
            try:
                self._loop.remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
            sock.close()

    def drop_all(self) -> None:
        for target in list(self._socks):
            self.drop(target)

    def __contains__(self, target: object) -> bool:
        return target in self._socks

    def __len__(self) -> int:
        return len(self._socks)


#: A parent's forwarding loop: ``forward(sock, None)`` reads the parent, ``forward(link, target)``
#: a link connected to ``target``.
Forward = Callable[[socket.socket, Any], None]


class LinkedSocket:
    """A parent socket (a UDP listener, a relay socket) and its links, all read by one
    ``forward`` loop on the event loop; or, with the native fast path, the parent read by the
    extension, which hands what its tables do not serve to ``on_fast_miss`` and needs no links."""

    __slots__ = ("_loop", "fast", "fd", "links", "sock")

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        fast: FastPath | None,
        kind: int,
        on_fast_miss: Handler,
        forward: Forward,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.fast = fast
        self._loop = loop
        #: target address -> socket connected to it.
        self.links = Links(sock, loop, forward)
        if fast is not None:
            fast.register(self.fd, kind, on_fast_miss)
        else:
            loop.add_reader(sock.fileno(), forward, sock, None)

    def link(self, target: Address) -> Callable[..., Any] | None:
        """The ``send`` of ``target``'s link, made on first use; None if the kernel says no
        (or the native fast path reads this socket: it needs no links)."""
        if self.fast is not None:
            return None
        return self.links.send_to(target)

    def unlink(self, target: Address) -> None:
        self.links.drop(target)

    def close(self) -> None:
        self.links.drop_all()
        if self.fast is not None:
            self.fast.unregister(self.fd)
        else:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
        self.sock.close()
