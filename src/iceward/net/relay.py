"""Relay sockets: a UDP port per allocation from the configured range, read on the event loop.

The core knows a relay only as a :class:`~iceward.turn.allocation.Relay` (an id, a family, an
address); :class:`UdpRelayAllocator` keeps the :class:`RelaySocket` behind each id. A relay
socket's reader drains it in batches and serves datagrams from peers that have a channel straight
from its forwarding table (one dict lookup, a header written in place, one send:
:meth:`RelaySocket._forward`); anything else goes to the core.

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
import itertools
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from iceward.net.fastpath import RELAY, FastPath
from iceward.net.links import LinkedSocket
from iceward.net.portpool import PortPool
from iceward.net.tcprelay import TcpRelays, bind_listener
from iceward.stun.constants import FAMILY_IPV4, FAMILY_IPV6
from iceward.turn.allocation import Address, Relay, TrafficCounters
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


class Readable(Protocol):
    """What the forwarding loop reads: a relay socket, a link, or a handed-over datagram."""

    def recv_into(self, buf: memoryview) -> int: ...

    def recvfrom_into(self, buf: memoryview) -> tuple[int, Any]: ...


#: What the relay does with a datagram that is not a forwarding-table hit: the relay's id, the
#: payload, the peer.
PeerHandler = Callable[[int, bytes, Address], None]


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
        #: ``sock.sendto`` of the client's UDP listener, or the stream connection's
        #: ``writelines`` (a list of frames: one write, each frame its own TLS record).
        self.send = send
        self.client = client
        self.number = number
        self.counters = counters
        self.stream = stream


def _count(entry: PeerEntry, packets: int, nbytes: int) -> None:
    """Add what was framed to ``entry``'s client to the allocation's counters."""
    counters = entry.counters
    counters.packets_to_client += packets
    counters.bytes_to_client += nbytes


def _write(send: Callable[..., Any], frames: list[bytes]) -> None:
    """One write of a stream client's frames (each its own TLS record: some clients read one
    message per record), which are then cleared."""
    send(frames.copy())
    frames.clear()


class _Handed:
    """A datagram the native engine handed over, read by the forwarding loop as a link's
    socket would be read: so its framing and counting are the loop's own."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv_into(self, buf: memoryview) -> int:
        n = len(self.data)
        buf[:n] = self.data
        return n

    def recvfrom_into(self, buf: memoryview) -> tuple[int, Address]:
        raise BlockingIOError  # read as a link: the peer is known


