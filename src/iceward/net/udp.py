"""The UDP listener: bound-channel ChannelData goes straight to the peer, the rest to the core.

A client with a channel also gets a *link*: a socket on the listener's address connected to that
client (the listener is bound exclusively, then marked SO_REUSEPORT so links can join). The
kernel hands that client's datagrams to the link, which reads them with ``recv_into`` (no address
to build) and forwards with ``send`` (no address to parse, no route lookup), as coturn does with
its per-client sockets. A link bound to a wildcard listener picks its source address by routing,
exactly as ``sendto`` on the wildcard listener does.

With the native fast path (:mod:`iceward.net.fastpath`) the listener's socket is read by the
extension instead: no reader on the loop, no links, no Python table; what the native tables do not
serve comes back to ``on_miss`` unchanged.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from iceward.net.fastpath import LISTENER, FastPath
from iceward.net.links import LinkedSocket
from iceward.net.listeners import bind_udp
from iceward.net.srcbudget import SourceBudget
from iceward.turn.allocation import Address, TrafficCounters

BATCH = 64
BUFFER_SIZE = 65536
_HEADER = struct.Struct("!HH")

#: (client address as the socket reports it, channel number) -> entry.
ChannelKey = tuple[Any, int]


class ClientEntry:
    """Forwarding entry client -> peer: the relay socket's ``sendto`` and the peer address, or
    (``peer`` None) the ``send`` of a relay link already connected to the peer."""

    __slots__ = ("counters", "peer", "send")

    def __init__(
        self, send: Callable[..., Any], peer: Address | None, counters: TrafficCounters
    ) -> None:
        self.send = send
        self.peer = peer
        self.counters = counters


class UdpListener(LinkedSocket):
    """One UDP socket clients talk to (STUN, TURN control and ChannelData)."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_miss: Callable[[UdpListener, bytes, Address], None],
        fast: FastPath | None = None,
        budget: SourceBudget | None = None,
    ) -> None:
        """``budget``: the per-source budget the Python path applies before ``on_miss`` (the
        native engine applies its own)."""
        self.local: Address = sock.getsockname()[:2]
        self._budget = budget
        self.channels: dict[ChannelKey, ClientEntry] = {}
        self._v6 = sock.family == socket.AF_INET6
        self._on_miss = on_miss
        self._buf = bytearray(BUFFER_SIZE)
        self._mv = memoryview(self._buf)
        sock.setblocking(False)
        super().__init__(sock, loop, fast, LISTENER, self._on_fast_miss, self._forward)

    @classmethod
    def bind(
        cls,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop,
        on_miss: Callable[[UdpListener, bytes, Address], None],
        fast: FastPath | None = None,
    ) -> UdpListener:
        """Bind exclusively (no one else may hold the port), then let this uid's links join."""
        return cls(bind_udp(host, port), loop, on_miss, fast)

    def send(self, data: bytes, client: Address) -> None:
        try:
            self.sock.sendto(data, client)
        except OSError:
            pass

    def _on_fast_miss(self, data: bytes, client: Address) -> None:
        self._on_miss(self, data, client)

    def _forward(self, sock: socket.socket, client: Address | None) -> None:
        """The one client -> peer loop, for the listener (``client`` None: each datagram says
        whose it is) and for a link (connected to ``client``: no address to read). A bound
        channel's ChannelData goes to the peer from the listener's buffer; the rest, within its
        source's budget (the clock read once per batch), to ``on_miss``."""
        recvfrom = sock.recvfrom_into
        recv = sock.recv_into
        buf = self._buf
        mv = self._mv
        get = self.channels.get
        unpack = _HEADER.unpack_from
        on_miss = self._on_miss
        v6 = self._v6
        budget = self._budget
        allow = budget.allow if budget is not None else None
        now = time.monotonic() if budget is not None else 0.0
        addr: Any = client
        for _ in range(BATCH):
            try:
                if client is None:
                    n, addr = recvfrom(buf)
                    if v6:
                        addr = addr[:2]
                else:
                    n = recv(buf)
            except BlockingIOError:
                return
            except OSError:
                continue  # e.g. ECONNREFUSED from an ICMP error: UDP semantics, go on
            if n >= 4 and 0x40 <= buf[0] <= 0x7F:
                number, length = unpack(buf)
                entry = get((addr, number))
                if entry is not None and 4 + length <= n:
                    counters = entry.counters
                    limiter = counters.limiter
                    if limiter is not None:  # a bandwidth limit: spend, refill only when short
                        counters.budget_to_peer -= length
                        if counters.budget_to_peer < 0 and not limiter.refill(
                            counters, True, length
                        ):
                            continue
                    counters.packets_to_peer += 1
                    counters.bytes_to_peer += length
                    peer = entry.peer
                    try:
                        if peer is None:
                            entry.send(mv[4 : 4 + length])
                        else:
                            entry.send(mv[4 : 4 + length], peer)
                    except OSError:
                        pass
                    continue
            if (
                allow is not None
                and (n == 0 or not 0x40 <= buf[0] <= 0x7F)
                and not allow(addr[0], now)
            ):
                continue  # over its source's budget: dropped before any parsing
            on_miss(self, bytes(mv[:n]), addr)
