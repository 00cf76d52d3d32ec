"""RFC 6062 TCP relays: listening relayed addresses, peer connections, spliced data connections.

A TCP allocation's relayed address is a listening socket bound like a UDP relay (exclusively
first, then SO_REUSEPORT so the connections the server opens *from* that address may bind it
too). The core decides (:mod:`iceward.turn.tcprelay`); this module carries out: it accepts peers
and asks the core whether to keep them, opens the connections a Connect asks for, closes peer
connections nobody binds within :data:`~iceward.turn.tcprelay.BIND_TIMEOUT`, and once a client
data connection is bound, splices the two transports. Splicing is asyncio flow control and
nothing else: what one side reads is written to the other, and when the other's write buffer
passes its high-water mark the reading side is paused until it drains, so a slow end never
makes the server buffer without bound. Under ``--max-bps`` no more goes out than the
allocation's budget holds: the rest of a read waits, and its side is not read, until the rate has
earned it. Bytes and writes are added to the allocation's counters (a "packet" of a TCP relay is
one write to the other side), the ones the UDP relays and the usage records use.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from iceward.stun.constants import FAMILY_IPV6
from iceward.turn.allocation import Address, Relay, TrafficCounters
from iceward.turn.events import Output
from iceward.turn.server import TurnServer
from iceward.turn.tcprelay import BIND_TIMEOUT, CONNECT_TIMEOUT, PeerConnection

log = logging.getLogger("iceward.net")

#: Bytes read from one side and held while the other does not exist yet (a peer's data before
#: its ConnectionBind, RFC 6062 5.3 "MUST buffer"); beyond it that side stops being read.
HELD_LIMIT = 64 * 1024
#: Connections accepted per readiness of a relayed address.
ACCEPT_BATCH = 16
#: The listening backlog of a relayed address.
BACKLOG = 16


def bind_listener(ip: str, port: int) -> socket.socket | None:
    """A listening TCP relay on ``ip:port``, or None when the port is taken."""
    af = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))  # exclusive: fails if anyone holds it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # for our own connects
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return None
        raise
    sock.setblocking(False)
    return sock


class Side(asyncio.Protocol):
    """One end of a spliced pair (the peer's or the client's connection)."""

    def __init__(
        self, counters: TrafficCounters, to_peer: bool, on_lost: Callable[[Side], None]
    ) -> None:
        self.counters = counters
        #: What this side reads goes to the peer (the client's side) or to the client.
        self.to_peer = to_peer
        self.transport: asyncio.Transport | None = None
        self.other: Side | None = None
        self.held = bytearray()
        #: Read, but not yet paid for by the allocation's rate (``--max-bps``): this side is not
        #: read again until the rate has earned it and it went out.
        self.owed = bytearray()
        self.closed = False
        self.rate_paused = False
        self._paying: asyncio.TimerHandle | None = None
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()
        if self.other is not None:
            self.other.flush()

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self.held += data
            if len(self.held) >= HELD_LIMIT and self.transport is not None:
                self.transport.pause_reading()
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        other = self.other
        assert other is not None and other.transport is not None
        if other.transport.is_closing():
            return  # the pair is ending: nothing more goes through
        if self.counters.limiter is None and not self.owed:
            self._count(len(data))
            other.transport.write(data)
            return
        self.owed += data
        self._pay()

    def _count(self, nbytes: int) -> None:
        c = self.counters
        if self.to_peer:
            c.packets_to_peer += 1
            c.bytes_to_peer += nbytes
        else:
            c.packets_to_client += 1
            c.bytes_to_client += nbytes

    def _pay(self) -> None:
        """A bandwidth limit on a stream: nothing is dropped, and no more goes out than the
        budget holds. What it does not cover waits in ``owed``, and this side is not read, until
        the rate has earned the next part (TCP then slows the sender)."""
        other, c = self.other, self.counters
        if self.closed or other is None or other.transport is None or other.transport.is_closing():
            self.owed.clear()
            return
        limiter = c.limiter
        n = len(self.owed)
        if limiter is not None:
            budget = limiter.earn(c, self.to_peer)
            n = min(n, int(budget)) if budget > 0 else 0
        if n:
            chunk = bytes(self.owed[:n])
            del self.owed[:n]
            if limiter is not None:
                if self.to_peer:
                    c.budget_to_peer -= n
                else:
                    c.budget_to_client -= n
            self._count(n)
            other.transport.write(chunk)
        if self.owed and limiter is not None:
            if not self.rate_paused:
                self.rate_paused = True
                if self.transport is not None:
                    self.transport.pause_reading()
            # Out again once the rate earned the next part: a fiftieth of a second's worth (or
            # what is left), so a paced stream goes out smoothly, not in bucket-sized bursts.
            if self._paying is None:
                step = min(len(self.owed), max(limiter.rate / 50, 1500))
                loop = asyncio.get_running_loop()
                self._paying = loop.call_later(step / limiter.rate, self._paid_later)
            return
        if not self.rate_paused:
            return
        self.rate_paused = False
        if self.transport is None:
            return
        high = other.transport.get_write_buffer_limits()[1]
        if other.transport.get_write_buffer_size() > high:
            return  # the other side's resume_writing reads this one again
        self.transport.resume_reading()

    def _paid_later(self) -> None:
        self._paying = None
        self._pay()

    def flush(self) -> None:
        """Pass on what was held once both ends exist, and read again."""
        other = self.other
        if not self.held or other is None or other.transport is None or self.transport is None:
            return
        data, self.held = bytes(self.held), bytearray()
        self._forward(data)
        if not self.closed and not self.rate_paused:
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # this side's buffer is full: stop reading the other
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.rate_paused:
            other.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # one side's FIN ends the pair

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._on_lost(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()  # what is buffered for this side is still sent


class TcpRelays:
    """The TCP relays of one engine: listeners by relay id, connections by CONNECTION-ID."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        core: TurnServer,
        apply: Callable[[list[Output]], None],
        internal_error: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._core = core
        self._apply = apply
        self._internal_error = internal_error
        self._listeners: dict[int, socket.socket] = {}
        #: CONNECTION-ID -> [peer side, client side once bound], and its allocation's id.
        self._pairs: dict[int, list[Side | None]] = {}
        self._allocation_of: dict[int, int] = {}
        self._connecting: dict[int, asyncio.Task[None]] = {}
        self._waiting: dict[int, asyncio.TimerHandle] = {}

    @property
    def listening(self) -> int:
        return len(self._listeners)

    @property
    def open_connections(self) -> int:
        return len(self._pairs) + len(self._connecting)

    # -- relayed addresses ---------------------------------------------------------------------
    def listen(self, relay: Relay, sock: socket.socket) -> None:
        self._listeners[relay.id] = sock
        self._loop.add_reader(sock.fileno(), self._accept, relay, sock)

    def unlisten(self, relay: Relay) -> int | None:
        """Stop listening on ``relay``; its port (to give back to the pool), or None."""
        sock = self._listeners.pop(relay.id, None)
        if sock is None:
            return None
        port = int(sock.getsockname()[1])
        self._loop.remove_reader(sock.fileno())
        sock.close()
        return port

    def _accept(self, relay: Relay, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors: the backlog waits for the next readiness
                self._core.counters["tcp.accept_failed"] += 1
                return
            peer: Address = (addr[0], addr[1])
            try:
                connection_id, outputs = self._core.accept_peer(relay.id, peer, self._loop.time())
            except Exception:
                conn.close()
                self._internal_error()
                continue
            if connection_id is None:
                conn.close()  # RFC 6062 5.3: no permission, or over the cap
                continue
            conn.setblocking(False)
            pc = self._core.tcp.get(connection_id)
            assert pc is not None
            side = self._side(connection_id, pc, to_peer=False)
            self._pairs[connection_id] = [side, None]
            self._allocation_of[connection_id] = pc.allocation.id
            self._loop.create_task(self._adopt(connection_id, conn, side))
            self._wait_for_bind(connection_id)
            self._apply(outputs)

    async def _adopt(self, connection_id: int, conn: socket.socket, side: Side) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: side, conn)
        except OSError:
            conn.close()
            self._lost(connection_id)

    # -- Connect -------------------------------------------------------------------------------
    def connect(self, pc: PeerConnection) -> None:
        """Open the connection a Connect asked for; the core hears the outcome."""
        listener = self._listeners.get(pc.relay.id)
        if listener is None:
            self._apply(self._core.connect_result(pc.id, False, self._loop.time()))
            return
        local = listener.getsockname()[:2]
        self._allocation_of[pc.id] = pc.allocation.id
        task = self._loop.create_task(self._connect(pc, local))
        self._connecting[pc.id] = task

    async def _connect(self, pc: PeerConnection, local: Address) -> None:
        family = socket.AF_INET6 if pc.relay.family == FAMILY_IPV6 else socket.AF_INET
        side = self._side(pc.id, pc, to_peer=False)
        sock: socket.socket | None = None
        ok = False
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
            sock.bind(local)  # RFC 6062 5.2: from the relayed transport address
            await asyncio.wait_for(self._loop.sock_connect(sock, pc.peer), CONNECT_TIMEOUT)
            await self._loop.create_connection(lambda: side, sock=sock)
            ok = True
        except (TimeoutError, OSError) as exc:
            log.debug("TCP relay connect %s -> %s failed: %s", local, pc.peer, exc)
        finally:
            self._connecting.pop(pc.id, None)
            if not ok and sock is not None:
                sock.close()
        if ok:
            self._pairs[pc.id] = [side, None]
            self._wait_for_bind(pc.id)
        else:
            self._allocation_of.pop(pc.id, None)
        try:
            self._apply(self._core.connect_result(pc.id, ok, self._loop.time()))
        except Exception:
            self._internal_error()

    # -- ConnectionBind ------------------------------------------------------------------------
    def bind(self, pc: PeerConnection, transport: asyncio.Transport) -> Callable[[bytes], None]:
        """The client's data connection (its transport, its STUN protocol done) joins the peer
        connection; the returned callable takes the bytes that followed the ConnectionBind."""
        pair = self._pairs.get(pc.id)
        timer = self._waiting.pop(pc.id, None)
        if timer is not None:
            timer.cancel()
        client = self._side(pc.id, pc, to_peer=True)
        transport.set_protocol(client)
        client.transport = transport
        if pair is None or pair[0] is None or pair[0].closed:
            client.close()
            return client.data_received
        peer = pair[0]
        pair[1] = client
        client.other, peer.other = peer, client
        peer.flush()
        return client.data_received

    def _wait_for_bind(self, connection_id: int) -> None:
        self._waiting[connection_id] = self._loop.call_later(
            BIND_TIMEOUT, self._bind_timeout, connection_id
        )

    def _bind_timeout(self, connection_id: int) -> None:
        self._waiting.pop(connection_id, None)
        if connection_id in self._pairs:
            self._core.counters["tcp.bind_timeout"] += 1
            self._lost(connection_id)

    # -- ends ----------------------------------------------------------------------------------
    def _side(self, connection_id: int, pc: PeerConnection, to_peer: bool) -> Side:
        return Side(pc.allocation.counters, to_peer, lambda _side: self._lost(connection_id))

    def _lost(self, connection_id: int) -> None:
        """Either side ended (or nobody bound it in time): close both, free the id."""
        pair = self._pairs.pop(connection_id, None)
        timer = self._waiting.pop(connection_id, None)
        if timer is not None:
            timer.cancel()
        self._allocation_of.pop(connection_id, None)
        if pair is None:
            return
        for side in pair:
            if side is not None:
                side.close()
        self._core.counters["tcp.closed"] += 1
        try:
            self._apply(self._core.tcp_closed(connection_id, self._loop.time()))
        except Exception:
            self._internal_error()

    def close_allocation(self, allocation_id: int) -> None:
        """The allocation ended: every connection of it is closed (the core forgot them)."""
        for connection_id in [c for c, a in self._allocation_of.items() if a == allocation_id]:
            task = self._connecting.pop(connection_id, None)
            if task is not None:
                task.cancel()
            self._lost(connection_id)

    def close(self) -> None:
        for task in self._connecting.values():
            task.cancel()
        self._connecting.clear()
        for connection_id in list(self._pairs):
            self._lost(connection_id)
        for sock in self._listeners.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
