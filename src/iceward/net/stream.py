"""TCP and TLS client connections: frame STUN and ChannelData messages out of the byte stream.

RFC 8656 section 12.5: over streams a ChannelData message is padded to a multiple of four bytes;
STUN messages carry their own length. Anything else on the stream is a protocol error and closes
the connection. A client that stops reading gets relayed data dropped, not buffered without bound.

:class:`StreamAcceptor` accepts the connections itself, so its owner sees each one before any
transport or TLS exists: a source over its cap is closed there and then, and a TLS handshake
that stalls counts against its source until it times out. Before a transport, a connection may
pass a prelude on the raw socket (:mod:`iceward.net.prelude`): the PROXY header of a trusted
load balancer (whose client is then the one counted), and on the TLS port the first byte, which
chooses TLS or plain TCP on the one socket. When accept() finds no descriptor
left it sheds the waiting connections (accepted and closed at once, as libuv does) instead of
leaving them hanging or logging each failure; asyncio's own accept loop logs every one.

A connection keeps two marks for its owner's periodic sweep: whether a complete STUN message ever
came (``greeted``) and whether a complete message came since the last sweep (``active``). A
partial frame is not activity, so a connection that trickles half a message stays silent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from iceward.net import proxyproto, sniff
from iceward.net.fdlimit import FD_ERRNOS, FdPressure, Throttled
from iceward.net.prelude import Prelude
from iceward.net.udp import ClientEntry
from iceward.turn.allocation import Address, FiveTuple

if TYPE_CHECKING:
    from iceward.net.nativestream import NativeStream

log = logging.getLogger("iceward.net")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``(socket, client, counted connection or None)``: serve HTTPS on a connection whose TLS has
#: not started (its ClientHello asks for HTTP) somewhere else; the socket is the callee's.
HttpsElsewhere = Callable[[socket.socket, Address, "StreamConnection | None"], None]

#: Relayed data to a client whose socket buffer already holds this much is dropped.
MAX_WRITE_BACKLOG = 1 << 20
#: Buffered bytes allowed while waiting for the rest of one message (max message + header).
MAX_FRAME = 4 + 65535 + 3
#: Connections taken per readiness of a listening socket (asyncio takes its backlog, 100).
ACCEPT_BATCH = 64
#: Pause after an accept() error that is not a missing descriptor (ENOBUFS, ENOMEM, ...).
ACCEPT_RETRY = 1.0


class StreamConnection(asyncio.Protocol):
    """One client connection over TCP or TLS."""

    def __init__(
        self,
        kind: str,
        on_message: Callable[[StreamConnection, bytes], None],
        on_open: Callable[[StreamConnection], None],
        on_close: Callable[[StreamConnection], None],
        peer: Address = ("", 0),
    ) -> None:
        self.kind = kind
        #: The client's address as accepted.
        self.peer = peer
        self.five_tuple: FiveTuple | None = None
        self.channels: dict[int, ClientEntry] = {}
        #: The native engine's side of the connection, once a channel is installed there.
        self.native: NativeStream | None = None
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._on_message = on_message
        self._on_open = on_open
        self._on_close = on_close
        self._closed = False
        #: time.monotonic() when accepted (TLS handshake time included in what follows).
        self.opened = time.monotonic()
        #: A complete STUN message arrived (the connection has said what it is for).
        self.greeted = False
        #: A complete message arrived since the owner's sweep last looked (it clears this).
        self.active = False
        #: time.monotonic() of the sweep that last saw activity.
        self.last_active = self.opened
        #: Counted against its source address by the owner, until connection_lost.
        self.counted = False
        #: Why it was refused (a ``drop`` reason for the owner to count), if it was.
        self.refused: str | None = None
        #: Takes the bytes after the message that ended the STUN framing (see :meth:`hand_over`).
        self._successor: Callable[[bytes], None] | None = None
        #: The owner's counters: relayed data dropped for a full write backlog is counted there.
        self.counters: MutableMapping[str, int] | None = None
        #: The first bytes were checked for a PROXY header (never welcome here: a trusted
        #: sender's was taken off before, see :mod:`iceward.net.prelude`).
        self._checked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # TLS transports are not subclasses
        peer = self.peer if self.peer[0] else transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.five_tuple = FiveTuple(self.kind, (peer[0], peer[1]), (local[0], local[1]))
        self._on_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
            native, self.native = self.native, None
            if native is not None:  # its counts are taken before the owner ends the allocation
                native.close()
            self._on_close(self)

    def write(self, data: Any) -> None:
        transport = self._writable()
        if transport is not None:
            transport.write(data)
            self._wrote()

    def writelines(self, frames: list[bytes]) -> None:
        """Frames in one write; over TLS each is its own record (turnutils_uclient, for one,
        reads one message per record)."""
        transport = self._writable()
        if transport is not None:
            transport.writelines(frames)
            self._wrote()

    def _writable(self) -> asyncio.Transport | None:
        """The transport, if open and not over its backlog (else None: what would be written
        is dropped, and counted when over the backlog)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        if transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
            if self.counters is not None:
                self.counters["drop.client_backlog"] += 1
            return None
        return transport

    def _wrote(self) -> None:
        if self.native is not None:
            self.native.wrote()

    def hand_over(self, successor: Callable[[bytes], None]) -> None:
        """RFC 6062 ConnectionBind: from the end of the current message on, the stream is
        relayed data: ``successor`` takes what is already buffered, the transport is another
        protocol's, and this one neither frames nor reports a close any more."""
        self._closed = True
        self._successor = successor

    def abort(self, why: str, level: int = logging.INFO) -> None:
        log.log(level, "closing %s: %s", self.five_tuple, why)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        native = self.native
        if native is not None and not self._buf:  # nothing held back: the engine reads data
            pos = native.input(data, 0)
            if pos:
                self.active = True
                if pos == len(data):
                    return
                data = data[pos:]
        buf = self._buf
        buf += data
        if not self._checked:
            match = proxyproto.signature_match(bytes(buf[:12]))
            if match is None:
                return
            if match:
                self.refused = "proxy_untrusted"
                self.abort("a PROXY header from a source not in --proxy-protocol-from")
                buf.clear()
                return
            self._checked = True
        pos = 0
        size = len(buf)
        channels = self.channels
        native = self.native
        while size - pos >= 4:
            if native is not None:  # the frames the engine serves, up to one it does not
                pos = native.input(buf, pos)
                if size - pos < 4:
                    break
            first = buf[pos]
            if 0x40 <= first <= 0x7F:
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                total = 4 + length + (-length & 3)
                if size - pos < total:
                    break
                entry = channels.get((first << 8) | buf[pos + 1])
                if entry is not None:
                    counters = entry.counters
                    limiter = counters.limiter
                    if limiter is not None:  # a bandwidth limit: spend, refill only when short
                        counters.budget_to_peer -= length
                    if (
                        limiter is None
                        or counters.budget_to_peer >= 0
                        or limiter.refill(counters, True, length)
                    ):
                        counters.packets_to_peer += 1
                        counters.bytes_to_peer += length
                        try:
                            entry.send(bytes(buf[pos + 4 : pos + 4 + length]), entry.peer)
                        except OSError:
                            pass
                else:
                    self._on_message(self, bytes(buf[pos : pos + 4 + length]))
            elif first < 0x40:
                if size - pos < 20:
                    break
                total = 20 + ((buf[pos + 2] << 8) | buf[pos + 3])
                if size - pos < total:
                    break
                self.greeted = True
                self._on_message(self, bytes(buf[pos : pos + total]))
            else:
                self.abort("bytes that are neither STUN nor ChannelData")
                buf.clear()
                return
            pos += total
            if self._closed:
                if self._successor is not None and size > pos:  # handed over (RFC 6062)
                    self._successor(bytes(buf[pos:]))
                    buf.clear()
                return
        if pos:
            self.active = True
            del buf[:pos]
        if len(buf) > MAX_FRAME:
            self.abort("oversized frame")
            buf.clear()