class RelaySocket(LinkedSocket):
    """One relay port, which the core knows only as ``handle``."""

    __slots__ = ("_on_miss", "bound", "channels", "handle")

    def __init__(
        self,
        sock: socket.socket,
        handle: Relay,
        loop: asyncio.AbstractEventLoop,
        on_miss: PeerHandler,
        fast: FastPath | None = None,
        bound: Address | None = None,
    ) -> None:
        """``bound``: the socket's own address when the caller already asked the kernel."""
        self.handle = handle
        self.bound: Address = bound if bound is not None else sock.getsockname()[:2]
        self.channels: dict[Any, PeerEntry] = {}
        self._on_miss = on_miss
        super().__init__(sock, loop, fast, RELAY, self.deliver, self._forward)

    @property
    def family(self) -> int:
        return self.handle.family

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
        self._forward(_Handed(data), peer, 1)

    def _forward(self, sock: Readable, peer: Address | None, batch: int = BATCH) -> None:
        """The one peer -> client loop, for the relay socket (``peer`` None: each datagram says
        whose it is) and for a link (connected to ``peer``: no address to read). A peer with a
        channel is framed to its client as ChannelData, the header written in place before the
        payload in the shared buffer: over a stream, a copy padded to a multiple of 4 (RFC
        8656); over UDP, the view itself, through the client's link or to its address from the
        listener. The rest goes to ``on_miss`` (the core)."""
        recvfrom = sock.recvfrom_into
        recv = sock.recv_into
        buf = _BUF
        payload = _PAYLOAD
        view = _VIEW
        pack = _PACK
        get = self.channels.get
        on_miss = self._on_miss
        relay_id = self.handle.id
        v6 = self.handle.family == FAMILY_IPV6
        key: Any = peer
        entry: PeerEntry | None = None
        # A run of datagrams to one entry (a link's whole batch): its fields are read into
        # locals once, and what it framed is counted in locals and added to its counters when
        # the run ends (before a miss, another entry, or the return).
        run: PeerEntry | None = None
        send: Any = None
        client: Address | None = None
        number = 0
        stream = False
        limiter: Any = None
        packets = nbytes = 0
        # A stream client's frames of one run leave in one write.
        frames: list[bytes] = []
        try:
            for _ in range(batch):
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
                        _count(run, packets, nbytes)
                        packets = nbytes = 0
                        if frames:
                            _write(send, frames)
                    run = entry
                    limiter = entry.counters.limiter if entry is not None else None
                    if entry is not None:
                        send, client, number, stream = (
                            entry.send,
                            entry.client,
                            entry.number,
                            entry.stream,
                        )
                if entry is None:
                    on_miss(relay_id, bytes(payload[:n]), key)
                    continue
                if limiter is not None:  # a bandwidth limit: spend, refill only when short
                    counters = entry.counters
                    counters.budget_to_client -= n
                    if counters.budget_to_client < 0 and not limiter.refill(counters, False, n):
                        continue
                packets += 1
                nbytes += n
                pack(buf, 0, number, n)
                try:
                    if stream:
                        pad = -n & 3
                        frame = bytes(view[: 4 + n])  # a copy: the buffer is reused
                        frames.append(frame + b"\x00" * pad if pad else frame)
                    elif client is None:
                        send(view[: 4 + n])
                    else:
                        send(view[: 4 + n], client)
                except OSError:
                    pass  # UDP semantics: a full buffer or an unreachable client loses it
        finally:
            if run is not None:
                _count(run, packets, nbytes)
                if frames:
                    _write(send, frames)


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
        self._pools = {family: PortPool(*port_range) for family in self._ips}
        self._loop = loop
        self._on_miss = on_miss
        self._advertise = advertise or {}
        self._fast = fast
        self._reserved: dict[bytes, tuple[socket.socket, int, asyncio.TimerHandle]] = {}
        self._token_prefix = token_prefix
        self._ids = itertools.count(1)
        #: relay id -> its socket: the core's relays, as the engine finds them.
        self.active: dict[int, RelaySocket] = {}
        #: Where RFC 6062 TCP relays listen (set by the engine; None: none are made).
        self.tcp: TcpRelays | None = None

    def families(self) -> frozenset[int]:
        return frozenset(self._ips)

    def _bind(self, family: int, port: int) -> socket.socket | None:
        ip = self._ips[family]
        af = socket.AF_INET6 if family == FAMILY_IPV6 else socket.AF_INET
        try:  # non-blocking from the start: one system call fewer than setblocking
            sock = socket.socket(af, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
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
        return sock

    def _wrap(self, sock: socket.socket, family: int) -> Relay:
        bound: Address = sock.getsockname()[:2]
        ip, port = bound
        handle = Relay(next(self._ids), family, (self._advertise.get(ip, ip), port))
        self.active[handle.id] = RelaySocket(
            sock, handle, self._loop, self._on_miss, self._fast, bound
        )
        return handle

    def allocate(
        self, family: int, *, even: bool = False, reserve_next: bool = False, tcp: bool = False
    ) -> tuple[Relay, bytes | None]:
        if family not in self._ips:
            raise RelayUnavailable(440, "address family not configured for relaying")
        pool = self._pools[family]
        if tcp:
            return self._tcp_relay(family, pool), None
        if not even and not reserve_next:
            sock = pool.take(lambda port: self._bind(family, port))
            if sock is None:
                raise RelayUnavailable(508, "no free relay port")
            return self._wrap(sock, family), None
        for port in pool.candidates():  # EVEN-PORT: a shape the queue cannot serve
            if even and port & 1:
                continue
            if reserve_next and (port + 1 > pool.high or pool.is_held(port + 1)):
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
                pool.hold(port + 1)
                token = self._token_prefix + os.urandom(8 - len(self._token_prefix))
                self.adopt(token, nxt, family)
            pool.hold(port)
            return self._wrap(sock, family), token
        raise RelayUnavailable(508, "no free relay port")

    def _tcp_relay(self, family: int, pool: PortPool) -> Relay:
        """RFC 6062: a listening TCP socket on a port of the same range."""
        if self.tcp is None:
            raise RelayUnavailable(442, "TCP relaying is not served here")
        ip = self._ips[family]
        try:
            sock = pool.take(lambda port: bind_listener(ip, port))
        except OSError as exc:
            why = f"cannot bind a TCP relay on {ip}: {exc.strerror}"
            raise RelayUnavailable(508, why) from None
        if sock is None:
            raise RelayUnavailable(508, "no free relay port")
        port = sock.getsockname()[1]
        handle = Relay(next(self._ids), family, (self._advertise.get(ip, ip), port))
        self.tcp.listen(handle, sock)
        return handle

    def allocate_reserved(self, token: bytes) -> Relay:
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
        self._free_port(entry[0], entry[1])  # its new owner binds nothing here
        return entry[0], entry[1]

    def _expire(self, token: bytes) -> None:
        entry = self._reserved.pop(token, None)
        if entry is not None:
            self._free_port(entry[0], entry[1])
            entry[0].close()

    def _free_port(self, sock: socket.socket, family: int) -> None:
        """Back to the pool (a no-op for a port of another worker's slice, handed over here)."""
        self._pools[family].release(sock.getsockname()[1])

    def release(self, relay: Relay) -> None:
        port = self.tcp.unlisten(relay) if self.tcp is not None else None
        if port is not None:
            self._pools[relay.family].release(port)
            return
        sock = self.active.pop(relay.id, None)
        if sock is not None:
            self._pools[relay.family].release(sock.bound[1])
            sock.close()

    def close(self) -> None:
        for relay in self.active.values():
            relay.close()
        self.active.clear()
        for sock, _, timer in self._reserved.values():
            timer.cancel()
            sock.close()
        self._reserved.clear()
