"""HTTPS on the TLS port with ``--workers N``: the workers relay, the supervisor serves HTTP.

A worker that reads, in a new connection's ClientHello, an ALPN asking for HTTP (what every
browser sends for ``https:``) gives the socket itself to the supervisor before any TLS byte is
consumed (SCM_RIGHTS over a Unix datagram socket, with the client's address, which may come
from a PROXY header). The supervisor makes the TLS handshake with the same certificate and hands
the connection to its HTTP server. A TLS connection without ALPN that turns out to be HTTP is
decrypted by the worker and piped to the supervisor (:class:`HttpsPipe`). Both halves are here:
:class:`HttpsSender` and :class:`HttpsPipe` in each worker, :class:`HttpsIntake` in the
supervisor.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from iceward.net.fdlimit import Throttled
from iceward.net.tlsroute import HttpGate
from iceward.turn.allocation import Address

log = logging.getLogger("iceward.net")

#: Handshakes the supervisor runs at once for handed-over connections; beyond, closed at once.
MAX_PENDING = 1024
_MESSAGE = 512


class HttpsSender:
    """A worker's end: :meth:`send` gives a connection to the supervisor (True) or cannot."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._failed = Throttled(log, logging.WARNING, "HTTPS connections not handed over")

    def send(self, conn: socket.socket, client: Address, plain: bool = False) -> bool:
        """The socket goes to the supervisor and is closed here, either way. ``plain``: it
        carries HTTP already decrypted here (see :class:`HttpsPipe`), not a TLS connection."""
        message = json.dumps([client[0], client[1], plain]).encode()
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))
        try:
            self.sock.sendmsg([message], [rights], 0, self._name)
            return True
        except OSError as exc:  # the supervisor's queue is full, or it is gone
            self._failed.event(str(exc))
            return False
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class HttpsIntake:
    """The supervisor's end: connections handed over by workers, served by ``http()``."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        tls: ssl.SSLContext,
        http: Callable[[], asyncio.Protocol],
        timeout: float,
        max_per_source: int,
    ) -> None:
        """``timeout`` bounds the handshake and then the wait for the first request;
        ``max_per_source`` the connections open at once from one client IP."""
        self._loop = loop
        self.tls = tls
        self._http = http
        self._timeout = timeout
        self._max_per_source = max_per_source
        self._per_source: dict[str, int] = {}
        self._pending: set[asyncio.Task[None]] = set()
        #: Connections closed by a limit, by reason (``drop`` reasons for the metrics).
        self.counters: Counter[str] = Counter()
        self._over = Throttled(log, logging.WARNING, f"HTTPS handshakes over {MAX_PENDING}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(name)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                message, fds, _, _ = socket.recv_fds(self.sock, _MESSAGE, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if len(fds) != 1:
                for fd in fds:
                    socket.socket(fileno=fd).close()
                continue
            conn = socket.socket(fileno=fds[0])
            try:
                host, port, plain = json.loads(message)
                client = (str(host), int(port))
            except (ValueError, TypeError):
                conn.close()
                continue
            if len(self._pending) >= MAX_PENDING:
                self.counters["https_backlog"] += 1
                self._over.event(f"closed one from {client[0]}")
                conn.close()
                continue
            if self._per_source.get(client[0], 0) >= self._max_per_source:
                self.counters["connection_cap"] += 1
                conn.close()
                continue
            self._per_source[client[0]] = self._per_source.get(client[0], 0) + 1
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn, client, bool(plain)))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _serve(self, conn: socket.socket, client: Address, plain: bool) -> None:
        closed = partial(self._closed, client[0])
        if plain:  # decrypted by the worker: no TLS here, but the scheme is https all the same
            gate = HttpGate(self._http(), client, self._timeout, closed, tls=self.tls)
            await self._loop.connect_accepted_socket(lambda: gate, conn)
            return
        gate = HttpGate(self._http(), client, self._timeout, closed)
        try:
            await self._loop.connect_accepted_socket(
                lambda: gate, conn, ssl=self.tls, ssl_handshake_timeout=self._timeout
            )
        except Exception as exc:  # the handshake failed or timed out
            log.debug("HTTPS from %s:%s not set up: %r", *client, exc)
            conn.close()
            self.counters["tls_handshake"] += 1
            self._closed(client[0], None)

    def _closed(self, ip: str, reason: str | None) -> None:
        left = self._per_source.get(ip, 1) - 1
        if left > 0:
            self._per_source[ip] = left
        else:
            self._per_source.pop(ip, None)
        if reason is not None:
            self.counters[reason] += 1

    async def close(self) -> None:
        try:
            self._loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


#: Bytes held for the supervisor while the pipe to it is being set up; beyond, the connection
#: is closed (a request's first bytes fit many times over).
PIPE_BUFFER = 64 * 1024


class HttpsPipe(asyncio.Protocol):
    """In a worker, HTTP found inside a TLS connection without ALPN (so not handed over before
    TLS): the decrypted bytes are piped both ways to the supervisor over a socket pair whose
    other end it receives (``send(sock, client, plain=True)``). Writing back pauses while the
    client's TLS transport is full."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[socket.socket, Address, bool], bool],
        client: Address,
    ) -> None:
        self._loop = loop
        self._send = send
        self._client = client
        #: The client's TLS transport.
        self.front: Any = None
        self._back: asyncio.Transport | None = None
        self._held = bytearray()
        self._eof = False
        self._task: asyncio.Task[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.front = transport
        ours, theirs = socket.socketpair()
        if not self._send(theirs, self._client, True):
            ours.close()
            self.front.abort()
            return
        ours.setblocking(False)
        self._task = self._loop.create_task(
            self._loop.connect_accepted_socket(lambda: _PipeBack(self), ours)
        )

    def attached(self, back: asyncio.Transport) -> None:
        self._back = back
        if self._held:
            back.write(bytes(self._held))
            self._held.clear()
        if self._eof:
            back.write_eof()

    def data_received(self, data: bytes) -> None:
        if self._back is not None:
            self._back.write(data)
            return
        self._held += data
        if len(self._held) > PIPE_BUFFER:
            self.front.abort()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._back is not None:
            self._back.write_eof()
        return True

    def pause_writing(self) -> None:
        if self._back is not None:
            self._back.pause_reading()

    def resume_writing(self) -> None:
        if self._back is not None:
            self._back.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._back is not None:
            self._back.close()
        elif self._task is not None:
            self._task.add_done_callback(_close_transport)


def _close_transport(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        transport, _ = task.result()
        transport.close()


class _PipeBack(asyncio.Protocol):
    """The worker's end of the pipe: what the supervisor answers goes to the client."""

    def __init__(self, pipe: HttpsPipe) -> None:
        self._pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._pipe.attached(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        front = self._pipe.front
        if front is not None and not front.is_closing():
            front.write(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        front = self._pipe.front
        if front is not None:
            front.close()