class StreamAcceptor:
    """Accepts clients on one listening TCP socket, plain or TLS.

    ``make(kind, peer)`` gives the protocol of a new connection, or None to refuse it (the
    socket is closed before any transport exists). A TLS handshake must end within
    ``handshake_timeout``; one that fails ends in the protocol's connection_lost all the same.

    With ``tls``, the port is shared: the first byte chooses TLS or plain TCP, and inside TLS
    ``route`` wraps the connection to choose TURN or HTTP, or ``https_elsewhere`` takes a
    connection whose ClientHello asks for HTTP before its TLS starts. From a source in
    ``proxy_from`` a PROXY header is read first and the client it names is the connection's
    peer (its source cap included); a prelude that fails is reported to ``refused(peer,
    reason)``.
    """

    def __init__(
        self,
        sock: socket.socket,
        kind: str,
        loop: asyncio.AbstractEventLoop,
        make: Callable[[str, Address], StreamConnection | None],
        pressure: FdPressure,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        *,
        route: Callable[[StreamConnection], asyncio.Protocol] | None = None,
        proxy_from: Sequence[IPNetwork] = (),
        refused: Callable[[Address, str], None] | None = None,
        https_elsewhere: HttpsElsewhere | None = None,
    ) -> None:
        self.sock = sock
        self.kind = kind
        self._loop = loop
        self._make = make
        self._pressure = pressure
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._route = route
        self._proxy_from = tuple(proxy_from)
        self._refused = refused
        self._https_elsewhere = https_elsewhere if tls is not None else None
        self._preludes: set[Prelude] = set()
        self._fd = sock.fileno()
        self._reading = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._errors = Throttled(log, logging.WARNING, f"{kind} accept() failing")
        sock.setblocking(False)
        pressure.reserve()
        self._resume()

    def _resume(self) -> None:
        self._retry = None
        if not self._closed and not self._reading:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _pause(self, seconds: float) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._retry is None and not self._closed:
            self._retry = self._loop.call_later(seconds, self._resume)

    def _readable(self) -> None:
        accept = self.sock.accept
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._accepted(conn, (addr[0], addr[1]))

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in FD_ERRNOS:
            shed = self._pressure.shed(self.sock)
            self._pressure.note(f"accept() on the {self.kind} listener", exc, 1 + (shed or 0))
            if shed is None:  # no spare descriptor to shed with: wait for one to come free
                self._pause(ACCEPT_RETRY)
            return
        self._errors.event(f"{exc}; retrying in {ACCEPT_RETRY:g} s")
        self._pause(ACCEPT_RETRY)

    def _accepted(self, sock: socket.socket, peer: Address) -> None:
        trusted = bool(self._proxy_from) and _within(peer[0], self._proxy_from)
        protocol = None
        if not trusted:  # counted at once; a trusted sender's client once its header is read
            protocol = self._make(self.kind, peer)
            if protocol is None:
                sock.close()
                return
        sock.setblocking(False)
        if protocol is not None and self._tls is None:
            self._start(protocol, sock, None)
            return
        prelude = Prelude(
            self._loop,
            sock,
            peer,
            expect_proxy=trusted,
            peek_first=self._tls is not None,
            read_hello=self._https_elsewhere is not None,
            timeout=self._handshake_timeout,
            done=lambda p: self._prelude_done(p, protocol),
            failed=lambda p, why: self._prelude_failed(p, protocol, why),
        )
        self._preludes.add(prelude)

    def _prelude_done(self, prelude: Prelude, protocol: StreamConnection | None) -> None:
        self._preludes.discard(prelude)
        alpn = prelude.alpn
        if self._https_elsewhere is not None and alpn and sniff.hello_wants_http(alpn):
            self._https_elsewhere(prelude.sock, prelude.client, protocol)
            return
        if protocol is None:
            protocol = self._make(self.kind, prelude.client)
            if protocol is None:
                prelude.sock.close()
                return
        protocol.peer = prelude.client
        tls = None
        if self._tls is not None:
            if prelude.first == sniff.TLS_HANDSHAKE:
                tls = self._tls
            else:
                protocol.kind = "tcp"
        self._start(protocol, prelude.sock, tls)

    def _prelude_failed(
        self, prelude: Prelude, protocol: StreamConnection | None, reason: str
    ) -> None:
        self._preludes.discard(prelude)
        try:
            prelude.sock.close()
        except OSError:
            pass
        if not reason.startswith("proxy_"):
            reason = "tls_handshake" if self._tls is not None else "connection_timeout"
        if protocol is not None:
            protocol.refused = reason
            protocol.connection_lost(None)
        elif self._refused is not None:
            self._refused(prelude.peer, reason)

    def _start(
        self, protocol: StreamConnection, sock: socket.socket, tls: ssl.SSLContext | None
    ) -> None:
        task = self._loop.create_task(self._connect(protocol, sock, tls))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _connect(
        self, protocol: StreamConnection, sock: socket.socket, tls: ssl.SSLContext | None
    ) -> None:
        first: asyncio.Protocol = protocol
        if tls is not None and self._route is not None:
            first = self._route(protocol)
        try:
            await self._loop.connect_accepted_socket(
                lambda: first,
                sock,
                ssl=tls,
                ssl_handshake_timeout=self._handshake_timeout if tls is not None else None,
            )
        except Exception as exc:  # the TLS handshake failed or timed out, the peer went away
            log.debug("%s connection from %s:%s not set up: %r", protocol.kind, *protocol.peer, exc)
            try:
                sock.close()
            except OSError:
                pass
            protocol.connection_lost(exc)  # once only: its count goes back to the source

    def close(self) -> None:
        self._closed = True
        for prelude in self._preludes:
            prelude.cancel()
            prelude.sock.close()
        self._preludes.clear()
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.sock.close()

    async def wait_closed(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _within(ip: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return False
    return any(address.version == net.version and address in net for net in networks)
