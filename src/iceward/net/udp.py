"""The UDP listener: bound-channel ChannelData goes straight to the peer, the rest to the core."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from iceward.turn.allocation import Address, TrafficCounters

BATCH = 64
BUFFER_SIZE = 65536

#: (client address as the socket reports it, channel number) -> entry.
ChannelKey = tuple[Any, int]


class ClientEntry:
    """Forwarding entry client -> peer: the relay socket's ``sendto`` and the peer address."""

    __slots__ = ("counters", "peer", "send")

    def __init__(self, send: Callable[..., Any], peer: Address, counters: TrafficCounters) -> None:
        self.send = send
        self.peer = peer
        self.counters = counters


class UdpListener:
    """One UDP socket clients talk to (STUN, TURN control and ChannelData)."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_miss: Callable[[UdpListener, bytes, Address], None],
    ) -> None:
        self.sock = sock
        self.local: Address = sock.getsockname()[:2]
        self.channels: dict[ChannelKey, ClientEntry] = {}
        self._v6 = sock.family == socket.AF_INET6
        self._loop = loop
        self._on_miss = on_miss
        self._buf = bytearray(BUFFER_SIZE)
        self._mv = memoryview(self._buf)
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    def bind(
        cls,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop,
        on_miss: Callable[[UdpListener, bytes, Address], None],
        *,
        reuse_port: bool = False,
    ) -> UdpListener:
        af = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(af, socket.SOCK_DGRAM)
        try:
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(sock, loop, on_miss)

    def send(self, data: bytes, client: Address) -> None:
        try:
            self.sock.sendto(data, client)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self._loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()

    def _on_readable(self) -> None:
        recv = self.sock.recvfrom_into
        buf = self._buf
        mv = self._mv
        channels = self.channels
        v6 = self._v6
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                return
            except OSError:
                continue
            if v6:
                addr = addr[:2]
            if n >= 4 and 0x40 <= buf[0] <= 0x7F:
                entry = channels.get((addr, (buf[0] << 8) | buf[1]))
                if entry is not None:
                    length = (buf[2] << 8) | buf[3]
                    if 4 + length <= n:
                        counters = entry.counters
                        counters.packets_to_peer += 1
                        counters.bytes_to_peer += length
                        try:
                            entry.send(mv[4 : 4 + length], entry.peer)
                        except OSError:
                            pass
                        continue
            self._on_miss(self, bytes(mv[:n]), addr)
