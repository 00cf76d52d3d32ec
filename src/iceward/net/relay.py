"""Relay sockets: a UDP port per allocation from the configured range, read on the event loop.

Each :class:`RelaySocket` is the core's ``RelayHandle``. Its reader drains the socket in batches and
serves datagrams from peers that have a channel straight from its forwarding table (one dict lookup,
a header written in place, one send: :func:`_to_client`); anything else goes to the core.

A peer with a channel also gets a *link*: a socket on the relay's address connected to that peer.
The relay port is bound exclusively first (so no other process can hold it) and only then marked
SO_REUSEPORT, which lets the links bind it too. The kernel hands the peer's datagrams to the
link, whose reader needs no address per datagram; data for the peer leaves through
the link's ``send`` (no address to parse, no route lookup).

With the native fast path (:mod:`iceward.net.fastpath`) the extension reads the relay socket
instead (no reader on the loop, no links); a datagram its tables do not serve comes to
:meth:`RelaySocket.deliver`, which serves TCP/TLS clients' channels from the Python table and
hands the rest to the core.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import struct
from collections.abc import Callable
from typing import Any

from iceward.net.fastpath import RELAY, FastPath
from iceward.net.links import LinkedSocket
from iceward.stun.constants import FAMILY_IPV4, FAMILY_IPV6
from iceward.turn.allocation import Address, TrafficCounters
from iceward.turn.server import RelayUnavailable

BATCH = 64
BUFFER_SIZE = 65536 + 4
_HEADER = struct.Struct("!HH")


#: The receive buffer every relay socket of the process reads into (payload at offset 4, below a
#: ChannelData header written in place). One is enough: a datagram is forwarded, or copied for
#: the core, before the loop reads the next one; a buffer per relay would cost 64 KiB per
#: allocation. The native fast path reads into its own, and hands :meth:`RelaySocket.deliver`
#: bytes, which are copied here to be framed the same way.
_BUF = bytearray(BUFFER_SIZE)
_VIEW = memoryview(_BUF)
_PAYLOAD = _VIEW[4:]
_PACK = _HEADER.pack_into

#: What the relay does with a datagram that is not a forwarding-table hit.
PeerHandler = Callable[["RelaySocket", bytes, Address], None]


class PeerEntry:
    """Forwarding entry peer -> client: where the ChannelData goes and how it is framed."""

    __slots__ = ("client", "counters", "number", "send", "stream")

    def __init__(
        self,
        send: Callable[..., Any],
        client: Address | None,
        number: int,
        counters: TrafficCounters,
        stream: bool,
    ) -> None:
        #: ``sock.sendto`` of the client's UDP listener, or the stream connection's ``write``.
        self.send = send
        self.client = client
        self.number = number
        self.counters = counters
        self.stream = stream


def _to_client(entry: PeerEntry, n: int) -> None:
    """The one peer -> client framing: ``n`` payload bytes in the shared buffer (at offset 4)
    leave as ChannelData, the header written in place before them. Over a stream, a copy padded
    to a multiple of 4 (RFC 8656); over UDP, the view itself, through the client's link or to
    its address from the listener. The caller counts."""
    _PACK(_BUF, 0, entry.number, n)
    frame = _VIEW[: 4 + n]
    try:
        if entry.stream:
            pad = -n & 3
            entry.send(bytes(frame) + b"\x00" * pad if pad else bytes(frame))
        elif entry.client is None:
            entry.send(frame)
        else:
            entry.send(frame, entry.client)
    except OSError:
        pass  # UDP semantics: a full buffer or an unreachable client loses the datagram


def _count(entry: PeerEntry, packets: int, nbytes: int) -> None:
    """Add what was framed to ``entry``'s client to the allocation's counters."""
    counters = entry.counters
    counters.packets_to_client += packets
    counters.bytes_to_client += nbytes


class RelaySocket(LinkedSocket):
    """One relay port; hashable by identity, so the core can key allocations by it."""

    __slots__ = ("_family", "_on_miss", "advertised", "bound", "channels")

    def __init__(
        self,
        sock: socket.socket,
        family: int,
        advertised: Address,
        loop: asyncio.AbstractEventLoop,
        on_miss: PeerHandler,
        fast: FastPath | None = None,
    ) -> None:
        self._family = family
        self.bound: Address = sock.getsockname()[:2]
        self.advertised = advertised
        self.channels: dict[Any, PeerEntry] = {}
        self._on_miss = on_miss
        super().__init__(sock, loop, fast, RELAY, self.deliver, self._forward)

    @property
    def family(self) -> int:
        return self._family

    @property
    def relayed_address(self) -> Address:
        return self.advertised

    def send(self, data: bytes, peer: Address) -> None:
        try:
            self.sock.sendto(data, peer)
        except OSError:
            pass  # UDP semantics: a full buffer or an unreachable peer loses the datagram

    def close(self) -> None:
        super().close()
        self.channels.clear()

    def deliver(self, data: bytes, peer: Address) -> None:
        """A peer datagram the native tables did not serve: a TCP/TLS client's channel, or the
        core (permissions, Data indications)."""
        entry = self.channels.get(peer)
        if entry is None:
            self._on_miss(self, data, peer)
            return
        n = len(data)
        counters = entry.counters
        limiter = counters.limiter
        if limiter is not None:  # a bandwidth limit: spend, refill only when short
            counters.budget_to_client -= n
            if counters.budget_to_client < 0 and not limiter.refill(counters, False, n):
                return
        _PAYLOAD[:n] = data
        _count(entry, 1, n)
        _to_client(entry, n)

    def _forward(self, sock: socket.socket, peer: Address | None) -> None:
        """The one peer -> client loop, for the relay socket (``peer`` None: each datagram says
        whose it is) and for a link (connected to ``peer``: no address to read). A peer with a
        channel is framed to its client; the rest goes to ``on_miss`` (the core)."""
        recvfrom = sock.recvfrom_into
        recv = sock.recv_into
        payload = _PAYLOAD
        get = self.channels.get
        to_client = _to_client
        count = _count
        on_miss = self._on_miss
        v6 = self._family == FAMILY_IPV6
        key: Any = peer
        entry: PeerEntry | None = None
        # Counted in locals over a run of datagrams to one entry (a link's whole batch), and
        # added to its counters when the run ends: before a miss, another entry, or the return.
        run: PeerEntry | None = None
        limiter: Any = None
        packets = nbytes = 0
        try:
            for _ in range(BATCH):
                try:
                    if peer is None:
                        n, key = recvfrom(payload)
                        if v6:
                            key = key[:2]
                    else:
                        n = recv(payload)
                except BlockingIOError:
                    return
                except OSError:
                    continue  # e.g. ECONNREFUSED from an ICMP error: UDP semantics, go on
                if peer is None or entry is None:
                    # A link's entry, once found, holds for the batch: nothing in it but a miss
                    # (the core) changes the table.
                    entry = get(key)
                if entry is not run:
                    if run is not None:
                        count(run, packets, nbytes)
                    run, packets, nbytes = entry, 0, 0
                    limiter = entry.counters.limiter if entry is not None else None
                if entry is None:
                    on_miss(self, bytes(payload[:n]), key)
                    continue
                if limiter is not None:  # a bandwidth limit: spend, refill only when short
                    counters = entry.counters
                    counters.budget_to_client -= n
                    if counters.budget_to_client < 0 and not limiter.refill(counters, False, n):
                        continue
                packets += 1
                nbytes += n
                to_client(entry, n)
        finally:
            if run is not None:
                count(run, packets, nbytes)


def _family_of_ip(ip: str) -> int:
    return FAMILY_IPV6 if ":" in ip else FAMILY_IPV4


class UdpRelayAllocator:
    """Binds relay sockets on the relay IPs within a port range (the core's ``RelayAllocator``).

    ``advertise`` maps a bound relay IP to the address peers must use (``--external-ip``).
    EVEN-PORT reservations hold the next port bound (so nobody else takes it) until claimed by
    the RESERVATION-TOKEN or released after 30 seconds.
    """

    RESERVATION_SECONDS = 30.0

    def __init__(
        self,
        relay_ips: list[str],
        port_range: tuple[int, int],
        loop: asyncio.AbstractEventLoop,
        on_miss: PeerHandler,
        advertise: dict[str, str] | None = None,
        fast: FastPath | None = None,
        token_prefix: bytes = b"",
    ) -> None:
        """``token_prefix`` starts every RESERVATION-TOKEN made here: with several workers, the
        worker's index, so the worker a token reaches knows whom to ask for the port."""
        self._ips: dict[int, str] = {}
        for ip in relay_ips:
            self._ips.setdefault(_family_of_ip(ip), ip)
        self._low, self._high = port_range
        self._loop = loop
        self._on_miss = on_miss
        self._advertise = advertise or {}
        self._fast = fast
        self._reserved: dict[bytes, tuple[socket.socket, int, asyncio.TimerHandle]] = {}
        self._token_prefix = token_prefix
        self.active: set[RelaySocket] = set()

    def families(self) -> frozenset[int]:
        return frozenset(self._ips)

    def _bind(self, family: int, port: int) -> socket.socket | None:
        ip = self._ips[family]
        af = socket.AF_INET6 if family == FAMILY_IPV6 else socket.AF_INET
        try:
            sock = socket.socket(af, socket.SOCK_DGRAM)
        except OSError as exc:  # out of file descriptors or memory: the client gets a 508
            raise RelayUnavailable(508, f"cannot open a relay socket: {exc.strerror}") from None
        try:
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((ip, port))  # exclusive: fails if anyone, this process included, has it
            # Only now may the relay's links (same uid) bind the port too.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            raise RelayUnavailable(508, f"cannot bind relay on {ip}: {exc.strerror}") from None
        sock.setblocking(False)
        return sock

    def _wrap(self, sock: socket.socket, family: int) -> RelaySocket:
        ip, port = sock.getsockname()[:2]
        advertised = (self._advertise.get(ip, ip), port)
        relay = RelaySocket(sock, family, advertised, self._loop, self._on_miss, self._fast)
        self.active.add(relay)
        return relay

    def allocate(
        self, family: int, *, even: bool = False, reserve_next: bool = False
    ) -> tuple[RelaySocket, bytes | None]:
        if family not in self._ips:
            raise RelayUnavailable(440, "address family not configured for relaying")
        span = self._high - self._low + 1
        start = random.randrange(span)
        attempts = min(span, 256)
        for i in range(attempts):
            port = self._low + (start + i * 7919) % span
            if even and port & 1:
                port = port - 1 if port > self._low else port + 1
                if port & 1 or port > self._high:
                    continue
            if reserve_next and port + 1 > self._high:
                continue
            sock = self._bind(family, port)
            if sock is None:
                continue
            token = None
            if reserve_next:
                nxt = self._bind(family, port + 1)
                if nxt is None:
                    sock.close()
                    continue
                token = self._token_prefix + os.urandom(8 - len(self._token_prefix))
                self.adopt(token, nxt, family)
            return self._wrap(sock, family), token
        raise RelayUnavailable(508, "no free relay port")

    def allocate_reserved(self, token: bytes) -> RelaySocket:
        entry = self._reserved.pop(token, None)
        if entry is None:
            raise RelayUnavailable(508, "unknown or expired RESERVATION-TOKEN")
        sock, family, timer = entry
        timer.cancel()
        return self._wrap(sock, family)

    def has_reservation(self, token: bytes) -> bool:
        return token in self._reserved

    def adopt(self, token: bytes, sock: socket.socket, family: int) -> None:
        """Hold ``sock`` (bound to a reserved port) for ``token`` until claimed or expired."""
        sock.setblocking(False)
        timer = self._loop.call_later(self.RESERVATION_SECONDS, self._expire, token)
        self._reserved[token] = (sock, family, timer)

    def give_away(self, token: bytes) -> tuple[socket.socket, int] | None:
        """The reserved socket and family for ``token``, no longer held here (another worker
        received the Allocate that claims it); None if unknown or expired."""
        entry = self._reserved.pop(token, None)
        if entry is None:
            return None
        entry[2].cancel()
        return entry[0], entry[1]

    def _expire(self, token: bytes) -> None:
        entry = self._reserved.pop(token, None)
        if entry is not None:
            entry[0].close()

    def release(self, relay: Any) -> None:
        if relay in self.active:
            self.active.discard(relay)
            relay.close()

    def close(self) -> None:
        for relay in list(self.active):
            relay.close()
        self.active.clear()
        for sock, _, timer in self._reserved.values():
            timer.cancel()
            sock.close()
        self._reserved.clear()
